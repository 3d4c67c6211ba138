/**
 * KVM's GSI routing for a PC, matching the MADT: every ISA IRQ reaches its
 * 8259 pin and the IOAPIC pin the MADT's overrides name (IRQ 0, the PIT, on
 * pin 2), and sources 16-23 reach IOAPIC pins 16-23. KVM's default routing
 * sends source 0 to IOAPIC pin 0, which would make the MADT's IRQ0→GSI2
 * untrue; the machine installs these routes instead (as QEMU does).
 *
 * @module
 */

import type { IrqRoute } from "../../native/kvm_types.ts";
import { IOAPIC_PINS, PC_SOURCE_OVERRIDES, type SourceOverride } from "./madt.ts";

const PIC_MASTER = 0;
const PIC_SLAVE = 1;
const IOAPIC = 2;
/** The master 8259's input the slave cascades into: no device source drives it. */
const PIC_CASCADE_PIN = 2;

/**
 * The routes for `overrides` (default {@link PC_SOURCE_OVERRIDES}): for each
 * interrupt source (the number a device, `KVM_IRQ_LINE`, an irqfd or the
 * in-kernel PIT signals), its 8259 pin when it is an ISA IRQ other than the
 * cascade, and its IOAPIC pin: the override's GSI, else its own number unless
 * an override took that pin. With the PC overrides, source 2 reaches nothing.
 */
export function pcIrqRoutes(
  overrides: readonly SourceOverride[] = PC_SOURCE_OVERRIDES,
): IrqRoute[] {
  const pinOf = new Map(overrides.map((o) => [o.irq, o.gsi]));
  const taken = new Set(overrides.map((o) => o.gsi));
  const routes: IrqRoute[] = [];
  for (let source = 0; source < IOAPIC_PINS; source++) {
    if (source < 16 && source !== PIC_CASCADE_PIN) {
      routes.push({ gsi: source, chip: source < 8 ? PIC_MASTER : PIC_SLAVE, pin: source % 8 });
    }
    const pin = pinOf.get(source) ?? (taken.has(source) ? undefined : source);
    if (pin !== undefined) routes.push({ gsi: source, chip: IOAPIC, pin });
  }
  return routes;
}
