/**
 * Plain-data shapes of KVM's vCPU register structs (`struct kvm_regs`,
 * `struct kvm_sregs`), shared by the bindings (`kvm.ts`) and the boot loaders.
 * Field names follow `<linux/kvm.h>`; 64-bit fields are `bigint`.
 *
 * @module
 */

/** `struct kvm_regs`: general-purpose registers, rip and rflags. */
export interface Regs {
  /** General-purpose register RAX. */
  rax: bigint;
  /** General-purpose register RBX. */
  rbx: bigint;
  /** General-purpose register RCX. */
  rcx: bigint;
  /** General-purpose register RDX. */
  rdx: bigint;
  /** General-purpose register RSI. */
  rsi: bigint;
  /** General-purpose register RDI. */
  rdi: bigint;
  /** General-purpose register RSP. */
  rsp: bigint;
  /** General-purpose register RBP. */
  rbp: bigint;
  /** General-purpose register R8. */
  r8: bigint;
  /** General-purpose register R9. */
  r9: bigint;
  /** General-purpose register R10. */
  r10: bigint;
  /** General-purpose register R11. */
  r11: bigint;
  /** General-purpose register R12. */
  r12: bigint;
  /** General-purpose register R13. */
  r13: bigint;
  /** General-purpose register R14. */
  r14: bigint;
  /** General-purpose register R15. */
  r15: bigint;
  /** Instruction pointer. */
  rip: bigint;
  /** Flags register. */
  rflags: bigint;
}

/** `struct kvm_segment`. */
export interface Segment {
  /** Segment base address. */
  base: bigint;
  /** Segment limit (bytes, as KVM expands it). */
  limit: number;
  /** Selector loaded in the register. */
  selector: number;
  /** Descriptor type field (4 bits). */
  type: number;
  /** P: the segment is present. */
  present: number;
  /** Descriptor privilege level (0-3). */
  dpl: number;
  /** D/B: default operand size 32 bits. */
  db: number;
  /** S: code or data segment (not a system one). */
  s: number;
  /** L: 64-bit code segment. */
  l: number;
  /** G: limit in 4 KiB units. */
  g: number;
  /** AVL: available to software. */
  avl: number;
  /** KVM's flag for a null or unusable segment. */
  unusable: number;
}

/** `struct kvm_dtable` (GDT/IDT base and limit). */
export interface DTable {
  /** Table base address. */
  base: bigint;
  /** Table limit (size in bytes minus one). */
  limit: number;
}

/** `struct kvm_sregs`: segment, control and descriptor-table registers. */
export interface Sregs {
  /** The CS segment register. */
  cs: Segment;
  /** The DS segment register. */
  ds: Segment;
  /** The ES segment register. */
  es: Segment;
  /** The FS segment register. */
  fs: Segment;
  /** The GS segment register. */
  gs: Segment;
  /** The SS segment register. */
  ss: Segment;
  /** The task register. */
  tr: Segment;
  /** The local descriptor table register. */
  ldt: Segment;
  /** The global descriptor table register. */
  gdt: DTable;
  /** The interrupt descriptor table register. */
  idt: DTable;
  /** Control register CR0. */
  cr0: bigint;
  /** Control register CR2. */
  cr2: bigint;
  /** Control register CR3. */
  cr3: bigint;
  /** Control register CR4. */
  cr4: bigint;
  /** Control register CR8. */
  cr8: bigint;
  /** The EFER MSR (long mode, NX, ...). */
  efer: bigint;
  /** The IA32_APIC_BASE MSR. */
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
  /** EAX output of the leaf. */
  eax: number;
  /** EBX output of the leaf. */
  ebx: number;
  /** ECX output of the leaf. */
  ecx: number;
  /** EDX output of the leaf. */
  edx: number;
}

/**
 * One route of `KVM_SET_GSI_ROUTING` to an in-kernel interrupt controller pin
 * (`struct kvm_irq_routing_entry` of type `KVM_IRQ_ROUTING_IRQCHIP`).
 */
export interface IrqRoute {
  /** The GSI a device, `KVM_IRQ_LINE`, an irqfd or the in-kernel PIT signals. */
  gsi: number;
  /** The irqchip: 0 PIC master, 1 PIC slave, 2 IOAPIC (`KVM_IRQCHIP_*`). */
  chip: 0 | 1 | 2;
  /** The pin of that chip the GSI drives. */
  pin: number;
}

/** `struct kvm_msr_entry`: one model-specific register. */
export interface MsrEntry {
  /** MSR number. */
  index: number;
  /** Its 64-bit value. */
  value: bigint;
}
