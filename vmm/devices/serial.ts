/**
 * A 16550A UART (COM1 by default: ports 0x3f8..0x3ff, IRQ 4), modelled on the
 * register behaviour Linux's 8250 driver probes: scratch register, loopback
 * (MSR mirrors MCR), FIFO detection (IIR bits 0xC0 after FCR=0x07), the THRE
 * interrupt on IER enable, interrupt priorities, and OUT2 gating the IRQ.
 *
 * Transmission is instantaneous (THRE and TEMT are always set); bytes go to a
 * sink (stdout, a file opened in append mode per thread, or nowhere), buffered
 * in shared memory and flushed on newline, when full, on {@link Serial16550.flush},
 * on save and on close. Input arrives from the host through
 * {@link Serial16550.pushInput} into a 4 KiB ring that feeds the 16-byte RX FIFO.
 *
 * All state lives in the spec's `SharedArrayBuffer`, guarded by a lock word of
 * its own (so the host's `pushInput` on the main thread and a vCPU's port
 * access never race), nested inside the bus lock.
 *
 * @module
 */

import type { AddressRange, Device, DeviceEnv } from "./device.ts";
import { LOCK_BYTES, SharedMutex } from "./lock.ts";
import {
  checkStateSize,
  configBool,
  configInt,
  configString,
  type DeviceSpec,
  DeviceSpecError,
} from "./spec.ts";
import { decodeDeviceState, DeviceStateError, encodeDeviceState } from "./state.ts";

/** Device kind of the 16550A UART. */
export const SERIAL_KIND = "serial16550";
const STATE_VERSION = 1;

// Register offsets from the base port.
const REG_DATA = 0; // RBR / THR, DLL when DLAB
const REG_IER = 1; // DLM when DLAB
const REG_IIR = 2; // FCR on write
const REG_LCR = 3;
const REG_MCR = 4;
const REG_LSR = 5;
const REG_MSR = 6;
const REG_SCR = 7;

// Bits.
const IER_RDI = 0x01;
const IER_THRI = 0x02;
const IER_RLSI = 0x04;
const IER_MSI = 0x08;
const IIR_NO_INT = 0x01;
const IIR_MSI = 0x00;
const IIR_THRI = 0x02;
const IIR_RDI = 0x04;
const IIR_RLSI = 0x06;
const IIR_CTI = 0x0c;
const IIR_FIFO_BITS = 0xc0;
const FCR_ENABLE = 0x01;
const FCR_CLEAR_RX = 0x02;
const LCR_DLAB = 0x80;
const MCR_DTR = 0x01;
const MCR_RTS = 0x02;
const MCR_OUT1 = 0x04;
const MCR_OUT2 = 0x08;
const MCR_LOOP = 0x10;
const LSR_DR = 0x01;
const LSR_OE = 0x02;
const LSR_ERRORS = 0x1e; // OE | PE | FE | BI
const LSR_THRE = 0x20;
const LSR_TEMT = 0x40;
const MSR_DELTAS = 0x0f;
const MSR_TERI = 0x04;
const MSR_CTS = 0x10;
const MSR_DSR = 0x20;
const MSR_RI = 0x40;
const MSR_DCD = 0x80;
/** What the modem lines read when a host terminal is attached and not in loopback. */
const MSR_CONNECTED = MSR_DCD | MSR_DSR | MSR_CTS;
const NEWLINE = 0x0a;

/** Depth of the receive FIFO, as on a 16550A. */
export const RX_FIFO_BYTES = 16;
/** Capacity of the host-to-guest input ring behind the FIFO. */
export const RX_RING_BYTES = 4096;
/** Capacity of the shared output buffer. */
export const TX_BUFFER_BYTES = 1024;

// State layout: byte offsets in the shared buffer. The lock word comes first
// and is not part of the saved state.
const S_LOCK = 0;
const S_IER = 4;
const S_IIR = 5;
const S_FCR = 6;
const S_LCR = 7;
const S_MCR = 8;
const S_LSR = 9;
const S_MSR = 10;
const S_SCR = 11;
const S_DLL = 12;
const S_DLM = 13;
const S_THR_PENDING = 14;
const S_IRQ_LEVEL = 15;
const S_RBR = 16; // last byte received, returned when the FIFO is empty
const S_FIFO_HEAD = 17;
const S_FIFO_COUNT = 18;
const S_TX_LEN = 20; // u16
const S_RING_HEAD = 24; // u16
const S_RING_COUNT = 26; // u16
const S_FIFO = 32;
const S_TX = S_FIFO + RX_FIFO_BYTES;
const S_RING = S_TX + TX_BUFFER_BYTES;
/** Size of the state buffer of a {@link Serial16550}. */
export const SERIAL_STATE_BYTES: number = S_RING + RX_RING_BYTES;

const TRIGGER_LEVELS = [1, 4, 8, 14] as const;

/** Where transmitted bytes go. */
export type SerialOutput = "stdout" | "none" | { readonly path: string };

/** Per-thread options that are not part of the shared spec. */
export interface SerialOptions {
  /** Receives transmitted bytes instead of the configured output (tests, embedding). */
  readonly sink?: (bytes: Uint8Array) => void;
}

/** Creates the config and zeroed-then-reset state of a COM port spec. */
export function serialSpec(
  name: string,
  opts: { base?: number; irq?: number; output?: SerialOutput; input?: boolean } = {},
): DeviceSpec {
  const output = opts.output ?? "stdout";
  const config: Record<string, unknown> = {
    base: opts.base ?? 0x3f8,
    irq: opts.irq ?? 4,
    input: opts.input ?? true,
  };
  if (typeof output === "string") config.out = output;
  else {
    config.out = "file";
    config.path = output.path;
  }
  const state = new SharedArrayBuffer(SERIAL_STATE_BYTES);
  resetState(new Uint8Array(state));
  return { kind: SERIAL_KIND, name, config, state };
}

function resetState(s: Uint8Array): void {
  s.fill(0, LOCK_BYTES);
  s[S_IIR] = IIR_NO_INT;
  s[S_LSR] = LSR_THRE | LSR_TEMT;
  s[S_MSR] = MSR_CONNECTED;
  s[S_DLL] = 0x0c; // 9600 baud
}

/** The 16550A UART. */
export class Serial16550 implements Device {
  /** Stable name. */
  readonly name: string;
  /** The 8 ports from the base. */
  readonly ports: readonly AddressRange[];
  /** None: a legacy port-I/O device. */
  readonly mmio: readonly AddressRange[] = [];
  readonly #base: number;
  readonly #irq: number;
  readonly #input: boolean;
  readonly #s: Uint8Array;
  readonly #dv: DataView;
  readonly #mutex: SharedMutex;
  readonly #env: DeviceEnv;
  readonly #out: string;
  readonly #path: string;
  readonly #sink: ((bytes: Uint8Array) => void) | undefined;
  #file: Deno.FsFile | undefined;
  #failed = false;

  /**
   * Builds this thread's instance over `spec.state`.
   *
   * @example
   * ```ts
   * import { Serial16550, serialSpec } from "./serial.ts";
   * const env = { setIrq() {}, requestStop() {} };
   * const com1 = new Serial16550(serialSpec("com1", { output: "none" }), env);
   * com1.write(0x3f8 + 7, 1, 0x5a);
   * console.log(com1.read(0x3f8 + 7, 1)); // 90
   * ```
   */
  constructor(spec: DeviceSpec, env: DeviceEnv, options: SerialOptions = {}) {
    if (spec.kind !== SERIAL_KIND) {
      throw new DeviceSpecError(spec.name, `kind '${spec.kind}' is not '${SERIAL_KIND}'`);
    }
    checkStateSize(spec, SERIAL_STATE_BYTES);
    this.name = spec.name;
    this.#base = configInt(spec, "base", 0x3f8, 0, 0xfff8);
    this.#irq = configInt(spec, "irq", 4, 0, 23);
    this.#input = configBool(spec, "input", true);
    this.#out = configString(spec, "out", "stdout");
    this.#path = configString(spec, "path", "");
    if (!["stdout", "file", "none"].includes(this.#out)) {
      throw new DeviceSpecError(spec.name, `config 'out' must be stdout, file or none`);
    }
    if (this.#out === "file" && this.#path === "") {
      throw new DeviceSpecError(spec.name, `config 'out' is file but 'path' is empty`);
    }
    this.ports = [{ base: this.#base, length: 8 }];
    this.#s = new Uint8Array(spec.state);
    this.#dv = new DataView(spec.state);
    this.#mutex = new SharedMutex(spec.state, S_LOCK);
    this.#env = env;
    this.#sink = options.sink;
  }

  /** Guest read of a register (only the low byte of wider accesses is meaningful). */
  read(addr: number, _size: number): number {
    const off = addr - this.#base;
    this.#mutex.lock();
    try {
      return this.#read(off);
    } finally {
      this.#mutex.unlock();
    }
  }

  /** Guest write of a register (the low byte of `value`). */
  write(addr: number, _size: number, value: number): void {
    const off = addr - this.#base;
    this.#mutex.lock();
    try {
      this.#write(off, value & 0xff);
    } finally {
      this.#mutex.unlock();
    }
  }

  /**
   * Queues host input for the guest (call from any thread, typically with
   * stdin chunks). Returns how many bytes were accepted: fewer than offered
   * when the 4 KiB ring is full (offer the rest later), 0 when input is off.
   */
  pushInput(bytes: Uint8Array): number {
    if (!this.#input) return 0;
    this.#mutex.lock();
    try {
      const s = this.#s;
      const dv = this.#dv;
      let n = 0;
      // Fill the ring, let the FIFO take what it can, and repeat while that made room.
      for (;;) {
        const head = dv.getUint16(S_RING_HEAD, true) % RX_RING_BYTES;
        const count = Math.min(dv.getUint16(S_RING_COUNT, true), RX_RING_BYTES);
        const take = Math.min(bytes.length - n, RX_RING_BYTES - count);
        if (take === 0) break;
        for (let i = 0; i < take; i++) {
          s[S_RING + ((head + count + i) % RX_RING_BYTES)] = bytes[n + i] ?? 0;
        }
        dv.setUint16(S_RING_COUNT, count + take, true);
        n += take;
        this.#refill();
      }
      this.#update();
      return n;
    } finally {
      this.#mutex.unlock();
    }
  }

  /** Bytes of host input not yet read by the guest (ring plus FIFO). */
  pendingInput(): number {
    this.#mutex.lock();
    try {
      return Math.min(this.#dv.getUint16(S_RING_COUNT, true), RX_RING_BYTES) +
        Math.min(this.#s[S_FIFO_COUNT] ?? 0, RX_FIFO_BYTES);
    } finally {
      this.#mutex.unlock();
    }
  }

  /** Writes buffered output to the sink now. */
  flush(): void {
    this.#mutex.lock();
    try {
      this.#flush();
    } finally {
      this.#mutex.unlock();
    }
  }

  /** Flushes and closes this thread's output file, if any. */
  close(): void {
    this.flush();
    this.#file?.close();
    this.#file = undefined;
  }

  /** Saves registers, FIFO and pending input; flushes buffered output first. */
  save(): Uint8Array {
    this.#mutex.lock();
    try {
      this.#flush();
      return encodeDeviceState(SERIAL_KIND, STATE_VERSION, this.#s.slice(LOCK_BYTES));
    } finally {
      this.#mutex.unlock();
    }
  }

  /** Restores state from {@link Serial16550.save}; validates the FIFO and ring indices. */
  restore(state: Uint8Array): void {
    const body = decodeDeviceState(
      SERIAL_KIND,
      STATE_VERSION,
      SERIAL_STATE_BYTES - LOCK_BYTES,
      state,
    );
    const bdv = new DataView(body.buffer, body.byteOffset, body.byteLength);
    const at = (o: number): number => body[o - LOCK_BYTES] ?? 0;
    const u16 = (o: number): number => bdv.getUint16(o - LOCK_BYTES, true);
    if (at(S_FIFO_COUNT) > RX_FIFO_BYTES || at(S_FIFO_HEAD) >= RX_FIFO_BYTES) {
      throw new DeviceStateError(SERIAL_KIND, "RX FIFO indices are out of range");
    }
    if (u16(S_RING_COUNT) > RX_RING_BYTES || u16(S_RING_HEAD) >= RX_RING_BYTES) {
      throw new DeviceStateError(SERIAL_KIND, "input ring indices are out of range");
    }
    if (u16(S_TX_LEN) > TX_BUFFER_BYTES) {
      throw new DeviceStateError(SERIAL_KIND, "output buffer length is out of range");
    }
    this.#mutex.lock();
    try {
      this.#s.set(body, LOCK_BYTES);
      // The restored IRQ level is what the line was; re-assert it on this machine.
      this.#env.setIrq(this.#irq, this.#s[S_IRQ_LEVEL] === 1);
    } finally {
      this.#mutex.unlock();
    }
  }

  #read(off: number): number {
    const s = this.#s;
    const dlab = ((s[S_LCR] ?? 0) & LCR_DLAB) !== 0;
    switch (off) {
      case REG_DATA: {
        if (dlab) return s[S_DLL] ?? 0;
        const count = Math.min(s[S_FIFO_COUNT] ?? 0, RX_FIFO_BYTES);
        if (count > 0) {
          const head = (s[S_FIFO_HEAD] ?? 0) % RX_FIFO_BYTES;
          s[S_RBR] = s[S_FIFO + head] ?? 0;
          s[S_FIFO_HEAD] = (head + 1) % RX_FIFO_BYTES;
          s[S_FIFO_COUNT] = count - 1;
          if (count === 1) s[S_LSR] = (s[S_LSR] ?? 0) & ~LSR_DR;
          this.#refill();
          this.#update();
        }
        return s[S_RBR] ?? 0;
      }
      case REG_IER:
        return dlab ? s[S_DLM] ?? 0 : s[S_IER] ?? 0;
      case REG_IIR: {
        const iir = s[S_IIR] ?? IIR_NO_INT;
        if ((iir & 0x0f) === IIR_THRI) {
          // Reading IIR acknowledges a THRE interrupt (16550 datasheet).
          s[S_THR_PENDING] = 0;
          this.#update();
        }
        return iir;
      }
      case REG_LCR:
        return s[S_LCR] ?? 0;
      case REG_MCR:
        return s[S_MCR] ?? 0;
      case REG_LSR: {
        const lsr = s[S_LSR] ?? 0;
        if ((lsr & LSR_ERRORS) !== 0) {
          s[S_LSR] = lsr & ~LSR_ERRORS;
          this.#update();
        }
        return lsr;
      }
      case REG_MSR: {
        const msr = s[S_MSR] ?? 0;
        if ((msr & MSR_DELTAS) !== 0) {
          s[S_MSR] = msr & ~MSR_DELTAS;
          this.#update();
        }
        return msr;
      }
      case REG_SCR:
        return s[S_SCR] ?? 0;
      default:
        return 0xff;
    }
  }

  #write(off: number, v: number): void {
    const s = this.#s;
    const dlab = ((s[S_LCR] ?? 0) & LCR_DLAB) !== 0;
    switch (off) {
      case REG_DATA:
        if (dlab) s[S_DLL] = v;
        else this.#transmit(v);
        return;
      case REG_IER: {
        if (dlab) {
          s[S_DLM] = v;
          return;
        }
        const old = s[S_IER] ?? 0;
        const ier = v & 0x0f;
        s[S_IER] = ier;
        if ((ier & IER_THRI) === 0) s[S_THR_PENDING] = 0;
        else if ((old & IER_THRI) === 0 && ((s[S_LSR] ?? 0) & LSR_THRE) !== 0) {
          // Enabling the THRE interrupt with THR empty raises it at once (Linux relies on it).
          s[S_THR_PENDING] = 1;
        }
        this.#update();
        return;
      }
      case REG_IIR: {
        const old = s[S_FCR] ?? 0;
        if (((old ^ v) & FCR_ENABLE) !== 0 || (v & FCR_CLEAR_RX) !== 0) {
          s[S_FIFO_COUNT] = 0;
          s[S_FIFO_HEAD] = 0;
          s[S_LSR] = (s[S_LSR] ?? 0) & ~LSR_DR;
        }
        // Only the enable and trigger-level bits are kept; clear bits self-reset.
        s[S_FCR] = (v & FCR_ENABLE) === 0 ? 0 : v & 0xc1;
        this.#refill();
        this.#update();
        return;
      }
      case REG_LCR:
        s[S_LCR] = v;
        return;
      case REG_MCR: {
        const mcr = v & 0x1f;
        s[S_MCR] = mcr;
        const msr = s[S_MSR] ?? 0;
        const old = msr & 0xf0;
        let now = MSR_CONNECTED;
        if ((mcr & MCR_LOOP) !== 0) {
          now = ((mcr & MCR_RTS) !== 0 ? MSR_CTS : 0) | ((mcr & MCR_DTR) !== 0 ? MSR_DSR : 0) |
            ((mcr & MCR_OUT1) !== 0 ? MSR_RI : 0) | ((mcr & MCR_OUT2) !== 0 ? MSR_DCD : 0);
        }
        const changed = old ^ now;
        let delta = msr & MSR_DELTAS;
        delta |= (changed >> 4) & ~MSR_TERI & 0x0f;
        if ((old & MSR_RI) !== 0 && (now & MSR_RI) === 0) delta |= MSR_TERI;
        s[S_MSR] = now | delta;
        this.#refill();
        this.#update();
        return;
      }
      case REG_SCR:
        s[S_SCR] = v;
        return;
      default:
        // LSR and MSR writes are factory-test only; ignore them.
        return;
    }
  }

  /** THR write: the byte leaves at once (loopback: into our own RX FIFO). */
  #transmit(v: number): void {
    const s = this.#s;
    // THR full for an instant: drop the THRE interrupt, then raise it again,
    // giving an edge-triggered IOAPIC the low-to-high transition it needs.
    s[S_THR_PENDING] = 0;
    this.#update();
    if (((s[S_MCR] ?? 0) & MCR_LOOP) !== 0) this.#receive(v);
    else this.#emit(v);
    if (((s[S_IER] ?? 0) & IER_THRI) !== 0) s[S_THR_PENDING] = 1;
    this.#update();
  }

  /** A byte arrives at the receiver (from loopback or the input ring). */
  #receive(v: number): boolean {
    const s = this.#s;
    const fifo = ((s[S_FCR] ?? 0) & FCR_ENABLE) !== 0;
    const cap = fifo ? RX_FIFO_BYTES : 1;
    const count = Math.min(s[S_FIFO_COUNT] ?? 0, RX_FIFO_BYTES);
    const head = (s[S_FIFO_HEAD] ?? 0) % RX_FIFO_BYTES;
    if (count >= cap) {
      s[S_LSR] = (s[S_LSR] ?? 0) | LSR_OE;
      // Without a FIFO the holding register is overwritten; with one the byte is lost.
      if (!fifo) s[S_FIFO + ((head + count - 1) % RX_FIFO_BYTES)] = v;
      return false;
    }
    s[S_FIFO + ((head + count) % RX_FIFO_BYTES)] = v;
    s[S_FIFO_COUNT] = count + 1;
    s[S_LSR] = (s[S_LSR] ?? 0) | LSR_DR;
    return true;
  }

  /** Moves host input from the ring into the FIFO while there is room. */
  #refill(): void {
    const s = this.#s;
    if (((s[S_MCR] ?? 0) & MCR_LOOP) !== 0) return; // the receiver hears only itself
    const dv = this.#dv;
    let head = dv.getUint16(S_RING_HEAD, true) % RX_RING_BYTES;
    let count = Math.min(dv.getUint16(S_RING_COUNT, true), RX_RING_BYTES);
    const cap = ((s[S_FCR] ?? 0) & FCR_ENABLE) !== 0 ? RX_FIFO_BYTES : 1;
    while (count > 0 && (s[S_FIFO_COUNT] ?? 0) < cap) {
      this.#receive(s[S_RING + head] ?? 0);
      head = (head + 1) % RX_RING_BYTES;
      count--;
    }
    dv.setUint16(S_RING_HEAD, head, true);
    dv.setUint16(S_RING_COUNT, count, true);
    if ((s[S_FIFO_COUNT] ?? 0) === 0) s[S_LSR] = (s[S_LSR] ?? 0) & ~LSR_DR;
  }

  /** Recomputes IIR and drives the IRQ line when its level changes. */
  #update(): void {
    const s = this.#s;
    const ier = s[S_IER] ?? 0;
    const lsr = s[S_LSR] ?? 0;
    const fcr = s[S_FCR] ?? 0;
    let id = IIR_NO_INT;
    if ((ier & IER_RLSI) !== 0 && (lsr & LSR_ERRORS) !== 0) id = IIR_RLSI;
    else if ((ier & IER_RDI) !== 0 && (lsr & LSR_DR) !== 0) {
      const fifo = (fcr & FCR_ENABLE) !== 0;
      const trigger = TRIGGER_LEVELS[(fcr >> 6) & 3] ?? 1;
      // No character-timeout timer: data below the trigger level reports a
      // timeout at once, which the 8250 driver drains the same way.
      id = !fifo || (s[S_FIFO_COUNT] ?? 0) >= trigger ? IIR_RDI : IIR_CTI;
    } else if ((ier & IER_THRI) !== 0 && s[S_THR_PENDING] === 1) id = IIR_THRI;
    else if ((ier & IER_MSI) !== 0 && ((s[S_MSR] ?? 0) & MSR_DELTAS) !== 0) id = IIR_MSI;
    s[S_IIR] = id | ((fcr & FCR_ENABLE) !== 0 ? IIR_FIFO_BITS : 0);
    const mcr = s[S_MCR] ?? 0;
    // On a PC, OUT2 enables the IRQ buffer; loopback disconnects OUT2 from the pin.
    const level = id !== IIR_NO_INT && (mcr & MCR_OUT2) !== 0 && (mcr & MCR_LOOP) === 0 ? 1 : 0;
    if (s[S_IRQ_LEVEL] !== level) {
      s[S_IRQ_LEVEL] = level;
      this.#env.setIrq(this.#irq, level === 1);
    }
  }

  #emit(v: number): void {
    const s = this.#s;
    const dv = this.#dv;
    let len = Math.min(dv.getUint16(S_TX_LEN, true), TX_BUFFER_BYTES);
    s[S_TX + len] = v;
    len++;
    dv.setUint16(S_TX_LEN, len, true);
    if (v === NEWLINE || len === TX_BUFFER_BYTES) this.#flush();
  }

  #flush(): void {
    const dv = this.#dv;
    const len = Math.min(dv.getUint16(S_TX_LEN, true), TX_BUFFER_BYTES);
    if (len === 0) return;
    dv.setUint16(S_TX_LEN, 0, true);
    if (this.#failed) return;
    const bytes = this.#s.slice(S_TX, S_TX + len);
    try {
      if (this.#sink !== undefined) this.#sink(bytes);
      else if (this.#out === "stdout") writeAll(Deno.stdout, bytes);
      else if (this.#out === "file") {
        this.#file ??= Deno.openSync(this.#path, { write: true, append: true, create: true });
        writeAll(this.#file, bytes);
      }
    } catch (err) {
      // A broken sink must not crash the vCPU: stop the machine saying why.
      this.#failed = true;
      const where = this.#out === "file" ? this.#path : this.#out;
      this.#env.requestStop(
        1,
        `serial ${this.name}: writing output to ${where} failed: ${(err as Error).message}`,
      );
    }
  }
}

function writeAll(w: { writeSync(p: Uint8Array): number }, bytes: Uint8Array): void {
  let off = 0;
  while (off < bytes.length) off += w.writeSync(bytes.subarray(off));
}
