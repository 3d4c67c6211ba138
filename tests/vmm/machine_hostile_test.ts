import assert from "node:assert/strict";
import { runRealModeGuest } from "./machine_guest.ts";

/**
 * Real mode, string I/O storms: `rep outsb`/`rep insb`/`rep outsw`/`rep insd` to the
 * UART, an unclaimed port and the RTC (each element is one exit on this host's
 * emulator, so counts stay small); then a reset through the i8042.
 */
function stringIoStorm(): Uint8Array {
  const code: number[] = [0xfc]; // cld
  for (const port of [0x3f8, 0x80, 0x71]) {
    code.push(0xba, port & 0xff, port >> 8); // mov dx, port
    code.push(0x31, 0xf6, 0xbf, 0x00, 0x80); // xor si, si; mov di, 0x8000 (clear of the code)
    code.push(0xb9, 0x00, 0x02, 0xf3, 0x6e); // mov cx, 0x200; rep outsb
    code.push(0xb9, 0x00, 0x01, 0xf3, 0x6c); // mov cx, 0x100; rep insb
    code.push(0xb9, 0x00, 0x01, 0xf3, 0x6f); // mov cx, 0x100; rep outsw
    code.push(0xb9, 0x40, 0x00, 0xf3, 0x66, 0x6d); // mov cx, 0x40; rep insd
  }
  code.push(0xb0, 0xfe, 0xe6, 0x64); // mov al, 0xfe; out 0x64, al
  code.push(0xeb, 0xfe); // jmp $
  return new Uint8Array(code);
}

Deno.test("a guest storming the devices with huge rep ins/outs gets answers and the VMM survives to power it off (needs /dev/kvm)", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const path = `${dir}/serial.log`;
    const exit = await runRealModeGuest(stringIoStorm(), path);
    assert.equal(exit.status, 0, exit.reason);
    assert.equal(exit.reason, "guest reset via i8042");
    // 0x200 bytes of outsb, and one byte (the low one: THR is 8 bits) per outsw word.
    const written = (await Deno.stat(path)).size;
    assert.equal(written, 0x200 + 0x100);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
