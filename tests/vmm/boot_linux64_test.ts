import assert from "node:assert/strict";
import {
  BP,
  CMDLINE_ADDR,
  E820_ENTRY_SIZE,
  HDR,
  loadKernel,
  PML4_ADDR,
  ZERO_PAGE_ADDR,
} from "../../vmm/boot/mod.ts";
import { MMIO_GAP_END, MMIO_GAP_START } from "../../vmm/guest_memory.ts";
import { FakeMemory, guest, guestPath, makeElf64, readelf, translate } from "./boot_fake_memory.ts";

const MiB = 0x10_0000;
const GiB = 0x4000_0000;

function e820(mem: FakeMemory): Array<[number, number, number]> {
  const zp = mem.dv(ZERO_PAGE_ADDR, 0x1000);
  const n = zp.getUint8(BP.e820Entries);
  const out: Array<[number, number, number]> = [];
  for (let i = 0; i < n; i++) {
    const off = BP.e820Table + i * E820_ENTRY_SIZE;
    out.push([
      Number(zp.getBigUint64(off, true)),
      Number(zp.getBigUint64(off + 8, true)),
      zp.getUint32(off + 16, true),
    ]);
  }
  return out;
}

Deno.test("a vmlinux ELF is loaded segment by segment where readelf says, bss zeroed", async () => {
  const path = await guestPath("guest-vmlinux.elf");
  const image = await Deno.readFile(path);
  const mem = new FakeMemory(64 * MiB);
  // Dirty the bss range first: the loader must zero it.
  const { loads, entry } = await readelf(path);
  assert.ok(loads.length > 0);
  for (const l of loads) mem.view(l.paddr, l.memsz).fill(0xaa);
  const plan = loadKernel(mem, image, { cmdline: "mode=info" });
  assert.equal(plan.protocol, "linux64");
  for (const l of loads) {
    assert.deepEqual(mem.read(l.paddr, l.filesz), image.slice(l.offset, l.offset + l.filesz));
    assert.ok(mem.read(l.paddr + l.filesz, l.memsz - l.filesz).every((b) => b === 0));
  }
  assert.equal(plan.regs.rip, BigInt(entry));
  assert.equal(plan.kernel.start, Math.min(...loads.map((l) => l.paddr)));
  assert.equal(plan.kernel.end, Math.max(...loads.map((l) => l.paddr + l.memsz)));
});

Deno.test("the Linux 64-bit protocol starts in long mode with RSI at the zero page", async () => {
  const mem = new FakeMemory(64 * MiB);
  const plan = loadKernel(mem, await guest("guest-vmlinux.elf"), { cmdline: "x" });
  const s = plan.sregs;
  assert.equal(plan.regs.rsi, BigInt(ZERO_PAGE_ADDR));
  assert.equal(plan.regs.rflags, 2n);
  assert.equal((s.efer ?? 0n) & 0x500n, 0x500n, "EFER.LME and LMA");
  assert.equal((s.cr4 ?? 0n) & 0x20n, 0x20n, "CR4.PAE");
  assert.equal((s.cr0 ?? 0n) & 0x8000_0001n, 0x8000_0001n, "CR0.PG and PE");
  assert.equal(s.cr3, BigInt(PML4_ADDR));
  assert.equal(s.cs?.l, 1);
  assert.equal(s.cs?.db, 0);
  assert.equal(s.cs?.selector, 0x10, "__BOOT_CS");
  for (const seg of [s.ds, s.es, s.ss]) {
    assert.equal(seg?.selector, 0x18, "__BOOT_DS");
    assert.equal(seg?.limit, 0xffff_ffff);
    assert.equal(seg?.type, 3);
  }
});

Deno.test("the boot GDT in guest memory matches the segment registers of the plan", async () => {
  const mem = new FakeMemory(64 * MiB);
  const plan = loadKernel(mem, await guest("guest-vmlinux.elf"), { cmdline: "" });
  const gdt = plan.sregs.gdt;
  assert.ok(gdt !== undefined);
  for (const seg of [plan.sregs.cs, plan.sregs.ds, plan.sregs.ss]) {
    assert.ok(seg !== undefined);
    assert.ok(seg.selector + 7 <= gdt.limit);
    const d = mem.dv(Number(gdt.base) + seg.selector, 8).getBigUint64(0, true);
    const limit = Number((d & 0xffffn) | (((d >> 48n) & 0xfn) << 16n));
    const g = Number((d >> 55n) & 1n);
    assert.equal(Number((d >> 40n) & 0xfn), seg.type);
    assert.equal(Number((d >> 44n) & 1n), seg.s);
    assert.equal(Number((d >> 47n) & 1n), seg.present);
    assert.equal(Number((d >> 53n) & 1n), seg.l);
    assert.equal(Number((d >> 54n) & 1n), seg.db);
    assert.equal(g, seg.g);
    assert.equal(g === 1 ? limit * 4096 + 4095 : limit, seg.limit);
    const base = Number((d >> 16n) & 0xff_ffffn) + Number((d >> 56n) & 0xffn) * 2 ** 24;
    assert.equal(base, Number(seg.base));
  }
});

Deno.test("the identity map covers the first 4 GiB, LAPIC and IOAPIC included", async () => {
  const mem = new FakeMemory(64 * MiB);
  const plan = loadKernel(mem, await guest("guest-vmlinux.elf"), { cmdline: "" });
  const cr3 = Number(plan.sregs.cr3);
  for (const va of [0, 0x7000, 0x10_0123, 63 * MiB + 5, 0xfec0_0000, 0xfee0_0300, 4 * GiB - 1]) {
    assert.equal(translate(mem, cr3, va), va, `va 0x${va.toString(16)}`);
  }
  assert.equal(translate(mem, cr3, 4 * GiB), undefined);
});

Deno.test("the zero page carries the loader fields and the NUL-terminated command line", async () => {
  const mem = new FakeMemory(64 * MiB);
  const cmdline = "console=ttyS0 mode=info päth=ü";
  loadKernel(mem, await guest("guest-vmlinux.elf"), { cmdline });
  const zp = mem.dv(ZERO_PAGE_ADDR, 0x1000);
  assert.equal(zp.getUint16(HDR.bootFlag, true), 0xaa55);
  assert.equal(zp.getUint32(HDR.header, true), 0x5372_6448);
  assert.ok(zp.getUint16(HDR.version, true) >= 0x020c);
  assert.equal(zp.getUint8(HDR.typeOfLoader), 0xff);
  assert.equal(zp.getUint8(HDR.loadflags) & 1, 1, "LOADED_HIGH");
  const ptr = zp.getUint32(HDR.cmdLinePtr, true);
  assert.equal(ptr, CMDLINE_ADDR);
  assert.equal(mem.cstring(ptr), cmdline);
  const bytes = new TextEncoder().encode(cmdline);
  assert.equal(mem.view(ptr + bytes.length, 1)[0], 0);
  assert.equal(zp.getUint32(HDR.ramdiskImage, true), 0);
  assert.equal(zp.getUint32(HDR.ramdiskSize, true), 0);
});

Deno.test("e820 of a 64 MiB machine: low RAM, the reserved BIOS hole, then RAM", async () => {
  const mem = new FakeMemory(64 * MiB);
  loadKernel(mem, await guest("guest-vmlinux.elf"), { cmdline: "" });
  assert.deepEqual(e820(mem), [
    [0, 0x9_fc00, 1],
    [0x9_fc00, 0x100000 - 0x9_fc00, 2],
    [0x10_0000, 64 * MiB - 0x10_0000, 1],
  ]);
});

Deno.test("e820 of a 4 GiB machine skips the MMIO gap and continues at 4 GiB", async () => {
  const mem = new FakeMemory(4 * GiB);
  loadKernel(mem, await guest("guest-vmlinux.elf"), { cmdline: "" });
  const map = e820(mem);
  assert.deepEqual(map, [
    [0, 0x9_fc00, 1],
    [0x9_fc00, 0x100000 - 0x9_fc00, 2],
    [0x10_0000, MMIO_GAP_START - 0x10_0000, 1],
    [MMIO_GAP_END, 4 * GiB - MMIO_GAP_START, 1],
  ]);
  const ram = map.filter(([, , t]) => t === 1).reduce((n, [, size]) => n + size, 0);
  assert.equal(ram + 0x100000 - 0x9_fc00, mem.size);
});

Deno.test("an initrd goes page aligned at the top of RAM, above the kernel", async () => {
  const mem = new FakeMemory(64 * MiB);
  const initrd = new Uint8Array(10_000).map((_, i) => (i * 7 + 3) & 0xff);
  const plan = loadKernel(mem, await guest("guest-vmlinux.elf"), { cmdline: "", initrd });
  const zp = mem.dv(ZERO_PAGE_ADDR, 0x1000);
  const addr = zp.getUint32(HDR.ramdiskImage, true) +
    zp.getUint32(BP.extRamdiskImage, true) * 2 ** 32;
  assert.equal(zp.getUint32(HDR.ramdiskSize, true), initrd.length);
  assert.equal(addr % 4096, 0);
  assert.ok(addr >= plan.kernel.end);
  assert.ok(addr + initrd.length <= 64 * MiB);
  assert.ok(64 * MiB - (addr + initrd.length) < 4096, "as high as it goes");
  assert.deepEqual(mem.read(addr, initrd.length), initrd);
});

Deno.test("on a 4 GiB machine a vmlinux initrd stays below 2 GiB", async () => {
  const mem = new FakeMemory(4 * GiB);
  const initrd = new Uint8Array(5000).fill(0x5a);
  loadKernel(mem, await guest("guest-vmlinux.elf"), { cmdline: "", initrd });
  const zp = mem.dv(ZERO_PAGE_ADDR, 0x1000);
  const addr = zp.getUint32(HDR.ramdiskImage, true);
  assert.equal(zp.getUint32(BP.extRamdiskImage, true), 0);
  assert.ok(addr + initrd.length <= 0x8000_0000);
  assert.ok(addr + initrd.length > 0x8000_0000 - 4096);
  assert.deepEqual(mem.read(addr, initrd.length), initrd);
});

Deno.test("a vmlinux entry is translated from its virtual to its physical address", () => {
  const code = new Uint8Array(0x3000).map((_, i) => i & 0xff);
  const vbase = 0xffff_ffff_8100_0000n;
  const image = makeElf64(vbase + 0x1234n, [
    { type: 1, vaddr: vbase, paddr: 0x100_0000n, data: code, memsz: 0x5000 },
    { type: 1, vaddr: vbase + 0x20_0000n, paddr: 0x120_0000n, data: code, memsz: 0x3000 },
  ]);
  const mem = new FakeMemory(64 * MiB);
  const plan = loadKernel(mem, image, { cmdline: "" });
  assert.equal(plan.protocol, "linux64");
  assert.equal(plan.regs.rip, 0x100_1234n);
  assert.deepEqual(mem.read(0x100_0000, code.length), code);
  assert.deepEqual(mem.read(0x120_0000, code.length), code);
  assert.deepEqual(plan.kernel, { start: 0x100_0000, end: 0x120_3000 });
});
