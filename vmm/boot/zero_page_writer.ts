/**
 * Fills the zero page for the Linux 64-bit boot protocol: the setup header
 * (copied from a bzImage, or synthesized for an ELF vmlinux), the loader
 * fields, the e820 table, the command line and initrd pointers, and the
 * ACPI RSDP address.
 *
 * @module
 */

import type { GuestMemory } from "../guest_memory.ts";
import type { E820Entry } from "./e820.ts";
import { guestView } from "./guest_access.ts";
import type { InitrdPlacement } from "./initrd.ts";
import { CMDLINE_ADDR, ZERO_PAGE_ADDR } from "./layout.ts";
import {
  BOOT_FLAG,
  BP,
  E820_ENTRY_SIZE,
  ELF_BOOT_PROTOCOL,
  HDR,
  HDRS_MAGIC,
  LOADED_HIGH,
  LOADER_TYPE_UNDEFINED,
  ZERO_PAGE_SIZE,
} from "./zero_page.ts";

/** What goes into the zero page. */
export interface ZeroPageInput {
  /** Setup header bytes from a bzImage (file offsets 0x1f1 onwards), or undefined for ELF. */
  readonly header: Uint8Array | undefined;
  /** The memory map. */
  readonly e820: readonly E820Entry[];
  /** Length of the command line written at `CMDLINE_ADDR`, without its NUL. */
  readonly cmdlineSize: number;
  /** The initrd, if any. */
  readonly initrd: InitrdPlacement | undefined;
  /** Where the protected-mode kernel was loaded (`code32_start`). */
  readonly loadAddr: number;
  /** The ACPI RSDP's address, if the machine has ACPI tables. */
  readonly acpiRsdp: number | undefined;
}

/** Writes the zero page at {@link ZERO_PAGE_ADDR}. */
export function writeZeroPage(memory: GuestMemory, input: ZeroPageInput): void {
  const zp = guestView(memory, ZERO_PAGE_ADDR, ZERO_PAGE_SIZE, "the zero page");
  new Uint8Array(zp.buffer, zp.byteOffset, ZERO_PAGE_SIZE).fill(0);
  if (input.header !== undefined) {
    new Uint8Array(zp.buffer, zp.byteOffset + HDR.setupSects, input.header.length)
      .set(input.header);
  } else {
    zp.setUint16(HDR.bootFlag, BOOT_FLAG, true);
    zp.setUint32(HDR.header, HDRS_MAGIC, true);
    zp.setUint16(HDR.version, ELF_BOOT_PROTOCOL, true);
    zp.setUint32(HDR.cmdlineSize, input.cmdlineSize, true);
  }
  zp.setUint16(HDR.vidMode, 0xffff, true); // "normal": do not touch the video mode
  zp.setUint8(HDR.typeOfLoader, LOADER_TYPE_UNDEFINED);
  zp.setUint8(HDR.loadflags, zp.getUint8(HDR.loadflags) | LOADED_HIGH);
  zp.setUint32(HDR.code32Start, input.loadAddr, true);
  zp.setUint32(HDR.cmdLinePtr, CMDLINE_ADDR, true);
  zp.setUint32(BP.extCmdLinePtr, 0, true);
  const rd = input.initrd ?? { addr: 0, size: 0 };
  zp.setUint32(HDR.ramdiskImage, rd.addr % 0x1_0000_0000, true);
  zp.setUint32(HDR.ramdiskSize, rd.size % 0x1_0000_0000, true);
  zp.setUint32(BP.extRamdiskImage, Math.floor(rd.addr / 0x1_0000_0000), true);
  zp.setUint32(BP.extRamdiskSize, Math.floor(rd.size / 0x1_0000_0000), true);
  zp.setBigUint64(BP.acpiRsdpAddr, BigInt(input.acpiRsdp ?? 0), true);
  zp.setUint8(BP.e820Entries, input.e820.length);
  input.e820.forEach((e, i) => {
    const off = BP.e820Table + i * E820_ENTRY_SIZE;
    zp.setBigUint64(off, BigInt(e.addr), true);
    zp.setBigUint64(off + 8, BigInt(e.size), true);
    zp.setUint32(off + 16, e.type, true);
  });
}
