/**
 * vmkit boot loaders: put a Linux-style kernel into guest memory and say how
 * the boot vCPU starts. Three entry protocols:
 *
 * - **PVH** for an ELF (32- or 64-bit) with a Xen `XEN_ELFNOTE_PHYS32_ENTRY`
 *   note: 32-bit protected mode, paging off, EBX = `struct hvm_start_info`.
 * - **Linux 64-bit** for an ELF64 vmlinux without that note: long mode with a
 *   4 GiB identity map, RSI = the zero page.
 * - **bzImage** (boot protocol 2.12+, `XLF_KERNEL_64`): the protected-mode
 *   kernel at `pref_address`, entered at load address + 0x200 in long mode.
 *
 * Images are hostile input: every malformed field is a {@link BootError}.
 * Low memory layout: GDT at {@link GDT_ADDR}, PVH start info at
 * {@link START_INFO_ADDR}, zero page at {@link ZERO_PAGE_ADDR}, page tables at
 * {@link PML4_ADDR}, command line at {@link CMDLINE_ADDR}; kernels must load at
 * or above {@link BOOT_DATA_END}.
 *
 * @example
 * ```ts ignore
 * import { loadKernel } from "@vmkit/vmkit/vmm/boot";
 * const plan = loadKernel(machine.memory, await Deno.readFile("bzImage"), {
 *   cmdline: "console=ttyS0",
 * });
 * // plan.regs / plan.sregs: the boot vCPU's initial state.
 * ```
 *
 * @module
 */

import type { GuestMemory } from "../guest_memory.ts";
import type { BootOptions, BootPlan } from "./types.ts";
import { isBzImage, loadBzImage } from "./bzimage.ts";
import { isElf, parseElf } from "./elf.ts";
import { BootError } from "./errors.ts";
import { loadLinux64Elf } from "./linux64.ts";
import { loadPvh } from "./pvh.ts";

export type { BootOptions, BootPlan, BootProtocol } from "./types.ts";
export { BootError } from "./errors.ts";
export {
  BOOT_DATA_END,
  BOOT_STACK_TOP,
  CMDLINE_ADDR,
  CMDLINE_MAX,
  EBDA_START,
  GDT_ADDR,
  HIGH_MEMORY,
  MEMMAP_ADDR,
  MODLIST_ADDR,
  PD_ADDR,
  PDPT_ADDR,
  PML4_ADDR,
  START_INFO_ADDR,
  ZERO_PAGE_ADDR,
} from "./layout.ts";
export { E820_RAM, E820_RESERVED, type E820Entry, e820FromRegions } from "./e820.ts";
export { SEL_CODE32, SEL_CODE64, SEL_DATA } from "./cpu_state.ts";
export { HVM_START_MAGIC, MEMMAP_ENTRY, MODLIST_ENTRY, START_INFO } from "./pvh.ts";
export { BP, E820_ENTRY_SIZE, HDR } from "./zero_page.ts";
export { type BzImageHeader, parseBzImage } from "./bzimage.ts";
export { type ElfImage, parseElf, type ProgramHeader } from "./elf.ts";

/**
 * Loads `image` (ELF vmlinux, PVH ELF, or bzImage) with `opts.cmdline` and
 * optional `opts.initrd` into `memory`, and returns the boot vCPU's state.
 * Throws {@link BootError} for anything the image or options make impossible.
 */
export function loadKernel(memory: GuestMemory, image: Uint8Array, opts: BootOptions): BootPlan {
  if (isElf(image)) {
    const elf = parseElf(image);
    if (elf.pvhEntry !== undefined) return loadPvh(memory, image, elf, elf.pvhEntry, opts);
    if (elf.bits === 32) {
      throw new BootError(
        "32-bit ELF kernel has no PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY); vmkit boots " +
          "32-bit ELF images only by PVH",
      );
    }
    return loadLinux64Elf(memory, image, elf, opts);
  }
  if (isBzImage(image)) return loadBzImage(memory, image, opts);
  throw new BootError(
    `not a kernel: no ELF magic and no Linux setup header ("HdrS" at 0x202) in ${image.length} ` +
      "bytes; pass a vmlinux, a PVH ELF or a bzImage",
  );
}
