/**
 * A minimal i8042 keyboard controller (ports 0x60 data, 0x64 status/command):
 * enough for Linux's probe not to hang, and the reset line a microVM uses to
 * power off (command 0xFE, or clearing bit 0 of the output port).
 *
 * Implements the status register, the command byte (0x20 read / 0x60 write),
 * self tests (0xAA → 0x55, 0xAB/0xA9 → 0x00), port enable/disable, the
 * output port (0xD0/0xD1), and a keyboard that acknowledges every command
 * (reset answers 0xFA 0xAA, identify answers 0xFA 0xAB 0x83). There is no
 * auxiliary (mouse) device. Keyboard bytes raise IRQ 1 when the command byte
 * enables it.
 *
 * @module
 */

import type { AddressRange, Device, DeviceEnv } from "./device.ts";
import { checkStateSize, configInt, type DeviceSpec, DeviceSpecError } from "./spec.ts";
import { decodeDeviceState, DeviceStateError, encodeDeviceState } from "./state.ts";

/** Device kind of the i8042 controller. */
export const I8042_KIND = "i8042";
const STATE_VERSION = 1;

/** Data port. */
export const I8042_DATA_PORT = 0x60;
/** Status (read) and command (write) port. */
export const I8042_COMMAND_PORT = 0x64;

const STATUS_OBF = 0x01;
const STATUS_SYS = 0x04;
const STATUS_CMD = 0x08; // last write went to the command port
const STATUS_UNLOCKED = 0x10;

const CTR_KBD_INT = 0x01;
const CTR_SYS = 0x04;
const CTR_KBD_DISABLE = 0x10;
const CTR_AUX_DISABLE = 0x20;
const CTR_XLATE = 0x40;
const CTR_DEFAULT = CTR_KBD_INT | CTR_SYS | CTR_XLATE;

const CMD_READ_CTR = 0x20;
const CMD_WRITE_CTR = 0x60;
const CMD_AUX_DISABLE = 0xa7;
const CMD_AUX_ENABLE = 0xa8;
const CMD_AUX_TEST = 0xa9;
const CMD_SELF_TEST = 0xaa;
const CMD_KBD_TEST = 0xab;
const CMD_KBD_DISABLE = 0xad;
const CMD_KBD_ENABLE = 0xae;
const CMD_READ_OUTP = 0xd0;
const CMD_WRITE_OUTP = 0xd1;
const CMD_WRITE_KBD_OBUF = 0xd2;
const CMD_RESET = 0xfe;

const KBD_ACK = 0xfa;
const KBD_RESET = 0xff;
const KBD_IDENTIFY = 0xf2;
const KBD_ECHO = 0xee;

/** Make codes of Left Ctrl, Left Alt and Delete in scan code set 1 (translated) and set 2. */
const CTRL_ALT_DEL_SET1 = [0x1d, 0x38, 0xe0, 0x53];
const CTRL_ALT_DEL_SET2 = [0x14, 0x11, 0xe0, 0x71];

const OUTP_RESET_RELEASED = 0x01;
const OUTP_A20 = 0x02;

// State layout.
const S_STATUS = 0;
const S_CTR = 1;
const S_PENDING_CMD = 2; // command awaiting a data byte, 0 when none
const S_OUTP = 3;
const S_IRQ = 4;
const S_Q_HEAD = 5;
const S_Q_COUNT = 6;
const S_Q = 8;
const Q_BYTES = 8;
/** Size of the state buffer of an {@link I8042}. */
export const I8042_STATE_BYTES: number = S_Q + Q_BYTES;

/** Creates the spec of the i8042 controller on IRQ 1. */
export function i8042Spec(name = "i8042"): DeviceSpec {
  const state = new SharedArrayBuffer(I8042_STATE_BYTES);
  const s = new Uint8Array(state);
  s[S_STATUS] = STATUS_UNLOCKED;
  s[S_CTR] = CTR_DEFAULT;
  s[S_OUTP] = OUTP_RESET_RELEASED | OUTP_A20;
  return { kind: I8042_KIND, name, config: { irq: 1 }, state };
}

/** The i8042 controller. All state is in the spec's shared buffer (guarded by the bus lock). */
export class I8042 implements Device {
  /** Stable name. */
  readonly name: string;
  /** Ports 0x60 and 0x64. */
  readonly ports: readonly AddressRange[] = [
    { base: I8042_DATA_PORT, length: 1 },
    { base: I8042_COMMAND_PORT, length: 1 },
  ];
  /** None. */
  readonly mmio: readonly AddressRange[] = [];
  readonly #s: Uint8Array;
  readonly #env: DeviceEnv;
  readonly #irq: number;

  /**
   * Builds this thread's instance over `spec.state`.
   *
   * @example
   * ```ts
   * import { I8042, i8042Spec } from "./i8042.ts";
   * const kbc = new I8042(i8042Spec(), {
   *   setIrq() {},
   *   requestStop: (status, reason) => console.log(status, reason),
   * });
   * kbc.write(0x64, 1, 0xfe); // 0 "guest reset via i8042"
   * ```
   */
  constructor(spec: DeviceSpec, env: DeviceEnv) {
    if (spec.kind !== I8042_KIND) {
      throw new DeviceSpecError(spec.name, `kind '${spec.kind}' is not '${I8042_KIND}'`);
    }
    checkStateSize(spec, I8042_STATE_BYTES);
    this.name = spec.name;
    this.#irq = configInt(spec, "irq", 1, 0, 23);
    this.#s = new Uint8Array(spec.state);
    this.#env = env;
  }

  /** Guest read: 0x64 returns the status, 0x60 pops the output buffer. */
  read(addr: number, _size: number): number {
    const s = this.#s;
    if (addr === I8042_COMMAND_PORT) return s[S_STATUS] ?? 0;
    if (addr !== I8042_DATA_PORT) return 0xff;
    const count = Math.min(s[S_Q_COUNT] ?? 0, Q_BYTES);
    if (count === 0) return s[S_Q + ((s[S_Q_HEAD] ?? 0) % Q_BYTES)] ?? 0;
    const head = (s[S_Q_HEAD] ?? 0) % Q_BYTES;
    const v = s[S_Q + head] ?? 0;
    s[S_Q_HEAD] = count > 1 ? (head + 1) % Q_BYTES : head; // keep the last byte readable
    s[S_Q_COUNT] = count - 1;
    if (count > 1 && s[S_IRQ] === 1) {
      // One byte per interrupt, as on the real one-byte controller: pulse the
      // line so an edge-triggered IOAPIC sees the next byte.
      s[S_IRQ] = 0;
      this.#env.setIrq(this.#irq, false);
    }
    this.#update();
    return v;
  }

  /** Guest write: commands to 0x64, data (command arguments or keyboard commands) to 0x60. */
  write(addr: number, _size: number, value: number): void {
    const v = value & 0xff;
    const s = this.#s;
    if (addr === I8042_COMMAND_PORT) {
      s[S_STATUS] = (s[S_STATUS] ?? 0) | STATUS_CMD;
      this.#command(v);
    } else if (addr === I8042_DATA_PORT) {
      s[S_STATUS] = (s[S_STATUS] ?? 0) & ~STATUS_CMD;
      this.#data(v);
    }
  }

  /**
   * Presses Ctrl-Alt-Del on the keyboard (Firecracker's `SendCtrlAltDel`):
   * queues the make codes of Ctrl, Alt and Delete — scan code set 1 when the
   * command byte has translation on (as Linux leaves it), else set 2 — and
   * raises IRQ 1 if enabled. Returns false, queueing nothing, when the output
   * buffer has no room for all four bytes. Call under the bus lock.
   */
  sendCtrlAltDel(): boolean {
    const s = this.#s;
    if (Math.min(s[S_Q_COUNT] ?? 0, Q_BYTES) + 4 > Q_BYTES) return false;
    const xlate = ((s[S_CTR] ?? 0) & CTR_XLATE) !== 0;
    for (const b of xlate ? CTRL_ALT_DEL_SET1 : CTRL_ALT_DEL_SET2) this.#push(b);
    return true;
  }

  /** Saves the controller state. */
  save(): Uint8Array {
    return encodeDeviceState(I8042_KIND, STATE_VERSION, this.#s.slice());
  }

  /** Restores state from {@link I8042.save}. */
  restore(state: Uint8Array): void {
    const body = decodeDeviceState(I8042_KIND, STATE_VERSION, I8042_STATE_BYTES, state);
    if ((body[S_Q_COUNT] ?? 0) > Q_BYTES || (body[S_Q_HEAD] ?? 0) >= Q_BYTES) {
      throw new DeviceStateError(I8042_KIND, "output queue indices are out of range");
    }
    this.#s.set(body);
    this.#env.setIrq(this.#irq, this.#s[S_IRQ] === 1);
  }

  #command(cmd: number): void {
    const s = this.#s;
    switch (cmd) {
      case CMD_READ_CTR:
        this.#push(s[S_CTR] ?? 0);
        return;
      case CMD_WRITE_CTR:
      case CMD_WRITE_OUTP:
      case CMD_WRITE_KBD_OBUF:
        s[S_PENDING_CMD] = cmd;
        return;
      case CMD_AUX_DISABLE:
        s[S_CTR] = (s[S_CTR] ?? 0) | CTR_AUX_DISABLE;
        return;
      case CMD_AUX_ENABLE:
        s[S_CTR] = (s[S_CTR] ?? 0) & ~CTR_AUX_DISABLE;
        return;
      case CMD_AUX_TEST:
      case CMD_KBD_TEST:
        this.#push(0x00);
        return;
      case CMD_SELF_TEST:
        s[S_STATUS] = (s[S_STATUS] ?? 0) | STATUS_SYS;
        this.#push(0x55);
        return;
      case CMD_KBD_DISABLE:
        s[S_CTR] = (s[S_CTR] ?? 0) | CTR_KBD_DISABLE;
        return;
      case CMD_KBD_ENABLE:
        s[S_CTR] = (s[S_CTR] ?? 0) & ~CTR_KBD_DISABLE;
        return;
      case CMD_READ_OUTP:
        this.#push(s[S_OUTP] ?? 0);
        return;
      case CMD_RESET:
        this.#env.requestStop(0, "guest reset via i8042");
        return;
      default:
        // Unknown commands (and the 0xF0..0xFF pulse commands other than reset) do nothing.
        return;
    }
  }

  #data(v: number): void {
    const s = this.#s;
    const pending = s[S_PENDING_CMD] ?? 0;
    s[S_PENDING_CMD] = 0;
    switch (pending) {
      case CMD_WRITE_CTR:
        s[S_CTR] = v;
        s[S_STATUS] = ((s[S_STATUS] ?? 0) & ~STATUS_SYS) | (v & CTR_SYS);
        this.#update();
        return;
      case CMD_WRITE_OUTP:
        s[S_OUTP] = v;
        if ((v & OUTP_RESET_RELEASED) === 0) {
          this.#env.requestStop(0, "guest reset via i8042");
        }
        return;
      case CMD_WRITE_KBD_OBUF:
        this.#push(v);
        return;
      default:
        this.#keyboard(v);
    }
  }

  /** A byte sent to the keyboard: acknowledge, answering reset and identify like a PS/2 keyboard. */
  #keyboard(v: number): void {
    if (v === KBD_ECHO) {
      this.#push(KBD_ECHO);
      return;
    }
    this.#push(KBD_ACK);
    if (v === KBD_RESET) this.#push(0xaa);
    else if (v === KBD_IDENTIFY) {
      this.#push(0xab);
      this.#push(0x83);
    }
  }

  #push(v: number): void {
    const s = this.#s;
    const count = Math.min(s[S_Q_COUNT] ?? 0, Q_BYTES);
    if (count >= Q_BYTES) return; // a real controller has one byte; we drop beyond eight
    const head = (s[S_Q_HEAD] ?? 0) % Q_BYTES;
    s[S_Q + ((head + count) % Q_BYTES)] = v;
    s[S_Q_COUNT] = count + 1;
    this.#update();
  }

  #update(): void {
    const s = this.#s;
    const full = (s[S_Q_COUNT] ?? 0) > 0;
    s[S_STATUS] = full ? (s[S_STATUS] ?? 0) | STATUS_OBF : (s[S_STATUS] ?? 0) & ~STATUS_OBF;
    const level = full && ((s[S_CTR] ?? 0) & CTR_KBD_INT) !== 0 ? 1 : 0;
    if (s[S_IRQ] !== level) {
      s[S_IRQ] = level;
      this.#env.setIrq(this.#irq, level === 1);
    }
  }
}
