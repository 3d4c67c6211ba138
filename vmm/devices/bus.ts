/**
 * The device bus: routes a vCPU's port-I/O and MMIO exits to the device that
 * claims the address, under one lock shared by every thread's bus (devices'
 * state is shared memory; the lock makes each access atomic).
 *
 * Port lookup is one typed-array load (a 64 Ki-entry table of device
 * indices); MMIO lookup scans a short flat list of ranges. No allocation per
 * access.
 *
 * @module
 */

import type { Device } from "./device.ts";
import { LOCK_BYTES, SharedMutex } from "./lock.ts";

const PORT_COUNT = 0x10000;
const MAX_DEVICES = 0xfffe;

/** Raised when devices claim overlapping or out-of-range addresses, or the lock buffer is wrong. */
export class DeviceBusError extends Error {
  /** Creates the error with what was wrong. */
  constructor(detail: string) {
    super(`device bus: ${detail}`);
    this.name = "DeviceBusError";
  }
}

function sizeMask(size: number): number {
  return size >= 4 ? 0xffff_ffff : size === 2 ? 0xffff : 0xff;
}

/** Dispatches guest accesses to devices. One instance per thread, all over the same lock. */
export class DeviceBus {
  readonly #devices: readonly Device[];
  readonly #ports = new Uint16Array(PORT_COUNT); // device index + 1; 0 = unclaimed
  readonly #mmioBase: number[] = [];
  readonly #mmioEnd: number[] = [];
  readonly #mmioDev: number[] = [];
  readonly #mutex: SharedMutex;

  /** A fresh lock buffer to share between every thread's bus. */
  static createLock(): SharedArrayBuffer {
    return new SharedArrayBuffer(LOCK_BYTES);
  }

  /**
   * Builds the lookup tables; throws {@link DeviceBusError} on overlapping claims.
   *
   * @example
   * ```ts
   * import { DeviceBus } from "./bus.ts";
   * import { DebugExit, debugExitSpec } from "./debug_exit.ts";
   * const env = { setIrq() {}, requestStop: (s: number) => console.log("stop", s) };
   * const bus = new DeviceBus([new DebugExit(debugExitSpec(0xf4), env)], DeviceBus.createLock());
   * bus.pioWrite(0xf4, 1, 3); // stop 7
   * console.log(bus.pioRead(0x80, 1)); // undefined: nobody claims port 0x80
   * ```
   */
  constructor(devices: Device[], lock: SharedArrayBuffer) {
    if (devices.length > MAX_DEVICES) throw new DeviceBusError(`too many devices`);
    if (!(lock instanceof SharedArrayBuffer) || lock.byteLength < LOCK_BYTES) {
      throw new DeviceBusError("the lock must be a SharedArrayBuffer from DeviceBus.createLock()");
    }
    this.#devices = devices.slice();
    this.#mutex = new SharedMutex(lock, 0);
    const names = new Set<string>();
    devices.forEach((dev, i) => {
      if (names.has(dev.name)) throw new DeviceBusError(`two devices are named '${dev.name}'`);
      names.add(dev.name);
      for (const r of dev.ports) {
        if (
          !Number.isInteger(r.base) || !Number.isInteger(r.length) || r.base < 0 ||
          r.length < 1 || r.base + r.length > PORT_COUNT
        ) {
          throw new DeviceBusError(
            `device '${dev.name}' claims ports ${r.base}+${r.length}, outside 0..0xffff`,
          );
        }
        for (let p = r.base; p < r.base + r.length; p++) {
          const other = this.#ports[p] ?? 0;
          if (other !== 0) {
            throw new DeviceBusError(
              `port 0x${p.toString(16)} is claimed by both '${
                devices[other - 1]?.name
              }' and '${dev.name}'`,
            );
          }
          this.#ports[p] = i + 1;
        }
      }
      for (const r of dev.mmio) {
        const end = r.base + r.length;
        if (
          !Number.isSafeInteger(r.base) || !Number.isSafeInteger(end) || r.base < 0 || r.length < 1
        ) {
          throw new DeviceBusError(`device '${dev.name}' claims a bad MMIO range`);
        }
        for (let j = 0; j < this.#mmioBase.length; j++) {
          if (r.base < (this.#mmioEnd[j] ?? 0) && (this.#mmioBase[j] ?? 0) < end) {
            throw new DeviceBusError(
              `MMIO 0x${r.base.toString(16)}+0x${r.length.toString(16)} of '${dev.name}' ` +
                `overlaps '${devices[this.#mmioDev[j] ?? 0]?.name}'`,
            );
          }
        }
        this.#mmioBase.push(r.base);
        this.#mmioEnd.push(end);
        this.#mmioDev.push(i);
      }
    });
  }

  /** The devices on this bus. */
  get devices(): readonly Device[] {
    return this.#devices;
  }

  /** The device named `name`, if any. */
  device(name: string): Device | undefined {
    return this.#devices.find((d) => d.name === name);
  }

  /** Guest port read; `undefined` when no device claims `port` (the caller returns all-ones). */
  pioRead(port: number, size: number): number | undefined {
    const idx = this.#ports[port] ?? 0;
    if (idx === 0) return undefined;
    const dev = this.#devices[idx - 1];
    if (dev === undefined) return undefined;
    this.#mutex.lock();
    try {
      return (dev.read(port, size) & sizeMask(size)) >>> 0;
    } finally {
      this.#mutex.unlock();
    }
  }

  /** Guest port write; returns false when no device claims `port`. */
  pioWrite(port: number, size: number, value: number): boolean {
    const idx = this.#ports[port] ?? 0;
    if (idx === 0) return false;
    const dev = this.#devices[idx - 1];
    if (dev === undefined) return false;
    this.#mutex.lock();
    try {
      dev.write(port, size, (value & sizeMask(size)) >>> 0);
    } finally {
      this.#mutex.unlock();
    }
    return true;
  }

  /** Guest MMIO read; `undefined` when no device claims `addr`. */
  mmioRead(addr: number, size: number): number | undefined {
    const dev = this.#mmioDevice(addr);
    if (dev === undefined) return undefined;
    this.#mutex.lock();
    try {
      return (dev.read(addr, size) & sizeMask(size)) >>> 0;
    } finally {
      this.#mutex.unlock();
    }
  }

  /** Guest MMIO write; returns false when no device claims `addr`. */
  mmioWrite(addr: number, size: number, value: number): boolean {
    const dev = this.#mmioDevice(addr);
    if (dev === undefined) return false;
    this.#mutex.lock();
    try {
      dev.write(addr, size, (value & sizeMask(size)) >>> 0);
    } finally {
      this.#mutex.unlock();
    }
    return true;
  }

  /**
   * Runs `fn` under the bus lock: for host-side work on device state (save,
   * restore) that must not interleave with guest accesses.
   */
  withLock<T>(fn: () => T): T {
    this.#mutex.lock();
    try {
      return fn();
    } finally {
      this.#mutex.unlock();
    }
  }

  #mmioDevice(addr: number): Device | undefined {
    const bases = this.#mmioBase;
    for (let j = 0; j < bases.length; j++) {
      if (addr >= (bases[j] ?? 0) && addr < (this.#mmioEnd[j] ?? 0)) {
        return this.#devices[this.#mmioDev[j] ?? -1];
      }
    }
    return undefined;
  }
}
