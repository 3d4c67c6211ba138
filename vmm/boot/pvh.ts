/**
 * The PVH boot protocol (Xen `hvm_start_info`, as Linux and QEMU use it for
 * direct kernel boot): 32-bit protected mode, paging off, EBX = the start info.
 *
 * @module
 */

import type { GuestMemory } from "../guest_memory.ts";
import type { BootOptions, BootPlan } from "./types.ts";
import { protectedModeSregs, RFLAGS_BOOT, writeGdt } from "./cpu_state.ts";
import { writeCmdline } from "./cmdline.ts";
import { e820FromRegions } from "./e820.ts";
import type { ElfImage } from "./elf.ts";
import { loadSegments } from "./elf_load.ts";
import { BootError, hex } from "./errors.ts";
import { guestView } from "./guest_access.ts";
import { placeInitrd } from "./initrd.ts";
import {
  BOOT_STACK_TOP,
  CMDLINE_ADDR,
  CMDLINE_MAX,
  FOUR_GIB,
  MEMMAP_ADDR,
  MODLIST_ADDR,
  START_INFO_ADDR,
  ZERO_PAGE_ADDR,
} from "./layout.ts";

/** `XEN_HVM_START_MAGIC_VALUE`. */
export const HVM_START_MAGIC = 0x336e_c578;
/** Version of `hvm_start_info` written (1: with the memory map). */
export const HVM_START_VERSION = 1;

/** `struct hvm_start_info` field offsets. */
export const START_INFO = {
  magic: 0,
  version: 4,
  flags: 8,
  nrModules: 12,
  modlistPaddr: 16,
  cmdlinePaddr: 24,
  rsdpPaddr: 32,
  memmapPaddr: 40,
  memmapEntries: 48,
  size: 56,
} as const;
/** `struct hvm_modlist_entry` offsets. */
export const MODLIST_ENTRY = { paddr: 0, size: 8, cmdlinePaddr: 16, bytes: 32 } as const;
/** `struct hvm_memmap_table_entry` offsets. */
export const MEMMAP_ENTRY = { addr: 0, size: 8, type: 16, bytes: 24 } as const;

/** Boots `elf` at its PVH entry `entry`. */
export function loadPvh(
  memory: GuestMemory,
  image: Uint8Array,
  elf: ElfImage,
  entry: number,
  opts: BootOptions,
): BootPlan {
  const e820 = e820FromRegions(memory.regions);
  const room = Math.floor((ZERO_PAGE_ADDR - MEMMAP_ADDR) / MEMMAP_ENTRY.bytes);
  if (e820.length > room) {
    throw new BootError(`guest memory map has ${e820.length} entries; PVH room is ${room}`);
  }
  const kernel = loadSegments(memory, image, elf);
  if (entry < kernel.start || entry >= kernel.end) {
    throw new BootError(
      `PVH entry ${hex(entry)} is outside the loaded kernel [${hex(kernel.start)}, ${
        hex(kernel.end)
      }); the image's Xen note is corrupt`,
    );
  }
  writeCmdline(memory, opts.cmdline, CMDLINE_MAX - 1, "the loader");
  const initrd = opts.initrd !== undefined && opts.initrd.length > 0
    ? placeInitrd(memory, opts.initrd, kernel.end, FOUR_GIB - 1)
    : undefined;

  const mm = guestView(memory, MEMMAP_ADDR, e820.length * MEMMAP_ENTRY.bytes, "the PVH memory map");
  e820.forEach((e, i) => {
    const off = i * MEMMAP_ENTRY.bytes;
    mm.setBigUint64(off + MEMMAP_ENTRY.addr, BigInt(e.addr), true);
    mm.setBigUint64(off + MEMMAP_ENTRY.size, BigInt(e.size), true);
    mm.setUint32(off + MEMMAP_ENTRY.type, e.type, true);
    mm.setUint32(off + MEMMAP_ENTRY.type + 4, 0, true);
  });
  const ml = guestView(memory, MODLIST_ADDR, MODLIST_ENTRY.bytes, "the PVH module list");
  for (let off = 0; off < MODLIST_ENTRY.bytes; off += 8) ml.setBigUint64(off, 0n, true);
  if (initrd !== undefined) {
    ml.setBigUint64(MODLIST_ENTRY.paddr, BigInt(initrd.addr), true);
    ml.setBigUint64(MODLIST_ENTRY.size, BigInt(initrd.size), true);
  }
  const si = guestView(memory, START_INFO_ADDR, START_INFO.size, "the PVH start info");
  for (let off = 0; off < START_INFO.size; off += 8) si.setBigUint64(off, 0n, true);
  si.setUint32(START_INFO.magic, HVM_START_MAGIC, true);
  si.setUint32(START_INFO.version, HVM_START_VERSION, true);
  si.setUint32(START_INFO.nrModules, initrd !== undefined ? 1 : 0, true);
  si.setBigUint64(START_INFO.modlistPaddr, initrd !== undefined ? BigInt(MODLIST_ADDR) : 0n, true);
  si.setBigUint64(START_INFO.cmdlinePaddr, BigInt(CMDLINE_ADDR), true);
  si.setBigUint64(START_INFO.rsdpPaddr, BigInt(opts.acpiRsdp ?? 0), true);
  si.setBigUint64(START_INFO.memmapPaddr, BigInt(MEMMAP_ADDR), true);
  si.setUint32(START_INFO.memmapEntries, e820.length, true);
  writeGdt(memory);
  return {
    protocol: "pvh",
    regs: {
      rip: BigInt(entry),
      rbx: BigInt(START_INFO_ADDR),
      rsp: BigInt(BOOT_STACK_TOP),
      rflags: RFLAGS_BOOT,
    },
    sregs: protectedModeSregs(),
    kernel,
  };
}
