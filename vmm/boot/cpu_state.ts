/**
 * The boot vCPU's starting state: the GDT written to guest memory, the
 * matching segment registers, the long-mode identity map and control bits.
 * Descriptors are described once ({@link DESCRIPTORS}) and both encoded into
 * the GDT and turned into `kvm_segment`s, so the two cannot disagree.
 *
 * @module
 */

import type { GuestMemory } from "../guest_memory.ts";
import type { Segment, Sregs } from "../../native/kvm_types.ts";
import { guestView } from "./guest_access.ts";
import { GDT_ADDR, IDENTITY_MAP_GIB, PAGE_SIZE, PD_ADDR, PDPT_ADDR, PML4_ADDR } from "./layout.ts";

/** CR0.PE: protected mode. */
export const CR0_PE = 0x1n;
/** CR0.ET: extension type (always 1 on modern CPUs). */
export const CR0_ET = 0x10n;
/** CR0.PG: paging. */
export const CR0_PG = 0x8000_0000n;
/** CR4.PAE: physical address extension (required for long mode). */
export const CR4_PAE = 0x20n;
/** EFER.LME: long mode enable. */
export const EFER_LME = 0x100n;
/** EFER.LMA: long mode active. */
export const EFER_LMA = 0x400n;
/** RFLAGS with only the always-one bit 1 set (interrupts off). */
export const RFLAGS_BOOT = 0x2n;

/** One flat descriptor: `type`/`s`/`l`/`db`/`g` as in `kvm_segment`. */
interface Descriptor {
  readonly selector: number;
  readonly type: number;
  readonly s: number;
  readonly l: number;
  readonly db: number;
  readonly g: number;
  readonly limit: number;
}

/** Selector of the flat 32-bit code segment (PVH). */
export const SEL_CODE32 = 0x08;
/** Selector of the 64-bit code segment (`__BOOT_CS` of the Linux boot protocol). */
export const SEL_CODE64 = 0x10;
/** Selector of the flat data segment (`__BOOT_DS`). */
export const SEL_DATA = 0x18;
/** Selector of the task state segment. */
export const SEL_TSS = 0x20;

/** The GDT's descriptors, by selector (index = selector / 8; 0 is the null descriptor). */
export const DESCRIPTORS: readonly Descriptor[] = [
  { selector: SEL_CODE32, type: 0xb, s: 1, l: 0, db: 1, g: 1, limit: 0xf_ffff },
  { selector: SEL_CODE64, type: 0xb, s: 1, l: 1, db: 0, g: 1, limit: 0xf_ffff },
  { selector: SEL_DATA, type: 0x3, s: 1, l: 0, db: 1, g: 1, limit: 0xf_ffff },
  { selector: SEL_TSS, type: 0xb, s: 0, l: 0, db: 0, g: 0, limit: 0x67 },
];

/** Bytes of the GDT (null descriptor + {@link DESCRIPTORS}). */
export const GDT_SIZE: number = 8 * (DESCRIPTORS.length + 1);

/** Encodes a base-0 descriptor: limit 15:0, access byte at bit 40, flags at 52, limit 19:16. */
export function encodeDescriptor(d: Descriptor): bigint {
  const access = BigInt(d.type | (d.s << 4) | (1 << 7)); // DPL 0, present
  const flags = BigInt((d.l << 1) | (d.db << 2) | (d.g << 3));
  const limit = BigInt(d.limit);
  return (limit & 0xffffn) | (access << 40n) | (((limit >> 16n) & 0xfn) << 48n) | (flags << 52n);
}

function descriptor(selector: number): Descriptor {
  const d = DESCRIPTORS.find((x) => x.selector === selector);
  if (d === undefined) throw new RangeError(`no GDT descriptor for selector ${selector}`);
  return d;
}

/** The `kvm_segment` a CPU holds after loading `selector` from the boot GDT. */
export function segmentFor(selector: number): Segment {
  const d = descriptor(selector);
  return {
    base: 0n,
    // KVM takes the byte-granular limit.
    limit: d.g === 1 ? d.limit * PAGE_SIZE + 0xfff : d.limit,
    selector,
    type: d.type,
    present: 1,
    dpl: 0,
    db: d.db,
    s: d.s,
    l: d.l,
    g: d.g,
    avl: 0,
    unusable: 0,
  };
}

/** Writes the boot GDT at {@link GDT_ADDR}. */
export function writeGdt(memory: GuestMemory): void {
  const view = guestView(memory, GDT_ADDR, GDT_SIZE, "the boot GDT");
  view.setBigUint64(0, 0n, true);
  for (const d of DESCRIPTORS) view.setBigUint64(d.selector, encodeDescriptor(d), true);
}

/** Page-table entry bits: present, writable, and (in a PD) a 2 MiB page. */
const PTE_PRESENT = 0x1n;
const PTE_WRITABLE = 0x2n;
const PTE_HUGE = 0x80n;
const ENTRIES = 512;
const TWO_MIB = 0x20_0000n;

/**
 * Writes an identity map of the first {@link IDENTITY_MAP_GIB} GiB with 2 MiB
 * pages (so the LAPIC and IOAPIC MMIO are mapped too) at {@link PML4_ADDR}.
 */
export function writeIdentityMap(memory: GuestMemory): void {
  const pml4 = guestView(memory, PML4_ADDR, PAGE_SIZE, "the PML4");
  const pdpt = guestView(memory, PDPT_ADDR, PAGE_SIZE, "the PDPT");
  new Uint8Array(pml4.buffer, pml4.byteOffset, PAGE_SIZE).fill(0);
  new Uint8Array(pdpt.buffer, pdpt.byteOffset, PAGE_SIZE).fill(0);
  pml4.setBigUint64(0, BigInt(PDPT_ADDR) | PTE_PRESENT | PTE_WRITABLE, true);
  for (let g = 0; g < IDENTITY_MAP_GIB; g++) {
    const pdAddr = PD_ADDR + g * PAGE_SIZE;
    pdpt.setBigUint64(g * 8, BigInt(pdAddr) | PTE_PRESENT | PTE_WRITABLE, true);
    const pd = guestView(memory, pdAddr, PAGE_SIZE, "a page directory");
    for (let i = 0; i < ENTRIES; i++) {
      const phys = (BigInt(g * ENTRIES + i)) * TWO_MIB;
      pd.setBigUint64(i * 8, phys | PTE_PRESENT | PTE_WRITABLE | PTE_HUGE, true);
    }
  }
}

/** Sregs for 64-bit long mode with the identity map and boot GDT (Linux 64-bit protocol). */
export function longModeSregs(): Partial<Sregs> {
  const data = segmentFor(SEL_DATA);
  return {
    cs: segmentFor(SEL_CODE64),
    ds: data,
    es: { ...data },
    fs: { ...data },
    gs: { ...data },
    ss: { ...data },
    tr: segmentFor(SEL_TSS),
    gdt: { base: BigInt(GDT_ADDR), limit: GDT_SIZE - 1 },
    cr0: CR0_PE | CR0_ET | CR0_PG,
    cr3: BigInt(PML4_ADDR),
    cr4: CR4_PAE,
    efer: EFER_LME | EFER_LMA,
  };
}

/** Sregs for 32-bit protected mode, paging off, flat 4 GiB segments (PVH). */
export function protectedModeSregs(): Partial<Sregs> {
  const data = segmentFor(SEL_DATA);
  return {
    cs: segmentFor(SEL_CODE32),
    ds: data,
    es: { ...data },
    fs: { ...data },
    gs: { ...data },
    ss: { ...data },
    tr: segmentFor(SEL_TSS),
    gdt: { base: BigInt(GDT_ADDR), limit: GDT_SIZE - 1 },
    cr0: CR0_PE | CR0_ET,
    cr3: 0n,
    cr4: 0n,
    efer: 0n,
  };
}
