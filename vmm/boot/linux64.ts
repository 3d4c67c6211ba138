/**
 * The Linux 64-bit boot protocol for an ELF vmlinux without a PVH note: load
 * the segments, build the zero page, and start in long mode at the physical
 * entry point with RSI pointing at the zero page.
 *
 * @module
 */

import type { GuestMemory } from "../guest_memory.ts";
import type { BootOptions, BootPlan } from "./types.ts";
import { longModeSregs, RFLAGS_BOOT, writeGdt, writeIdentityMap } from "./cpu_state.ts";
import { writeCmdline } from "./cmdline.ts";
import { e820FromRegions } from "./e820.ts";
import type { ElfImage } from "./elf.ts";
import { loadSegments, physicalEntry } from "./elf_load.ts";
import { placeInitrd } from "./initrd.ts";
import { BOOT_STACK_TOP, CMDLINE_MAX, ZERO_PAGE_ADDR } from "./layout.ts";
import { writeZeroPage } from "./zero_page_writer.ts";

/**
 * Highest initrd address for a vmlinux, which carries no `initrd_addr_max`:
 * the value every x86-64 kernel's own header declares.
 */
export const ELF_INITRD_ADDR_MAX = 0x7fff_ffff;

/** Boots `elf` (parsed from `image`) by the Linux 64-bit boot protocol. */
export function loadLinux64Elf(
  memory: GuestMemory,
  image: Uint8Array,
  elf: ElfImage,
  opts: BootOptions,
): BootPlan {
  const e820 = e820FromRegions(memory.regions);
  const entry = physicalEntry(elf);
  const kernel = loadSegments(memory, image, elf);
  const cmdlineSize = writeCmdline(memory, opts.cmdline, CMDLINE_MAX - 1, "the loader");
  const initrd = opts.initrd !== undefined && opts.initrd.length > 0
    ? placeInitrd(memory, opts.initrd, kernel.end, ELF_INITRD_ADDR_MAX)
    : undefined;
  writeZeroPage(memory, {
    header: undefined,
    e820,
    cmdlineSize,
    initrd,
    loadAddr: kernel.start,
    acpiRsdp: opts.acpiRsdp,
  });
  writeGdt(memory);
  writeIdentityMap(memory);
  return {
    protocol: "linux64",
    regs: {
      rip: BigInt(entry),
      rsi: BigInt(ZERO_PAGE_ADDR),
      rsp: BigInt(BOOT_STACK_TOP),
      rflags: RFLAGS_BOOT,
    },
    sregs: longModeSregs(),
    kernel,
  };
}
