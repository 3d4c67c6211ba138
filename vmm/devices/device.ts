/**
 * The device contract: port-I/O and MMIO handlers plus one save/restore
 * contract (as crosvm's `Suspendable`), so checkpoints need no device-specific
 * code outside the device.
 *
 * Threading: vCPUs run on their own Workers and each handles its exits
 * synchronously, so every Worker (and the main thread) holds its own instance
 * of each device. All mutable device state therefore lives in the device's
 * `SharedArrayBuffer` (never in plain JS fields), and every access runs under
 * the bus lock ({@link DeviceBus}). Saving a device is copying those bytes.
 *
 * @module
 */

/** A half-open range of I/O ports or MMIO addresses. */
export interface AddressRange {
  /** First port or address of the range. */
  readonly base: number;
  /** Number of ports or bytes. */
  readonly length: number;
}

/** What a device may ask of the machine. Implemented per thread by the VMM. */
export interface DeviceEnv {
  /** Sets the level of a legacy interrupt line (GSI) on the in-kernel irqchip. */
  setIrq(gsi: number, level: boolean): void;
  /** Asks the machine to stop every vCPU and end the run with `status`. */
  requestStop(status: number, reason: string): void;
}

/**
 * The save/restore contract every device implements (crosvm's
 * `Suspendable`). A device with work in the background (an I/O device's
 * back end) also implements {@link Suspendable.quiesce} and
 * {@link Suspendable.resume} (crosvm's sleep/wake): a checkpoint quiesces
 * every device, pauses the vCPUs, saves, resumes the vCPUs, then resumes the
 * devices; nothing in between waits for another thread.
 */
export interface Suspendable {
  /** A copy of the device's whole state. Call only while the machine is paused (and the device quiesced). */
  save(): Uint8Array;
  /** Replaces the device's state with bytes from {@link Suspendable.save}; validates them. */
  restore(state: Uint8Array): void;
  /** Completes or holds in-flight work; resolves when {@link Suspendable.save} may run. */
  quiesce?(): Promise<void>;
  /** Lets a quiesced device work again; returns at once. */
  resume?(): void;
  /** Whether the device is quiesced now (absent: it has no background work). */
  readonly quiesced?: boolean;
}

/** A device on the port-I/O (and optionally MMIO) bus. */
export interface Device extends Suspendable {
  /** Stable name, used as the key of its state in a checkpoint. */
  readonly name: string;
  /** Port ranges it claims. */
  readonly ports: readonly AddressRange[];
  /** MMIO ranges it claims (empty for legacy devices). */
  readonly mmio: readonly AddressRange[];
  /** Guest read of `size` (1, 2 or 4) bytes at `addr`; returns the value. */
  read(addr: number, size: number): number;
  /** Guest write of `size` bytes of `value` at `addr`. */
  write(addr: number, size: number, value: number): void;
  /**
   * Writes output buffered in the shared state (by any thread's instance) to
   * its sink. The machine calls it when a run ends, so nothing is lost.
   */
  flush?(): void;
}
