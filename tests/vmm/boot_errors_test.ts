import assert from "node:assert/strict";
import { BootError, loadKernel } from "../../vmm/boot/mod.ts";
import {
  elfNote,
  FakeMemory,
  guest,
  guestPath,
  makeElf64,
  prng,
  readelf,
} from "./boot_fake_memory.ts";

const MiB = 0x10_0000;
const GiB = 0x4000_0000;
const GUESTS = ["guest-pvh.elf", "guest-vmlinux.elf", "guest.bzImage"];

function bootError(pattern: RegExp): (e: unknown) => boolean {
  return (e: unknown) => {
    if (!(e instanceof BootError)) throw e;
    if (!pattern.test(e.message)) throw new Error(`message ${JSON.stringify(e.message)}`);
    return true;
  };
}

/** Loads `image`; returns "ok" or the BootError, rethrowing anything else (a loader bug). */
function tryLoad(image: Uint8Array, mem: FakeMemory): "ok" | BootError {
  try {
    loadKernel(mem, image, { cmdline: "mode=info" });
    return "ok";
  } catch (err) {
    if (err instanceof BootError) return err;
    throw err;
  }
}

Deno.test("random bytes are not a kernel", () => {
  const seed = 0x5eed_0001;
  const rand = prng(seed);
  const mem = new FakeMemory(16 * MiB);
  for (let i = 0; i < 300; i++) {
    const image = new Uint8Array(Math.floor(rand() * 9000)).map(() => Math.floor(rand() * 256));
    if (image[0] === 0x7f) image[0] = 0; // keep the ELF magic out by construction
    assert.throws(
      () => loadKernel(mem, image, { cmdline: "" }),
      bootError(/not a kernel: no ELF magic and no Linux setup header/),
      `seed ${seed} iteration ${i}`,
    );
  }
});

Deno.test("random bytes behind an ELF or HdrS signature give a BootError, never a crash", () => {
  const seed = 0x5eed_0002;
  const rand = prng(seed);
  const mem = new FakeMemory(16 * MiB);
  let errors = 0;
  for (let i = 0; i < 400; i++) {
    const image = new Uint8Array(64 + Math.floor(rand() * 4000)).map(() =>
      Math.floor(rand() * 256)
    );
    if (i % 2 === 0) image.set([0x7f, 0x45, 0x4c, 0x46, 1 + (i % 4 === 0 ? 1 : 0), 1]);
    else if (image.length > 0x206) image.set([0x48, 0x64, 0x72, 0x53], 0x202);
    const r = tryLoad(image, mem);
    if (r !== "ok") errors++;
  }
  assert.ok(errors > 350, `seed ${seed}: only ${errors} of 400 random images were refused`);
});

Deno.test("each guest cut short anywhere before its last needed byte is reported truncated", async () => {
  const mem = new FakeMemory(64 * MiB);
  for (const name of GUESTS) {
    const image = await guest(name);
    let needed = image.length;
    if (name.endsWith(".elf")) {
      const { loads } = await readelf(await guestPath(name));
      needed = Math.max(...loads.map((l) => l.offset + l.filesz));
    }
    assert.equal(tryLoad(image, mem), "ok", name);
    const cuts = [0, 3, 40, 63, 64, 100, 0x1f0, 0x205, 0x230, 600, needed >> 1, needed - 1];
    for (const cut of cuts.filter((c) => c < needed)) {
      const r = tryLoad(image.slice(0, cut), mem);
      assert.ok(r instanceof BootError, `${name} cut at ${cut} loaded`);
      if (cut >= 64) assert.match(r.message, /truncated|not a kernel/, `${name} at ${cut}`);
    }
  }
});

Deno.test("flipping header bytes of each guest never escapes as anything but a BootError", async () => {
  const seed = 0x5eed_0003;
  const rand = prng(seed);
  const mem = new FakeMemory(64 * MiB);
  for (const name of GUESTS) {
    const original = await guest(name);
    for (let i = 0; i < 150; i++) {
      const image = original.slice();
      for (let k = 0; k < 1 + Math.floor(rand() * 4); k++) {
        const at = Math.floor(rand() * Math.min(0x280, image.length));
        image[at] = Math.floor(rand() * 256);
      }
      // Only BootError or success are allowed; anything else fails the test.
      const r = tryLoad(image, mem);
      assert.ok(r === "ok" || r instanceof BootError, `seed ${seed} ${name} #${i}`);
    }
  }
});

Deno.test("a kernel larger than guest memory says how much it needs", async () => {
  const mem = new FakeMemory(1 * MiB);
  for (const name of ["guest-pvh.elf", "guest-vmlinux.elf"]) {
    assert.throws(
      () => loadKernel(mem, new Uint8Array(0), { cmdline: "" }),
      bootError(/not a kernel/),
    );
    const image = await guest(name);
    assert.throws(
      () => loadKernel(mem, image, { cmdline: "" }),
      bootError(/guest memory too small: .*needs 2 MiB, machine has 1 MiB/),
      name,
    );
  }
  const big = makeElf64(0x400_0000n, [
    { type: 1, vaddr: 0x400_0000n, paddr: 0x400_0000n, data: new Uint8Array(16), memsz: 0x1000 },
  ]);
  assert.throws(
    () => loadKernel(new FakeMemory(32 * MiB), big, { cmdline: "" }),
    bootError(/guest memory too small: ELF segment 0 .* needs 65 MiB, machine has 32 MiB/),
  );
});

Deno.test("an ELF with no loadable segments is refused", () => {
  const mem = new FakeMemory(16 * MiB);
  const noteOnly = makeElf64(0x10_0000n, [
    { type: 4, vaddr: 0n, paddr: 0n, data: new Uint8Array(12), memsz: 12 },
  ]);
  assert.throws(() => loadKernel(mem, noteOnly, { cmdline: "" }), bootError(/no loadable/));
  const none = makeElf64(0x10_0000n, []);
  assert.throws(() => loadKernel(mem, none, { cmdline: "" }), bootError(/no program headers/));
});

Deno.test("an ELF segment over the boot data area or in the MMIO gap is refused", () => {
  const seg = (paddr: bigint) =>
    makeElf64(paddr, [{ type: 1, vaddr: paddr, paddr, data: new Uint8Array(64), memsz: 0x1000 }]);
  assert.throws(
    () => loadKernel(new FakeMemory(16 * MiB), seg(0x8000n), { cmdline: "" }),
    bootError(/overlaps the loader's boot data area/),
  );
  assert.throws(
    () => loadKernel(new FakeMemory(5 * GiB), seg(0xd000_0000n), { cmdline: "" }),
    bootError(/not inside one guest RAM region/),
  );
});

Deno.test("program headers beyond the file and file sizes beyond memory sizes are refused", () => {
  const ok = makeElf64(0x10_0000n, [
    { type: 1, vaddr: 0x10_0000n, paddr: 0x10_0000n, data: new Uint8Array(64), memsz: 0x1000 },
  ]);
  const mem = new FakeMemory(16 * MiB);
  const phnum = ok.slice();
  new DataView(phnum.buffer).setUint16(56, 40, true);
  assert.throws(
    () => loadKernel(mem, phnum, { cmdline: "" }),
    bootError(/truncated: ELF program header 2 ends at 0xe8 beyond the file/),
  );
  const sizes = ok.slice();
  new DataView(sizes.buffer).setBigUint64(64 + 40, 16n, true); // memsz < filesz
  assert.throws(() => loadKernel(mem, sizes, { cmdline: "" }), bootError(/only 16 in memory/));
});

Deno.test("a 32-bit ELF without a PVH note is refused", async () => {
  const image = (await guest("guest-pvh.elf")).slice();
  // Rename the note owner so the PVH entry note is no longer found.
  const at = new TextDecoder("latin1").decode(image).indexOf("Xen\0");
  assert.ok(at > 0);
  image[at] = 0x59;
  assert.throws(
    () => loadKernel(new FakeMemory(16 * MiB), image, { cmdline: "" }),
    bootError(/32-bit ELF kernel has no PVH entry note/),
  );
});

Deno.test("an ELF kernel's command line longer than the loader's 64 KiB area is refused", async () => {
  const image = await guest("guest-vmlinux.elf");
  const mem = new FakeMemory(16 * MiB);
  assert.doesNotThrow(() => loadKernel(mem, image, { cmdline: "b".repeat(0xffff) }));
  assert.throws(
    () => loadKernel(mem, image, { cmdline: "b".repeat(0x10000) }),
    bootError(/65536 bytes, too long for the loader/),
  );
  assert.throws(() => loadKernel(mem, image, { cmdline: "a\0b" }), bootError(/NUL/));
});

Deno.test("an initrd larger than free RAM is refused with its size", async () => {
  for (const name of GUESTS) {
    const mem = new FakeMemory(16 * MiB);
    const initrd = new Uint8Array(15 * MiB);
    const image = await guest(name);
    assert.throws(
      () => loadKernel(mem, image, { cmdline: "", initrd }),
      bootError(/initrd too large: 15 MiB .*machine has 16 MiB/),
      name,
    );
  }
});

Deno.test("a PVH note pointing outside the kernel or running past its segment is refused", () => {
  const code = new Uint8Array(0x1000);
  const pvh = (entry: number, cut = 0) => {
    const desc = new Uint8Array(4);
    new DataView(desc.buffer).setUint32(0, entry, true);
    const note = elfNote("Xen", 18, desc);
    return makeElf64(0x10_0000n, [
      { type: 1, vaddr: 0x10_0000n, paddr: 0x10_0000n, data: code, memsz: 0x1000 },
      { type: 4, vaddr: 0n, paddr: 0n, data: note.subarray(0, note.length - cut), memsz: 0 },
    ]);
  };
  const mem = new FakeMemory(16 * MiB);
  assert.equal(loadKernel(mem, pvh(0x10_0010), { cmdline: "" }).regs.rip, 0x10_0010n);
  assert.throws(
    () => loadKernel(mem, pvh(0x20_0000), { cmdline: "" }),
    bootError(/PVH entry 0x200000 is outside the loaded kernel/),
  );
  assert.throws(
    () => loadKernel(mem, pvh(0x10_0010, 4), { cmdline: "" }),
    bootError(/runs past its PT_NOTE segment/),
  );
});

Deno.test("guest memory with more regions than the zero page's 128 e820 slots is refused", async () => {
  const layout: Array<[number, number]> = [[0, 16 * MiB]];
  for (let i = 0; i < 130; i++) layout.push([(32 + 2 * i) * MiB, MiB]);
  const mem = new FakeMemory(0, layout);
  const image = await guest("guest-vmlinux.elf");
  assert.throws(
    () => loadKernel(mem, image, { cmdline: "" }),
    bootError(/needing 133 memory map entries; the boot protocols hold at most 128/),
  );
});
