/**
 * bzImage: the setup header at 0x1f1, the protected-mode kernel after the
 * setup sectors, entered at its 64-bit entry (load address + 0x200) by the
 * Linux 64-bit boot protocol.
 *
 * @module
 */

import type { GuestMemory } from "../guest_memory.ts";
import type { BootOptions, BootPlan } from "./types.ts";
import { longModeSregs, RFLAGS_BOOT, writeGdt, writeIdentityMap } from "./cpu_state.ts";
import { writeCmdline } from "./cmdline.ts";
import { e820FromRegions } from "./e820.ts";
import { BootError, hex, mib } from "./errors.ts";
import { guestWrite, inRam, ramEnd } from "./guest_access.ts";
import { placeInitrd } from "./initrd.ts";
import {
  BOOT_DATA_END,
  BOOT_STACK_TOP,
  HIGH_MEMORY,
  overlapsBiosArea,
  ZERO_PAGE_ADDR,
} from "./layout.ts";
import {
  HDR,
  HDRS_MAGIC,
  KERNEL_64_ENTRY_OFFSET,
  MIN_BOOT_PROTOCOL,
  SETUP_HEADER_MAX_END,
  XLF_KERNEL_64,
} from "./zero_page.ts";
import { writeZeroPage } from "./zero_page_writer.ts";

/** The fields of a bzImage setup header the loader acts on. */
export interface BzImageHeader {
  /** Boot protocol version (e.g. 0x020f for 2.15). */
  readonly version: number;
  /** Bytes of real-mode setup code (boot sector included) before the kernel. */
  readonly setupSize: number;
  /** The setup header bytes to copy into the zero page (file offsets 0x1f1 on). */
  readonly header: Uint8Array;
  /** The protected-mode kernel. */
  readonly payload: Uint8Array;
  /** Whether the kernel may be loaded at any `kernelAlignment`-aligned address. */
  readonly relocatable: boolean;
  /** Required alignment of a relocated load address. */
  readonly kernelAlignment: number;
  /** Preferred load address. */
  readonly prefAddress: number;
  /** Memory the kernel needs from its load address, at least the payload size. */
  readonly initSize: number;
  /** Highest address the initrd may occupy. */
  readonly initrdAddrMax: number;
  /** Longest command line the kernel accepts, without the NUL. */
  readonly cmdlineSize: number;
}

/** True when `image` has the "HdrS" signature of a Linux setup header. */
export function isBzImage(image: Uint8Array): boolean {
  if (image.length < HDR.header + 4) return false;
  const view = new DataView(image.buffer, image.byteOffset, image.byteLength);
  return view.getUint32(HDR.header, true) === HDRS_MAGIC;
}

/** Parses and validates a bzImage's setup header; throws {@link BootError}. */
export function parseBzImage(image: Uint8Array): BzImageHeader {
  const len = image.length;
  if (!isBzImage(image)) throw new BootError('not a bzImage: no "HdrS" signature at 0x202');
  const view = new DataView(image.buffer, image.byteOffset, image.byteLength);
  const version = view.getUint16(HDR.version, true);
  const vtext = `${version >> 8}.${(version & 0xff).toString().padStart(2, "0")}`;
  if (version < MIN_BOOT_PROTOCOL) {
    throw new BootError(
      `bzImage boot protocol ${vtext} is too old: vmkit needs 2.12 or newer (a 64-bit entry); ` +
        "use a Linux 3.8 or later kernel",
    );
  }
  const headerEnd = Math.min(HDR.jump + 2 + view.getUint8(HDR.jump + 1), SETUP_HEADER_MAX_END);
  if (headerEnd < HDR.initSize + 4 || headerEnd > len) {
    throw new BootError(
      `kernel image is truncated: bzImage setup header ends at ${hex(headerEnd)} ` +
        `(needs ${hex(HDR.initSize + 4)}), file is ${len} bytes`,
    );
  }
  const xloadflags = view.getUint16(HDR.xloadflags, true);
  if ((xloadflags & XLF_KERNEL_64) === 0) {
    throw new BootError(
      `bzImage (protocol ${vtext}) has no 64-bit entry point (XLF_KERNEL_64 unset in ` +
        "xloadflags); build a 64-bit kernel",
    );
  }
  const sects = view.getUint8(HDR.setupSects);
  const setupSize = ((sects === 0 ? 4 : sects) + 1) * 512;
  const syssize = view.getUint32(HDR.syssize, true);
  if (setupSize >= len) {
    throw new BootError(
      `kernel image is truncated: bzImage has ${setupSize} bytes of setup code but the file ` +
        `is ${len} bytes, leaving no kernel`,
    );
  }
  const payload = image.subarray(setupSize);
  if (payload.length < syssize * 16) {
    throw new BootError(
      `kernel image is truncated: bzImage header says the protected-mode kernel is ` +
        `${syssize * 16} bytes (syssize) but the file holds ${payload.length} after the setup code`,
    );
  }
  const alignment = view.getUint32(HDR.kernelAlignment, true);
  const relocatable = view.getUint8(HDR.relocatableKernel) !== 0;
  if (relocatable && (alignment === 0 || (alignment & (alignment - 1)) !== 0)) {
    throw new BootError(`bzImage kernel_alignment ${hex(alignment)} is not a power of two`);
  }
  const pref = view.getBigUint64(HDR.prefAddress, true);
  const initSize = view.getUint32(HDR.initSize, true);
  return {
    version,
    setupSize,
    header: image.slice(HDR.setupSects, headerEnd),
    payload,
    relocatable,
    kernelAlignment: alignment,
    prefAddress: pref === 0n || pref >= 0x1_0000_0000n ? HIGH_MEMORY : Number(pref),
    initSize: Math.max(initSize, payload.length),
    initrdAddrMax: view.getUint32(HDR.initrdAddrMax, true),
    cmdlineSize: view.getUint32(HDR.cmdlineSize, true),
  };
}

/** Chooses where to load the kernel: `pref_address` if it fits, else the lowest aligned spot. */
function loadAddress(memory: GuestMemory, hdr: BzImageHeader): number {
  const fits = (a: number) =>
    a >= BOOT_DATA_END && !overlapsBiosArea(a, hdr.initSize) && inRam(memory, a, hdr.initSize);
  if (fits(hdr.prefAddress)) return hdr.prefAddress;
  if (hdr.relocatable) {
    const a = Math.ceil(HIGH_MEMORY / hdr.kernelAlignment) * hdr.kernelAlignment;
    if (fits(a)) return a;
  }
  const want = (hdr.relocatable ? HIGH_MEMORY : hdr.prefAddress) + hdr.initSize;
  if (want > ramEnd(memory)) {
    throw new BootError(
      `guest memory too small: kernel needs ${mib(want)} (load address plus init_size ${
        hex(hdr.initSize)
      }), machine has ${mib(memory.size)}; give the machine more memory`,
    );
  }
  throw new BootError(
    `bzImage cannot be loaded at ${hex(hdr.prefAddress)} (${hdr.initSize} bytes): ` +
      "that range is not guest RAM or overlaps the reserved BIOS area [0x9fc00, 0x100000), and " +
      "the kernel is not relocatable",
  );
}

/** Boots a bzImage by its 64-bit entry point. */
export function loadBzImage(memory: GuestMemory, image: Uint8Array, opts: BootOptions): BootPlan {
  const hdr = parseBzImage(image);
  const e820 = e820FromRegions(memory.regions);
  const load = loadAddress(memory, hdr);
  const kernelEnd = load + hdr.initSize;
  const cmdlineSize = writeCmdline(
    memory,
    opts.cmdline,
    hdr.cmdlineSize,
    "the kernel's cmdline_size",
  );
  guestWrite(memory, load, hdr.payload, "the bzImage kernel");
  const initrd = opts.initrd !== undefined && opts.initrd.length > 0
    ? placeInitrd(memory, opts.initrd, kernelEnd, hdr.initrdAddrMax)
    : undefined;
  writeZeroPage(memory, {
    header: hdr.header,
    e820,
    cmdlineSize,
    initrd,
    loadAddr: load,
    acpiRsdp: opts.acpiRsdp,
  });
  writeGdt(memory);
  writeIdentityMap(memory);
  return {
    protocol: "bzimage64",
    regs: {
      rip: BigInt(load + KERNEL_64_ENTRY_OFFSET),
      rsi: BigInt(ZERO_PAGE_ADDR),
      rsp: BigInt(BOOT_STACK_TOP),
      rflags: RFLAGS_BOOT,
    },
    sregs: longModeSregs(),
    kernel: { start: load, end: kernelEnd },
  };
}
