/**
 * The Multiple APIC Description Table (ACPI 6.5 §5.2.12): one Processor
 * Local APIC per vCPU, the I/O APIC, the interrupt source overrides of a PC
 * and the LINT1 NMI of every local APIC.
 *
 * @module
 */

import { AcpiError } from "./errors.ts";
import { sdt } from "./sdt.ts";

/** MADT revision of ACPI 6.3 (with the Online Capable flag). */
export const MADT_REVISION = 5;
/** Where every local APIC's registers are (the architectural default). */
export const LOCAL_APIC_ADDR = 0xfee0_0000;
/** Where the I/O APIC's registers are (KVM's in-kernel IOAPIC default). */
export const IOAPIC_ADDR = 0xfec0_0000;
/** The I/O APIC's id (KVM's IOAPIC reset id; QEMU's MADT uses 0 too). */
export const IOAPIC_ID = 0;
/** Pins of KVM's in-kernel IOAPIC (GSIs 0..23). */
export const IOAPIC_PINS = 24;
/** MADT flag: a dual 8259 PIC is present too (KVM's irqchip has one). */
export const MADT_PCAT_COMPAT = 1;

/** Interrupt controller structure types (§5.2.12, Table 5.21). */
export const MADT_TYPE = {
  LOCAL_APIC: 0,
  IOAPIC: 1,
  INTERRUPT_SOURCE_OVERRIDE: 2,
  LOCAL_APIC_NMI: 4,
} as const;

/** Processor Local APIC flag: usable now. */
export const LAPIC_ENABLED = 1;
/** MPS INTI flags (§5.2.12.5): polarity and trigger "conform to the bus". */
export const INTI_CONFORMS = 0;
/** Processor UID meaning "all processors" in a Local APIC NMI structure. */
export const ALL_PROCESSORS = 0xff;

/** An ISA IRQ that reaches the I/O APIC on another pin. */
export interface SourceOverride {
  /** ISA IRQ. */
  readonly irq: number;
  /** The GSI it arrives on. */
  readonly gsi: number;
  /** MPS INTI flags (polarity bits 0-1, trigger mode bits 2-3). */
  readonly flags: number;
}

/**
 * The overrides of a PC: the PIT's IRQ 0 is wired to IOAPIC pin 2 (pin 0
 * carries the 8259's ExtINT). Every other ISA IRQ (COM1's 4, the i8042's 1,
 * the RTC's 8) is on its own pin, edge-triggered and active-high, the ISA
 * default, which needs no override. `vmm/acpi/irq_routing.ts` routes KVM's
 * GSIs the same way.
 */
export const PC_SOURCE_OVERRIDES: readonly SourceOverride[] = [
  { irq: 0, gsi: 2, flags: INTI_CONFORMS },
];

/** Builds the MADT for `vcpus` processors (APIC id = ACPI processor UID = vCPU index). */
export function buildMadt(
  vcpus: number,
  overrides: readonly SourceOverride[] = PC_SOURCE_OVERRIDES,
): Uint8Array {
  if (!Number.isInteger(vcpus) || vcpus < 1 || vcpus > 255) {
    throw new AcpiError(`MADT: ${vcpus} vCPUs; xAPIC ids allow 1..255`);
  }
  const entries: number[][] = [];
  for (let id = 0; id < vcpus; id++) {
    entries.push([MADT_TYPE.LOCAL_APIC, 8, id, id, ...le32(LAPIC_ENABLED)]);
  }
  entries.push([MADT_TYPE.IOAPIC, 12, IOAPIC_ID, 0, ...le32(IOAPIC_ADDR), ...le32(0)]);
  for (const o of overrides) {
    if (o.gsi >= IOAPIC_PINS) throw new AcpiError(`MADT: override GSI ${o.gsi} has no IOAPIC pin`);
    entries.push([
      MADT_TYPE.INTERRUPT_SOURCE_OVERRIDE,
      10,
      0, // bus: ISA
      o.irq,
      ...le32(o.gsi),
      o.flags & 0xff,
      o.flags >> 8,
    ]);
  }
  entries.push([MADT_TYPE.LOCAL_APIC_NMI, 6, ALL_PROCESSORS, INTI_CONFORMS, 0, 1]); // LINT1
  const body = Uint8Array.from([
    ...le32(LOCAL_APIC_ADDR),
    ...le32(MADT_PCAT_COMPAT),
    ...entries.flat(),
  ]);
  return sdt("APIC", MADT_REVISION, body);
}

function le32(v: number): number[] {
  return [v & 0xff, (v >>> 8) & 0xff, (v >>> 16) & 0xff, v >>> 24];
}
