/**
 * A test device whose one register is a counter updated with a deliberately
 * slow, non-atomic read-modify-write, so concurrent writers lose updates
 * unless the bus lock serialises them.
 *
 * @module
 */

import type { AddressRange, Device } from "../../vmm/devices/mod.ts";

/** Port of the counter register. */
export const COUNTER_PORT = 0x510;

/** The counter device; `state` is a 4-byte SharedArrayBuffer. */
export class CounterDevice implements Device {
  readonly name = "counter";
  readonly ports: readonly AddressRange[] = [{ base: COUNTER_PORT, length: 4 }];
  readonly mmio: readonly AddressRange[] = [{ base: 0xd000_0000, length: 0x1000 }];
  readonly #cell: Uint32Array;

  constructor(state: SharedArrayBuffer) {
    this.#cell = new Uint32Array(state);
  }

  read(addr: number, _size: number): number {
    return addr >= 0xd000_0000 ? (addr - 0xd000_0000) | 0x8000_0000 : this.#cell[0] ?? 0;
  }

  write(_addr: number, _size: number, value: number): void {
    const before = this.#cell[0] ?? 0;
    let spin = 0;
    for (let i = 0; i < 20; i++) spin += i; // widen the race window
    this.#cell[0] = before + (value & 0xf) + (spin & 0);
  }

  save(): Uint8Array {
    return new Uint8Array(this.#cell.buffer.slice(0));
  }

  restore(state: Uint8Array): void {
    new Uint8Array(this.#cell.buffer).set(state.subarray(0, 4));
  }
}
