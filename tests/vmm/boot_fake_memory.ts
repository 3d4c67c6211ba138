/**
 * Test helpers for the boot loader tests: a GuestMemory over ArrayBuffers (no
 * /dev/kvm), a builder of synthetic ELF images, a page-table walker and a
 * `readelf` oracle.
 *
 * @module
 */

import {
  type GuestMemory,
  GuestMemoryError,
  type MemoryRegion,
  x86Layout,
} from "../../vmm/guest_memory.ts";
import { buildGuests } from "../guests/build.ts";

/**
 * Guest memory over one ArrayBuffer per region of the usual x86 layout. The
 * buffers are allocated zeroed by the OS on first touch, so a 4 GiB machine
 * only materialises the pages a loader writes.
 */
export class FakeMemory implements GuestMemory {
  readonly regions: readonly MemoryRegion[];
  readonly size: number;
  readonly #bufs: Uint8Array[];

  /** Creates `size` bytes of RAM laid out by `x86Layout`, or by explicit `layout`. */
  constructor(size: number, layout?: Array<[number, number]>) {
    const parts = layout ?? x86Layout(size);
    this.regions = parts.map(([guestAddr, len], slot) => ({
      guestAddr,
      size: len,
      hostAddr: 0n,
      slot,
    }));
    this.size = parts.reduce((n, [, len]) => n + len, 0);
    this.#bufs = parts.map(([, len]) => new Uint8Array(len));
  }

  view(gpa: number, len: number): Uint8Array {
    for (const [i, r] of this.regions.entries()) {
      if (gpa >= r.guestAddr && gpa + len <= r.guestAddr + r.size) {
        const buf = this.#bufs[i];
        if (buf === undefined) break;
        return buf.subarray(gpa - r.guestAddr, gpa - r.guestAddr + len);
      }
    }
    throw new GuestMemoryError(gpa, len);
  }

  write(gpa: number, data: Uint8Array): void {
    this.view(gpa, data.length).set(data);
  }

  read(gpa: number, len: number): Uint8Array {
    return this.view(gpa, len).slice();
  }

  /** A DataView over `[gpa, gpa + len)`. */
  dv(gpa: number, len: number): DataView {
    const v = this.view(gpa, len);
    return new DataView(v.buffer, v.byteOffset, v.byteLength);
  }

  /** The NUL-terminated string at `gpa` (at most `max` bytes). */
  cstring(gpa: number, max = 0x10000): string {
    const bytes = this.view(gpa, max);
    const end = bytes.indexOf(0);
    return new TextDecoder().decode(bytes.subarray(0, end < 0 ? max : end));
  }
}

/** Reads one built guest from `tests/guests/out/` (building them first if needed). */
export async function guest(name: string): Promise<Uint8Array> {
  const dir = await buildGuests();
  return await Deno.readFile(dir + name);
}

/** Path of a built guest. */
export async function guestPath(name: string): Promise<string> {
  return (await buildGuests()) + name;
}

/** A program header for {@link makeElf64}. */
export interface SynthSegment {
  type: number;
  vaddr: bigint;
  paddr: bigint;
  data: Uint8Array;
  memsz: number;
  align?: number;
}

/**
 * A minimal ELF64 x86-64 executable with the given segments (data laid out
 * after the program headers, 16-byte aligned) and entry point.
 */
export function makeElf64(entry: bigint, segs: SynthSegment[], phnum = segs.length): Uint8Array {
  const phoff = 64;
  let off = phoff + 56 * segs.length;
  const offsets: number[] = [];
  for (const s of segs) {
    off = Math.ceil(off / 16) * 16;
    offsets.push(off);
    off += s.data.length;
  }
  const out = new Uint8Array(off);
  const v = new DataView(out.buffer);
  out.set([0x7f, 0x45, 0x4c, 0x46, 2, 1, 1]);
  v.setUint16(16, 2, true); // ET_EXEC
  v.setUint16(18, 62, true); // EM_X86_64
  v.setUint32(20, 1, true);
  v.setBigUint64(24, entry, true);
  v.setBigUint64(32, BigInt(phoff), true);
  v.setUint16(52, 64, true);
  v.setUint16(54, 56, true);
  v.setUint16(56, phnum, true);
  segs.forEach((s, i) => {
    const b = phoff + i * 56;
    const o = offsets[i] ?? 0;
    v.setUint32(b, s.type, true);
    v.setUint32(b + 4, 7, true);
    v.setBigUint64(b + 8, BigInt(o), true);
    v.setBigUint64(b + 16, s.vaddr, true);
    v.setBigUint64(b + 24, s.paddr, true);
    v.setBigUint64(b + 32, BigInt(s.data.length), true);
    v.setBigUint64(b + 40, BigInt(s.memsz), true);
    v.setBigUint64(b + 48, BigInt(s.align ?? 0x1000), true);
    out.set(s.data, o);
  });
  return out;
}

/** One ELF note (`namesz`, `descsz`, `type`, name and desc padded to 4). */
export function elfNote(name: string, type: number, desc: Uint8Array): Uint8Array {
  const n = new TextEncoder().encode(name + "\0");
  const pad = (x: number) => Math.ceil(x / 4) * 4;
  const out = new Uint8Array(12 + pad(n.length) + pad(desc.length));
  const v = new DataView(out.buffer);
  v.setUint32(0, n.length, true);
  v.setUint32(4, desc.length, true);
  v.setUint32(8, type, true);
  out.set(n, 12);
  out.set(desc, 12 + pad(n.length));
  return out;
}

/** Concatenates byte arrays. */
export function concat(...parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let off = 0;
  for (const p of parts) {
    out.set(p, off);
    off += p.length;
  }
  return out;
}

/** Walks the 4-level page tables at `cr3`; returns the physical address of `va` or undefined. */
export function translate(mem: FakeMemory, cr3: number, va: number): number | undefined {
  const entry = (table: number, index: number) =>
    Number(mem.dv(table + index * 8, 8).getBigUint64(0, true));
  const pml4e = entry(cr3, Math.floor(va / 2 ** 39) % 512);
  if ((pml4e & 1) === 0) return undefined;
  const pdpte = entry(pml4e - (pml4e % 4096), Math.floor(va / 2 ** 30) % 512);
  if ((pdpte & 1) === 0) return undefined;
  const pde = entry(pdpte - (pdpte % 4096), Math.floor(va / 2 ** 21) % 512);
  if ((pde & 1) === 0 || (pde & 0x80) === 0) return undefined;
  return (pde - (pde % 2 ** 21)) + (va % 2 ** 21);
}

/** A PT_LOAD header as `readelf -lW` prints it. */
export interface ReadelfLoad {
  offset: number;
  vaddr: number;
  paddr: number;
  filesz: number;
  memsz: number;
}

/** Program headers and entry point of `path` according to binutils `readelf`. */
export async function readelf(path: string): Promise<{ entry: number; loads: ReadelfLoad[] }> {
  const out = await new Deno.Command("readelf", { args: ["-hlW", path], stdout: "piped" })
    .output();
  const text = new TextDecoder().decode(out.stdout);
  const entry = Number(/Entry point address:\s+(0x[0-9a-f]+)/.exec(text)?.[1]);
  const loads: ReadelfLoad[] = [];
  for (const m of text.matchAll(/^\s+LOAD\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)/gm)) {
    loads.push({
      offset: Number(m[1]),
      vaddr: Number(m[2]),
      paddr: Number(m[3]),
      filesz: Number(m[4]),
      memsz: Number(m[5]),
    });
  }
  return { entry, loads };
}

/** The value of symbol `name` according to binutils `nm`. */
export async function nmSymbol(path: string, name: string): Promise<number> {
  const out = await new Deno.Command("nm", { args: [path], stdout: "piped" }).output();
  const line = new TextDecoder().decode(out.stdout).split("\n").find((l) => l.endsWith(` ${name}`));
  if (line === undefined) throw new Error(`nm: no symbol ${name} in ${path}`);
  return parseInt(line.split(" ")[0] ?? "", 16);
}

export { prng } from "../prng.ts";
