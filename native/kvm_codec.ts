/**
 * Encoders and decoders between KVM's C structs and the plain objects of
 * `kvm_types.ts`: `struct kvm_regs`, `struct kvm_sregs`, `struct
 * kvm_cpuid2` entries and `struct kvm_msrs`. Offsets are the kernel's x86-64
 * layout (checked by `_Static_assert`s in `vmkit_shim.c`), little-endian.
 *
 * @module
 */

import type { CpuidEntry, DTable, IrqRoute, MsrEntry, Regs, Segment, Sregs } from "./kvm_types.ts";

/** Size of `struct kvm_regs`. */
export const REGS_SIZE = 144;
/** Size of `struct kvm_sregs`. */
export const SREGS_SIZE = 312;
/** Size of `struct kvm_segment`. */
const SEGMENT_SIZE = 24;
/** Order of the 64-bit fields of `struct kvm_regs`. */
const REG_NAMES = [
  "rax",
  "rbx",
  "rcx",
  "rdx",
  "rsi",
  "rdi",
  "rsp",
  "rbp",
  "r8",
  "r9",
  "r10",
  "r11",
  "r12",
  "r13",
  "r14",
  "r15",
  "rip",
  "rflags",
] as const satisfies readonly (keyof Regs)[];

/** Order of the segments at the start of `struct kvm_sregs`. */
const SEGMENT_NAMES = ["cs", "ds", "es", "fs", "gs", "ss", "tr", "ldt"] as const;
/** Offsets inside `struct kvm_segment`. */
const SEG_BASE = 0;
const SEG_LIMIT = 8;
const SEG_SELECTOR = 12;
const SEG_TYPE = 14;
const SEG_PRESENT = 15;
const SEG_DPL = 16;
const SEG_DB = 17;
const SEG_S = 18;
const SEG_L = 19;
const SEG_G = 20;
const SEG_AVL = 21;
const SEG_UNUSABLE = 22;
/** Offsets inside `struct kvm_sregs`. */
const SREGS_GDT = 192;
const SREGS_IDT = 208;
const SREGS_CR0 = 224;
const SREGS_CR2 = 232;
const SREGS_CR3 = 240;
const SREGS_CR4 = 248;
const SREGS_CR8 = 256;
const SREGS_EFER = 264;
const SREGS_APIC_BASE = 272;
const SREGS_BITMAP = 280;

/** Size of `struct kvm_cpuid2`'s header and of one `struct kvm_cpuid_entry2`. */
export const CPUID2_HEADER = 8;
/** Size of one `struct kvm_cpuid_entry2`. */
export const CPUID_ENTRY_SIZE = 40;
/** Size of `struct kvm_msrs`'s header and of one `struct kvm_msr_entry`. */
export const MSRS_HEADER = 8;
/** Size of one `struct kvm_msr_entry`. */
export const MSR_ENTRY_SIZE = 16;
/** Size of `struct kvm_irq_routing`'s header (`nr`, `flags`). */
export const IRQ_ROUTING_HEADER = 8;
/** Size of one `struct kvm_irq_routing_entry` (gsi, type, flags, pad, 32-byte union). */
export const IRQ_ROUTING_ENTRY_SIZE = 48;
/** `KVM_IRQ_ROUTING_IRQCHIP`. */
const KVM_IRQ_ROUTING_IRQCHIP = 1;

function view(bytes: Uint8Array): DataView {
  return new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

/** Decodes `struct kvm_regs`. */
export function decodeRegs(bytes: Uint8Array): Regs {
  const dv = view(bytes);
  const r: Record<string, bigint> = {};
  REG_NAMES.forEach((name, i) => r[name] = dv.getBigUint64(i * 8, true));
  return r as unknown as Regs;
}

/** Encodes `struct kvm_regs`. */
export function encodeRegs(regs: Regs): Uint8Array<ArrayBuffer> {
  const out = new Uint8Array(REGS_SIZE);
  const dv = view(out);
  REG_NAMES.forEach((name, i) => dv.setBigUint64(i * 8, BigInt.asUintN(64, regs[name]), true));
  return out;
}

function decodeSegment(dv: DataView, o: number): Segment {
  return {
    base: dv.getBigUint64(o + SEG_BASE, true),
    limit: dv.getUint32(o + SEG_LIMIT, true),
    selector: dv.getUint16(o + SEG_SELECTOR, true),
    type: dv.getUint8(o + SEG_TYPE),
    present: dv.getUint8(o + SEG_PRESENT),
    dpl: dv.getUint8(o + SEG_DPL),
    db: dv.getUint8(o + SEG_DB),
    s: dv.getUint8(o + SEG_S),
    l: dv.getUint8(o + SEG_L),
    g: dv.getUint8(o + SEG_G),
    avl: dv.getUint8(o + SEG_AVL),
    unusable: dv.getUint8(o + SEG_UNUSABLE),
  };
}

function encodeSegment(dv: DataView, o: number, s: Segment): void {
  dv.setBigUint64(o + SEG_BASE, BigInt.asUintN(64, s.base), true);
  dv.setUint32(o + SEG_LIMIT, s.limit >>> 0, true);
  dv.setUint16(o + SEG_SELECTOR, s.selector, true);
  dv.setUint8(o + SEG_TYPE, s.type);
  dv.setUint8(o + SEG_PRESENT, s.present);
  dv.setUint8(o + SEG_DPL, s.dpl);
  dv.setUint8(o + SEG_DB, s.db);
  dv.setUint8(o + SEG_S, s.s);
  dv.setUint8(o + SEG_L, s.l);
  dv.setUint8(o + SEG_G, s.g);
  dv.setUint8(o + SEG_AVL, s.avl);
  dv.setUint8(o + SEG_UNUSABLE, s.unusable);
}

function decodeDTable(dv: DataView, o: number): DTable {
  return { base: dv.getBigUint64(o, true), limit: dv.getUint16(o + 8, true) };
}

/** Decodes `struct kvm_sregs`. */
export function decodeSregs(bytes: Uint8Array): Sregs {
  const dv = view(bytes);
  const seg = (i: number): Segment => decodeSegment(dv, i * SEGMENT_SIZE);
  return {
    cs: seg(0),
    ds: seg(1),
    es: seg(2),
    fs: seg(3),
    gs: seg(4),
    ss: seg(5),
    tr: seg(6),
    ldt: seg(7),
    gdt: decodeDTable(dv, SREGS_GDT),
    idt: decodeDTable(dv, SREGS_IDT),
    cr0: dv.getBigUint64(SREGS_CR0, true),
    cr2: dv.getBigUint64(SREGS_CR2, true),
    cr3: dv.getBigUint64(SREGS_CR3, true),
    cr4: dv.getBigUint64(SREGS_CR4, true),
    cr8: dv.getBigUint64(SREGS_CR8, true),
    efer: dv.getBigUint64(SREGS_EFER, true),
    apic_base: dv.getBigUint64(SREGS_APIC_BASE, true),
    interrupt_bitmap: [
      dv.getBigUint64(SREGS_BITMAP, true),
      dv.getBigUint64(SREGS_BITMAP + 8, true),
      dv.getBigUint64(SREGS_BITMAP + 16, true),
      dv.getBigUint64(SREGS_BITMAP + 24, true),
    ],
  };
}

/** Encodes `struct kvm_sregs`. */
export function encodeSregs(s: Sregs): Uint8Array<ArrayBuffer> {
  const out = new Uint8Array(SREGS_SIZE);
  const dv = view(out);
  SEGMENT_NAMES.forEach((name, i) => encodeSegment(dv, i * SEGMENT_SIZE, s[name]));
  dv.setBigUint64(SREGS_GDT, BigInt.asUintN(64, s.gdt.base), true);
  dv.setUint16(SREGS_GDT + 8, s.gdt.limit, true);
  dv.setBigUint64(SREGS_IDT, BigInt.asUintN(64, s.idt.base), true);
  dv.setUint16(SREGS_IDT + 8, s.idt.limit, true);
  dv.setBigUint64(SREGS_CR0, BigInt.asUintN(64, s.cr0), true);
  dv.setBigUint64(SREGS_CR2, BigInt.asUintN(64, s.cr2), true);
  dv.setBigUint64(SREGS_CR3, BigInt.asUintN(64, s.cr3), true);
  dv.setBigUint64(SREGS_CR4, BigInt.asUintN(64, s.cr4), true);
  dv.setBigUint64(SREGS_CR8, BigInt.asUintN(64, s.cr8), true);
  dv.setBigUint64(SREGS_EFER, BigInt.asUintN(64, s.efer), true);
  dv.setBigUint64(SREGS_APIC_BASE, BigInt.asUintN(64, s.apic_base), true);
  s.interrupt_bitmap.forEach((w, i) =>
    dv.setBigUint64(SREGS_BITMAP + i * 8, BigInt.asUintN(64, w), true)
  );
  return out;
}

/** Decodes `nent` entries of a `struct kvm_cpuid2` buffer. */
export function decodeCpuid(bytes: Uint8Array, nent: number): CpuidEntry[] {
  const dv = view(bytes);
  const out: CpuidEntry[] = [];
  for (let i = 0; i < nent; i++) {
    const o = CPUID2_HEADER + i * CPUID_ENTRY_SIZE;
    out.push({
      function: dv.getUint32(o, true),
      index: dv.getUint32(o + 4, true),
      flags: dv.getUint32(o + 8, true),
      eax: dv.getUint32(o + 12, true),
      ebx: dv.getUint32(o + 16, true),
      ecx: dv.getUint32(o + 20, true),
      edx: dv.getUint32(o + 24, true),
    });
  }
  return out;
}

/** Encodes entries as a `struct kvm_cpuid2` buffer. */
export function encodeCpuid(entries: readonly CpuidEntry[]): Uint8Array<ArrayBuffer> {
  const out = new Uint8Array(CPUID2_HEADER + entries.length * CPUID_ENTRY_SIZE);
  const dv = view(out);
  dv.setUint32(0, entries.length, true);
  entries.forEach((e, i) => {
    const o = CPUID2_HEADER + i * CPUID_ENTRY_SIZE;
    dv.setUint32(o, e.function >>> 0, true);
    dv.setUint32(o + 4, e.index >>> 0, true);
    dv.setUint32(o + 8, e.flags >>> 0, true);
    dv.setUint32(o + 12, e.eax >>> 0, true);
    dv.setUint32(o + 16, e.ebx >>> 0, true);
    dv.setUint32(o + 20, e.ecx >>> 0, true);
    dv.setUint32(o + 24, e.edx >>> 0, true);
  });
  return out;
}

/** Encodes MSR entries as a `struct kvm_msrs` buffer. */
export function encodeMsrs(entries: readonly MsrEntry[]): Uint8Array<ArrayBuffer> {
  const out = new Uint8Array(MSRS_HEADER + entries.length * MSR_ENTRY_SIZE);
  const dv = view(out);
  dv.setUint32(0, entries.length, true);
  entries.forEach((e, i) => {
    const o = MSRS_HEADER + i * MSR_ENTRY_SIZE;
    dv.setUint32(o, e.index >>> 0, true);
    dv.setBigUint64(o + 8, BigInt.asUintN(64, e.value), true);
  });
  return out;
}

/** Decodes a `struct kvm_msrs` buffer (its `nmsrs` entries, bounded by the buffer length). */
export function decodeMsrs(bytes: Uint8Array): MsrEntry[] {
  if (bytes.byteLength < MSRS_HEADER) return [];
  const dv = view(bytes);
  const max = Math.floor((bytes.byteLength - MSRS_HEADER) / MSR_ENTRY_SIZE);
  const n = Math.min(dv.getUint32(0, true), max);
  const out: MsrEntry[] = [];
  for (let i = 0; i < n; i++) {
    const o = MSRS_HEADER + i * MSR_ENTRY_SIZE;
    out.push({ index: dv.getUint32(o, true), value: dv.getBigUint64(o + 8, true) });
  }
  return out;
}

/** Encodes irqchip routes as a `struct kvm_irq_routing` buffer for `KVM_SET_GSI_ROUTING`. */
export function encodeIrqRouting(routes: readonly IrqRoute[]): Uint8Array<ArrayBuffer> {
  const out = new Uint8Array(IRQ_ROUTING_HEADER + routes.length * IRQ_ROUTING_ENTRY_SIZE);
  const dv = view(out);
  dv.setUint32(0, routes.length, true);
  routes.forEach((r, i) => {
    const o = IRQ_ROUTING_HEADER + i * IRQ_ROUTING_ENTRY_SIZE;
    dv.setUint32(o, r.gsi >>> 0, true);
    dv.setUint32(o + 4, KVM_IRQ_ROUTING_IRQCHIP, true);
    dv.setUint32(o + 16, r.chip, true); // u.irqchip.irqchip
    dv.setUint32(o + 20, r.pin >>> 0, true); // u.irqchip.pin
  });
  return out;
}
