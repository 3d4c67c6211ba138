/**
 * Hands out MMIO windows and interrupt lines (GSIs) to the machine's I/O
 * devices, in Firecracker's x86 layout: 4 KiB windows from 0xd000_0000 (in
 * the 32-bit MMIO gap, below the IOAPIC and LAPIC) and GSIs from 5 up to the
 * IOAPIC's last pin, 23, skipping lines the legacy devices use. The list of
 * slots is what the ACPI tables and the kernel command line announce.
 *
 * @module
 */

/** One device's MMIO window and interrupt line. */
export interface MmioSlot {
  /** Device name. */
  readonly name: string;
  /** Guest-physical base of the window. */
  readonly base: number;
  /** Bytes of the window. */
  readonly size: number;
  /** Interrupt line (GSI; an IOAPIC pin, edge-triggered). */
  readonly gsi: number;
}

/** First MMIO window address. */
export const MMIO_DEVICES_BASE = 0xd000_0000;
/** End (exclusive) of the MMIO device area (the IOAPIC is at 0xfec0_0000). */
export const MMIO_DEVICES_END = 0xfe00_0000;
/** First GSI handed out. */
export const FIRST_DEVICE_GSI = 5;
/** Last GSI handed out (IOAPIC pin 23). */
export const LAST_DEVICE_GSI = 23;
/** Default window size. */
export const MMIO_SLOT_SIZE = 0x1000;
/** GSIs the legacy devices use, never handed out by default: the RTC's 8, the PS/2 mouse's 12. */
export const LEGACY_GSIS: readonly number[] = [8, 12];

/** Raised when windows or interrupt lines run out, or a name repeats. */
export class MmioAllocatorError extends Error {
  /** Creates the error with what ran out. */
  constructor(detail: string) {
    super(`mmio allocator: ${detail}`);
    this.name = "MmioAllocatorError";
  }
}

/** Options of {@link MmioAllocator}. */
export interface MmioAllocatorOptions {
  /** First window (default {@link MMIO_DEVICES_BASE}). */
  readonly base?: number;
  /** End of the area (default {@link MMIO_DEVICES_END}). */
  readonly end?: number;
  /** GSIs legacy devices use, never handed out (default [8, 12]: RTC, PS/2 mouse). */
  readonly reservedGsis?: readonly number[];
}

/**
 * A bump allocator of windows and GSIs.
 *
 * @example
 * ```ts
 * import { MmioAllocator, virtioMmioCmdline } from "./mmio_allocator.ts";
 * const a = new MmioAllocator();
 * a.allocate("rootfs");
 * a.allocate("net0");
 * console.log(virtioMmioCmdline(a.slots));
 * // virtio_mmio.device=4K@0xd0000000:5 virtio_mmio.device=4K@0xd0001000:6
 * ```
 */
export class MmioAllocator {
  readonly #slots: MmioSlot[] = [];
  readonly #end: number;
  readonly #reserved: ReadonlySet<number>;
  #next: number;
  #gsi = FIRST_DEVICE_GSI;

  /** An allocator over the default (or given) area. */
  constructor(opts: MmioAllocatorOptions = {}) {
    this.#next = opts.base ?? MMIO_DEVICES_BASE;
    this.#end = opts.end ?? MMIO_DEVICES_END;
    this.#reserved = new Set(opts.reservedGsis ?? LEGACY_GSIS);
  }

  /** The slots handed out so far, in order. */
  get slots(): readonly MmioSlot[] {
    return this.#slots;
  }

  /** A window of `size` bytes (a multiple of 4 KiB) and the next free GSI for `name`. */
  allocate(name: string, size = MMIO_SLOT_SIZE): MmioSlot {
    if (this.#slots.some((s) => s.name === name)) {
      throw new MmioAllocatorError(`device name '${name}' is already taken`);
    }
    if (!Number.isInteger(size) || size <= 0 || size % MMIO_SLOT_SIZE !== 0) {
      throw new MmioAllocatorError(`window of ${size} bytes is not a multiple of 4 KiB`);
    }
    while (this.#reserved.has(this.#gsi)) this.#gsi++;
    if (this.#gsi > LAST_DEVICE_GSI) {
      throw new MmioAllocatorError(
        `no interrupt line left for '${name}' (GSIs ${FIRST_DEVICE_GSI}..${LAST_DEVICE_GSI} are used)`,
      );
    }
    if (this.#next + size > this.#end) {
      throw new MmioAllocatorError(`no MMIO space left for '${name}'`);
    }
    const slot: MmioSlot = { name, base: this.#next, size, gsi: this.#gsi };
    this.#next += size;
    this.#gsi++;
    this.#slots.push(slot);
    return slot;
  }
}

/**
 * The kernel command-line entries announcing `slots` in Linux's syntax
 * (`virtio_mmio.device=<size>@<base>:<irq>`, as Firecracker writes them).
 */
export function virtioMmioCmdline(slots: readonly MmioSlot[]): string {
  return slots.map((s) =>
    `virtio_mmio.device=${s.size % 1024 === 0 ? `${s.size / 1024}K` : s.size}@0x${
      s.base.toString(16)
    }:${s.gsi}`
  ).join(" ");
}

/**
 * The lowest GSI in {@link FIRST_DEVICE_GSI}..{@link LAST_DEVICE_GSI} that no
 * slot of `slots` and no legacy device uses (undefined when none is left): a
 * line for an interrupt with no MMIO window, such as the ACPI Generic Event
 * Device that announces a new VM generation id.
 */
export function nextFreeGsi(
  slots: readonly MmioSlot[],
  reserved: readonly number[] = LEGACY_GSIS,
): number | undefined {
  const used = new Set([...reserved, ...slots.map((s) => s.gsi)]);
  for (let gsi = FIRST_DEVICE_GSI; gsi <= LAST_DEVICE_GSI; gsi++) if (!used.has(gsi)) return gsi;
  return undefined;
}
