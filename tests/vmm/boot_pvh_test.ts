import assert from "node:assert/strict";
import {
  CMDLINE_ADDR,
  HVM_START_MAGIC,
  loadKernel,
  MEMMAP_ENTRY,
  MODLIST_ENTRY,
  START_INFO,
  START_INFO_ADDR,
} from "../../vmm/boot/mod.ts";
import { MMIO_GAP_END, MMIO_GAP_START } from "../../vmm/guest_memory.ts";
import {
  concat,
  elfNote,
  FakeMemory,
  guest,
  guestPath,
  makeElf64,
  nmSymbol,
  readelf,
} from "./boot_fake_memory.ts";

const MiB = 0x10_0000;
const GiB = 0x4000_0000;

function startInfo(mem: FakeMemory) {
  const si = mem.dv(START_INFO_ADDR, START_INFO.size);
  const memmap: Array<[number, number, number]> = [];
  const mmAddr = Number(si.getBigUint64(START_INFO.memmapPaddr, true));
  for (let i = 0; i < si.getUint32(START_INFO.memmapEntries, true); i++) {
    const e = mem.dv(mmAddr + i * MEMMAP_ENTRY.bytes, MEMMAP_ENTRY.bytes);
    memmap.push([
      Number(e.getBigUint64(MEMMAP_ENTRY.addr, true)),
      Number(e.getBigUint64(MEMMAP_ENTRY.size, true)),
      e.getUint32(MEMMAP_ENTRY.type, true),
    ]);
  }
  return {
    magic: si.getUint32(START_INFO.magic, true),
    version: si.getUint32(START_INFO.version, true),
    nrModules: si.getUint32(START_INFO.nrModules, true),
    modlist: Number(si.getBigUint64(START_INFO.modlistPaddr, true)),
    cmdline: Number(si.getBigUint64(START_INFO.cmdlinePaddr, true)),
    rsdp: Number(si.getBigUint64(START_INFO.rsdpPaddr, true)),
    memmap,
  };
}

Deno.test("a PVH guest enters at its Xen note's entry in 32-bit protected mode, paging off", async () => {
  const path = await guestPath("guest-pvh.elf");
  const mem = new FakeMemory(64 * MiB);
  const plan = loadKernel(mem, await Deno.readFile(path), { cmdline: "mode=info" });
  assert.equal(plan.protocol, "pvh");
  assert.equal(plan.regs.rip, BigInt(await nmSymbol(path, "pvh_entry")));
  assert.equal(plan.regs.rbx, BigInt(START_INFO_ADDR));
  assert.equal(plan.regs.rflags, 2n);
  const s = plan.sregs;
  assert.equal((s.cr0 ?? 0n) & 1n, 1n, "CR0.PE");
  assert.equal((s.cr0 ?? 0n) & 0x8000_0000n, 0n, "CR0.PG clear");
  assert.equal(s.efer, 0n);
  assert.equal(s.cr4, 0n);
  assert.equal(s.cs?.db, 1);
  assert.equal(s.cs?.l, 0);
  assert.equal(s.cs?.type, 0xb, "execute/read code");
  assert.equal(s.cs?.limit, 0xffff_ffff);
  assert.equal(s.cs?.base, 0n);
  for (const seg of [s.ds, s.es, s.ss, s.fs, s.gs]) {
    assert.equal(seg?.type, 3, "read/write data");
    assert.equal(seg?.limit, 0xffff_ffff);
    assert.equal(seg?.db, 1);
  }
  assert.equal(s.gdt?.base, 0x500n);
});

Deno.test("a PVH guest's segments land where readelf says", async () => {
  const path = await guestPath("guest-pvh.elf");
  const image = await Deno.readFile(path);
  const mem = new FakeMemory(64 * MiB);
  loadKernel(mem, image, { cmdline: "" });
  const { loads } = await readelf(path);
  assert.ok(loads.length > 0);
  for (const l of loads) {
    assert.deepEqual(mem.read(l.paddr, l.filesz), image.slice(l.offset, l.offset + l.filesz));
  }
});

Deno.test("hvm_start_info holds the magic, version 1, the command line and the memory map", async () => {
  const mem = new FakeMemory(64 * MiB);
  loadKernel(mem, await guest("guest-pvh.elf"), { cmdline: "mode=info root=/dev/vda" });
  const si = startInfo(mem);
  assert.equal(si.magic, HVM_START_MAGIC);
  assert.equal(si.version, 1);
  assert.equal(si.cmdline, CMDLINE_ADDR);
  assert.equal(mem.cstring(si.cmdline), "mode=info root=/dev/vda");
  assert.equal(si.rsdp, 0);
  assert.equal(si.nrModules, 0);
  assert.deepEqual(si.memmap, [
    [0, 0x9_fc00, 1],
    [0x9_fc00, 0x100000 - 0x9_fc00, 2],
    [0x10_0000, 64 * MiB - 0x10_0000, 1],
  ]);
});

Deno.test("a PVH memory map of a 6 GiB machine has RAM on both sides of the MMIO gap", async () => {
  const mem = new FakeMemory(6 * GiB);
  loadKernel(mem, await guest("guest-pvh.elf"), { cmdline: "" });
  assert.deepEqual(startInfo(mem).memmap, [
    [0, 0x9_fc00, 1],
    [0x9_fc00, 0x100000 - 0x9_fc00, 2],
    [0x10_0000, MMIO_GAP_START - 0x10_0000, 1],
    [MMIO_GAP_END, 6 * GiB - MMIO_GAP_START, 1],
  ]);
});

Deno.test("a PVH initrd is one module, page aligned below 4 GiB, bytes intact", async () => {
  const mem = new FakeMemory(6 * GiB);
  const initrd = new Uint8Array(3 * 4096 + 17).map((_, i) => (i * 31) & 0xff);
  const plan = loadKernel(mem, await guest("guest-pvh.elf"), { cmdline: "", initrd });
  const si = startInfo(mem);
  assert.equal(si.nrModules, 1);
  const m = mem.dv(si.modlist, MODLIST_ENTRY.bytes);
  const addr = Number(m.getBigUint64(MODLIST_ENTRY.paddr, true));
  assert.equal(Number(m.getBigUint64(MODLIST_ENTRY.size, true)), initrd.length);
  assert.equal(addr % 4096, 0);
  assert.ok(addr >= plan.kernel.end);
  assert.ok(addr + initrd.length <= MMIO_GAP_START, "in the low RAM region, below 4 GiB");
  assert.ok(addr + initrd.length > MMIO_GAP_START - 4096, "as high as it goes");
  assert.deepEqual(mem.read(addr, initrd.length), initrd);
});

Deno.test("a vmlinux-like ELF64 with a PVH note among other notes boots by PVH", () => {
  const code = new Uint8Array(0x2000).fill(0x90);
  const entry = new Uint8Array(8);
  new DataView(entry.buffer).setBigUint64(0, 0x100_0abcn, true);
  const notes = concat(
    elfNote("GNU", 3, new Uint8Array(20).fill(1)), // build id
    elfNote("Linux", 6, new TextEncoder().encode("6.1.0\0\0\0")),
    elfNote("Xen", 6, new TextEncoder().encode("linux\0\0\0")), // XEN_ELFNOTE_GUEST_OS
    elfNote("Xen", 18, entry), // XEN_ELFNOTE_PHYS32_ENTRY, 8 bytes as Linux writes it
  );
  const vbase = 0xffff_ffff_8100_0000n;
  const image = makeElf64(vbase + 0x200n, [
    { type: 1, vaddr: vbase, paddr: 0x100_0000n, data: code, memsz: 0x4000 },
    {
      type: 4,
      vaddr: vbase + 0x2000n,
      paddr: 0x100_2000n,
      data: notes,
      memsz: notes.length,
      align: 4,
    },
  ]);
  const mem = new FakeMemory(64 * MiB);
  const plan = loadKernel(mem, image, { cmdline: "console=ttyS0" });
  assert.equal(plan.protocol, "pvh");
  assert.equal(plan.regs.rip, 0x100_0abcn);
  assert.equal(startInfo(mem).magic, HVM_START_MAGIC);
});
