/**
 * ACPI resource descriptors (ACPI 6.5 §6.4) for `_CRS`: the I/O port, IRQ,
 * fixed 32-bit memory and extended interrupt descriptors, and the resource
 * template (a Buffer ending in an End Tag) that carries them.
 *
 * @module
 */

import { buffer, concat } from "./aml.ts";
import { AcpiError } from "./errors.ts";

// Small descriptors: tag = item name << 3 | length (§6.4.2).
const SMALL_IRQ = 0x04 << 3 | 2; // IRQ descriptor, no information byte
const SMALL_IO = 0x08 << 3 | 7; // I/O port descriptor
const SMALL_END = 0x0f << 3 | 1; // End Tag
// Large descriptors: tag = 0x80 | item name, then a 16-bit length (§6.4.3).
const LARGE_MEMORY32_FIXED = 0x86;
const LARGE_EXTENDED_IRQ = 0x89;

/** I/O descriptor information bit 0: the device decodes all 16 address bits. */
const IO_DECODE_16 = 0x01;
/** Memory32Fixed information bit 0: writable. */
const MEM_READ_WRITE = 0x01;
/** Extended interrupt flags (§6.4.3.6). */
const IRQ_CONSUMER = 0x01;
const IRQ_EDGE = 0x02;
const IRQ_ACTIVE_LOW = 0x04;
const IRQ_SHARED = 0x08;

function u16(v: number, what: string): [number, number] {
  if (!Number.isInteger(v) || v < 0 || v > 0xffff) {
    throw new AcpiError(`${what} ${v} is outside 0..0xffff`);
  }
  return [v & 0xff, v >> 8];
}

function u32le(v: number, what: string): number[] {
  if (!Number.isInteger(v) || v < 0 || v > 0xffff_ffff) {
    throw new AcpiError(`${what} ${v} is outside 0..0xffffffff`);
  }
  return [v & 0xff, (v >>> 8) & 0xff, (v >>> 16) & 0xff, v >>> 24];
}

/**
 * ASL `IO(Decode16, base, base, 1, length)`: a fixed range of `length` ports
 * at `base` (§6.4.2.5).
 */
export function ioPort(base: number, length: number): Uint8Array {
  if (!Number.isInteger(length) || length < 1 || length > 0xff) {
    throw new AcpiError(`I/O port range length ${length} is outside 1..255`);
  }
  const b = u16(base, "I/O port base");
  u16(base + length - 1, "I/O port range end");
  return Uint8Array.of(SMALL_IO, IO_DECODE_16, ...b, ...b, 1, length);
}

/** ASL `IRQNoFlags() { irqs }`: ISA IRQs 0-15, edge-triggered, active-high (§6.4.2.1). */
export function irqNoFlags(...irqs: readonly number[]): Uint8Array {
  let mask = 0;
  for (const irq of irqs) {
    if (!Number.isInteger(irq) || irq < 0 || irq > 15) {
      throw new AcpiError(`ISA IRQ ${irq} is outside 0..15`);
    }
    mask |= 1 << irq;
  }
  return Uint8Array.of(SMALL_IRQ, mask & 0xff, mask >> 8);
}

/** ASL `Memory32Fixed(ReadWrite, base, length)` (§6.4.3.4). */
export function memory32Fixed(base: number, length: number): Uint8Array {
  if (base + length > 0x1_0000_0000) {
    throw new AcpiError(
      `memory range [0x${base.toString(16)}, +0x${length.toString(16)}) ends above 4 GiB`,
    );
  }
  return Uint8Array.of(
    LARGE_MEMORY32_FIXED,
    9,
    0,
    MEM_READ_WRITE,
    ...u32le(base, "memory base"),
    ...u32le(length, "memory length"),
  );
}

/** How an interrupt is signalled. */
export interface InterruptMode {
  /** Edge-triggered (true) or level-triggered. */
  readonly edge: boolean;
  /** Active-low (true) or active-high. */
  readonly activeLow: boolean;
  /** Shared with other devices (true) or exclusive. */
  readonly shared: boolean;
}

/** Edge-triggered, active-high, exclusive: an irqfd-driven IOAPIC pin. */
export const EDGE_HIGH_EXCLUSIVE: InterruptMode = { edge: true, activeLow: false, shared: false };

/**
 * ASL `Interrupt(ResourceConsumer, Edge|Level, ActiveHigh|ActiveLow,
 * Exclusive|Shared) { gsis }` (§6.4.3.6, the Extended Interrupt Descriptor).
 */
export function interrupt(mode: InterruptMode, ...gsis: readonly number[]): Uint8Array {
  if (gsis.length < 1 || gsis.length > 255) {
    throw new AcpiError(`an interrupt descriptor holds 1..255 interrupts, not ${gsis.length}`);
  }
  const flags = IRQ_CONSUMER | (mode.edge ? IRQ_EDGE : 0) | (mode.activeLow ? IRQ_ACTIVE_LOW : 0) |
    (mode.shared ? IRQ_SHARED : 0);
  const length = 2 + 4 * gsis.length;
  return Uint8Array.of(
    LARGE_EXTENDED_IRQ,
    ...u16(length, "interrupt descriptor length"),
    flags,
    gsis.length,
    ...gsis.flatMap((g) => u32le(g, "interrupt number")),
  );
}

/**
 * ASL `ResourceTemplate() { descriptors }`: a Buffer of the descriptors and
 * an End Tag whose checksum byte is 0 ("treated as if the checksum operation
 * succeeded", §6.4.2.9), as iasl writes it.
 */
export function resourceTemplate(...descriptors: readonly Uint8Array[]): Uint8Array {
  return buffer(concat(...descriptors, Uint8Array.of(SMALL_END, 0)));
}
