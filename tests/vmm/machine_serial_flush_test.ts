import assert from "node:assert/strict";
import { runRealModeGuest } from "./machine_guest.ts";

/** Real mode: write "partial" to COM1 with no newline, then reset through the i8042. */
function partialLineThenReset(): Uint8Array {
  const code: number[] = [0xba, 0xf8, 0x03]; // mov dx, 0x3f8
  for (const ch of new TextEncoder().encode("partial")) code.push(0xb0, ch, 0xee); // mov al, ch; out dx, al
  code.push(0xb0, 0xfe, 0xe6, 0x64); // mov al, 0xfe; out 0x64, al
  code.push(0xeb, 0xfe); // jmp $
  return new Uint8Array(code);
}

Deno.test("serial output a vCPU thread buffered without a newline reaches the file when the guest powers off (needs /dev/kvm)", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const path = `${dir}/serial.log`;
    const exit = await runRealModeGuest(partialLineThenReset(), path);
    assert.equal(exit.status, 0, exit.reason);
    assert.equal(await Deno.readTextFile(path), "partial");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
