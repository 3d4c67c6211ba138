/**
 * A strict reader of the parts of an x86 ELF executable a loader needs: the
 * program headers and the Xen PVH entry note. Every offset and size is checked
 * against the file before use.
 *
 * @module
 */

import { BootError, hex } from "./errors.ts";

/** `\x7fELF`, read little-endian as a u32. */
export const ELF_MAGIC = 0x464c_457f;
const EI_CLASS = 4;
const EI_DATA = 5;
const ELFCLASS32 = 1;
const ELFCLASS64 = 2;
const ELFDATA2LSB = 1;
const ET_EXEC = 2;
const ET_DYN = 3;
const EM_386 = 3;
const EM_X86_64 = 62;

/** Program header type of a loadable segment. */
export const PT_LOAD = 1;
/** Program header type of a note segment. */
export const PT_NOTE = 4;
/** Xen ELF note carrying the 32-bit PVH entry point. */
export const XEN_ELFNOTE_PHYS32_ENTRY = 18;

/** Offsets of the ELF header fields per class: [ELF32, ELF64]. */
const EH = {
  type: [16, 16],
  machine: [18, 18],
  entry: [24, 24],
  phoff: [28, 32],
  phentsize: [42, 54],
  phnum: [44, 56],
  size: [52, 64],
} as const;
/** Offsets of the program header fields per class: [ELF32, ELF64]. */
const PH = {
  type: [0, 0],
  offset: [4, 8],
  vaddr: [8, 16],
  paddr: [12, 24],
  filesz: [16, 32],
  memsz: [20, 40],
  align: [28, 48],
  size: [32, 56],
} as const;

/** One program header. */
export interface ProgramHeader {
  /** Index in the program header table, for messages. */
  readonly index: number;
  /** `p_type`. */
  readonly type: number;
  /** File offset of the segment's bytes. */
  readonly offset: number;
  /** Virtual address. */
  readonly vaddr: number;
  /** Physical (load) address. */
  readonly paddr: number;
  /** Bytes in the file. */
  readonly filesz: number;
  /** Bytes in memory (the rest is zeroed). */
  readonly memsz: number;
  /** Alignment. */
  readonly align: number;
}

/** What the loader needs from an ELF executable. */
export interface ElfImage {
  /** 32 or 64. */
  readonly bits: 32 | 64;
  /** `e_entry` (a virtual address). */
  readonly entry: number;
  /** Every program header. */
  readonly phdrs: readonly ProgramHeader[];
  /** Physical PVH entry from the `XEN_ELFNOTE_PHYS32_ENTRY` note, if any. */
  readonly pvhEntry: number | undefined;
}

/** True when `image` starts with the ELF magic. */
export function isElf(image: Uint8Array): boolean {
  if (image.length < 4) return false;
  return new DataView(image.buffer, image.byteOffset, 4).getUint32(0, true) === ELF_MAGIC;
}

function readWord(view: DataView, off: number, bits: 32 | 64, what: string): number {
  if (bits === 32) return view.getUint32(off, true);
  const v = view.getBigUint64(off, true);
  // Kernel virtual addresses (0xffffffff8…) exceed 2^53: keep them exact by
  // mapping the sign-extended top half to negative numbers.
  const signed = BigInt.asIntN(64, v);
  if (signed > BigInt(Number.MAX_SAFE_INTEGER) || signed < BigInt(Number.MIN_SAFE_INTEGER)) {
    throw new BootError(`ELF ${what} ${hex(Number(v))} is out of range; the image is corrupt`);
  }
  return Number(signed);
}

/**
 * Parses and validates the ELF header, program headers and PVH note of
 * `image`. Throws {@link BootError} for anything malformed or truncated.
 */
export function parseElf(image: Uint8Array): ElfImage {
  const len = image.length;
  if (len < 64 || !isElf(image)) {
    throw new BootError(`kernel image is truncated: ${len} bytes is shorter than an ELF header`);
  }
  const view = new DataView(image.buffer, image.byteOffset, image.byteLength);
  const cls = image[EI_CLASS];
  if (cls !== ELFCLASS32 && cls !== ELFCLASS64) {
    throw new BootError(`not a kernel: ELF class ${cls} is neither 32- nor 64-bit`);
  }
  const bits = cls === ELFCLASS64 ? 64 : 32;
  const c = bits === 64 ? 1 : 0;
  if (image[EI_DATA] !== ELFDATA2LSB) {
    throw new BootError("not an x86 kernel: the ELF image is not little-endian");
  }
  const type = view.getUint16(EH.type[c], true);
  if (type !== ET_EXEC && type !== ET_DYN) {
    throw new BootError(`not a kernel: ELF type ${type} is not an executable (ET_EXEC)`);
  }
  const machine = view.getUint16(EH.machine[c], true);
  const want = bits === 64 ? EM_X86_64 : EM_386;
  if (machine !== want) {
    throw new BootError(
      `not an x86 kernel: ELF${bits} machine ${machine}, expected ${want} (${
        bits === 64 ? "x86-64" : "i386"
      })`,
    );
  }
  const entry = readWord(view, EH.entry[c], bits, "entry point");
  const phoff = readWord(view, EH.phoff[c], bits, "program header offset");
  const phentsize = view.getUint16(EH.phentsize[c], true);
  const phnum = view.getUint16(EH.phnum[c], true);
  if (phnum === 0) {
    throw new BootError("ELF kernel has no program headers, so no segments to load");
  }
  if (phentsize !== PH.size[c]) {
    throw new BootError(`ELF program header size is ${phentsize}, expected ${PH.size[c]}`);
  }
  if (phoff < 0) throw new BootError(`ELF program header offset ${phoff} is negative`);
  const phdrs: ProgramHeader[] = [];
  for (let i = 0; i < phnum; i++) {
    const base = phoff + i * phentsize;
    if (base + phentsize > len) {
      throw new BootError(
        `kernel image is truncated: ELF program header ${i} ends at ${
          hex(base + phentsize)
        } beyond the file (${len} bytes)`,
      );
    }
    const ph: ProgramHeader = {
      index: i,
      type: view.getUint32(base + PH.type[c], true),
      offset: readWord(view, base + PH.offset[c], bits, `segment ${i} offset`),
      vaddr: readWord(view, base + PH.vaddr[c], bits, `segment ${i} vaddr`),
      paddr: readWord(view, base + PH.paddr[c], bits, `segment ${i} paddr`),
      filesz: readWord(view, base + PH.filesz[c], bits, `segment ${i} file size`),
      memsz: readWord(view, base + PH.memsz[c], bits, `segment ${i} memory size`),
      align: readWord(view, base + PH.align[c], bits, `segment ${i} alignment`),
    };
    if (ph.type === PT_LOAD || ph.type === PT_NOTE) checkSegment(ph, len);
    phdrs.push(ph);
  }
  if (!phdrs.some((p) => p.type === PT_LOAD && p.memsz > 0)) {
    throw new BootError("ELF kernel has no loadable (PT_LOAD) segments; is it a kernel image?");
  }
  return { bits, entry, phdrs, pvhEntry: findPvhEntry(view, phdrs) };
}

function checkSegment(ph: ProgramHeader, len: number): void {
  const name = ph.type === PT_LOAD ? "PT_LOAD" : "PT_NOTE";
  if (ph.offset < 0 || ph.filesz < 0 || ph.memsz < 0) {
    throw new BootError(`ELF segment ${ph.index} (${name}) has a negative offset or size`);
  }
  if (ph.offset + ph.filesz > len) {
    throw new BootError(
      `kernel image is truncated: ELF segment ${ph.index} (${name}) ends at ${
        hex(ph.offset + ph.filesz)
      } beyond the file (${len} bytes)`,
    );
  }
  if (ph.type === PT_LOAD) {
    if (ph.filesz > ph.memsz) {
      throw new BootError(
        `ELF segment ${ph.index} holds ${ph.filesz} file bytes but only ${ph.memsz} in memory`,
      );
    }
    if (ph.paddr < 0) {
      throw new BootError(`ELF segment ${ph.index} has physical address ${ph.paddr} (negative)`);
    }
  }
}

/** Reads `XEN_ELFNOTE_PHYS32_ENTRY` from the PT_NOTE segments (bounds-checked). */
function findPvhEntry(view: DataView, phdrs: readonly ProgramHeader[]): number | undefined {
  for (const ph of phdrs) {
    if (ph.type !== PT_NOTE) continue;
    const align = ph.align === 8 ? 8 : 4;
    const up = (n: number) => Math.ceil(n / align) * align;
    const end = ph.offset + ph.filesz;
    let off = ph.offset;
    while (off + 12 <= end) {
      const namesz = view.getUint32(off, true);
      const descsz = view.getUint32(off + 4, true);
      const type = view.getUint32(off + 8, true);
      const nameOff = off + 12;
      const descOff = nameOff + up(namesz);
      const next = descOff + up(descsz);
      if (descOff + descsz > end) {
        throw new BootError(
          `ELF note at file offset ${hex(off)} runs past its PT_NOTE segment ${ph.index}`,
        );
      }
      if (type === XEN_ELFNOTE_PHYS32_ENTRY && namesz === 4 && isXen(view, nameOff)) {
        if (descsz === 4) return view.getUint32(descOff, true);
        if (descsz === 8) {
          const v = view.getBigUint64(descOff, true);
          if (v >= 0x1_0000_0000n) {
            throw new BootError(`PVH entry ${hex(Number(v))} is not below 4 GiB`);
          }
          return Number(v);
        }
        throw new BootError(`PVH entry note has a ${descsz}-byte value, expected 4 or 8`);
      }
      off = next;
    }
  }
  return undefined;
}

function isXen(view: DataView, off: number): boolean {
  // "Xen\0"
  return view.getUint32(off, true) === 0x006e_6558;
}
