/**
 * Plain-data shapes of KVM's vCPU register structs (`struct kvm_regs`,
 * `struct kvm_sregs`), shared by the bindings (`kvm.ts`) and the boot loaders.
 * Field names follow `<linux/kvm.h>`; 64-bit fields are `bigint`.
 *
 * @module
 */

/** `struct kvm_regs`: general-purpose registers, rip and rflags. */
export interface Regs {
  rax: bigint;
  rbx: bigint;
  rcx: bigint;
  rdx: bigint;
  rsi: bigint;
  rdi: bigint;
  rsp: bigint;
  rbp: bigint;
  r8: bigint;
  r9: bigint;
  r10: bigint;
  r11: bigint;
  r12: bigint;
  r13: bigint;
  r14: bigint;
  r15: bigint;
  rip: bigint;
  rflags: bigint;
}

/** `struct kvm_segment`. */
export interface Segment {
  base: bigint;
  limit: number;
  selector: number;
  type: number;
  present: number;
  dpl: number;
  db: number;
  s: number;
  l: number;
  g: number;
  avl: number;
  unusable: number;
}

/** `struct kvm_dtable` (GDT/IDT base and limit). */
export interface DTable {
  base: bigint;
  limit: number;
}

/** `struct kvm_sregs`: segment, control and descriptor-table registers. */
export interface Sregs {
  cs: Segment;
  ds: Segment;
  es: Segment;
  fs: Segment;
  gs: Segment;
  ss: Segment;
  tr: Segment;
  ldt: Segment;
  gdt: DTable;
  idt: DTable;
  cr0: bigint;
  cr2: bigint;
  cr3: bigint;
  cr4: bigint;
  cr8: bigint;
  efer: bigint;
  apic_base: bigint;
  /** `interrupt_bitmap[4]` as 4 × 64-bit words. */
  interrupt_bitmap: [bigint, bigint, bigint, bigint];
}

/** `struct kvm_cpuid_entry2`: one CPUID leaf/subleaf as KVM reports or takes it. */
export interface CpuidEntry {
  /** Leaf (EAX input). */
  function: number;
  /** Subleaf (ECX input) when `flags` has KVM_CPUID_FLAG_SIGNIFCANT_INDEX. */
  index: number;
  /** `KVM_CPUID_FLAG_*` bits. */
  flags: number;
  eax: number;
  ebx: number;
  ecx: number;
  edx: number;
}

/** `struct kvm_msr_entry`: one model-specific register. */
export interface MsrEntry {
  /** MSR number. */
  index: number;
  /** Its 64-bit value. */
  value: bigint;
}
