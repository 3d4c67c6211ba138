/**
 * The MC146818 CMOS real-time clock (ports 0x70 index, 0x71 data): date and
 * time from the host's UTC clock (BCD unless register B selects binary; 24 h
 * unless it selects 12 h), registers A (UIP always clear), B, C (cleared on
 * read) and D (VRT set), 128 bytes of CMOS RAM, and the memory-size fields
 * firmware-less guests and Linux read (0x15-0x18, 0x30-0x31, 0x34-0x35,
 * 0x5b-0x5d). The guest may set the clock; that becomes an offset from host
 * time. Bit 7 of the index port (NMI mask) is ignored.
 *
 * @module
 */

import { MMIO_GAP_START } from "../guest_memory.ts";
import type { AddressRange, Device, DeviceEnv } from "./device.ts";
import { checkStateSize, type DeviceSpec, DeviceSpecError } from "./spec.ts";
import { decodeDeviceState, DeviceStateError, encodeDeviceState } from "./state.ts";

/** Device kind of the CMOS RTC. */
export const RTC_KIND = "cmos_rtc";
const STATE_VERSION = 1;

/** Index port. */
export const RTC_INDEX_PORT = 0x70;
/** Data port. */
export const RTC_DATA_PORT = 0x71;

const REG_SECONDS = 0x00;
const REG_MINUTES = 0x02;
const REG_HOURS = 0x04;
const REG_WEEKDAY = 0x06;
const REG_DAY = 0x07;
const REG_MONTH = 0x08;
const REG_YEAR = 0x09;
const REG_A = 0x0a;
const REG_B = 0x0b;
const REG_C = 0x0c;
const REG_D = 0x0d;
const REG_CENTURY = 0x32;
const TIME_REGS: readonly number[] = [
  REG_SECONDS,
  REG_MINUTES,
  REG_HOURS,
  REG_WEEKDAY,
  REG_DAY,
  REG_MONTH,
  REG_YEAR,
  REG_CENTURY,
];

const A_UIP = 0x80;
const B_SET = 0x80;
const B_DM_BINARY = 0x04;
const B_24H = 0x02;
const D_VRT = 0x80;
const HOUR_PM = 0x80;

/** Bytes of CMOS RAM. */
export const CMOS_BYTES = 128;

// State layout.
const S_INDEX = 0;
const S_OFFSET = 8; // f64 seconds added to host time (guest-set clock)
const S_RAM = 16;
/** Size of the state buffer of a {@link CmosRtc}. */
export const RTC_STATE_BYTES: number = S_RAM + CMOS_BYTES;

const KIB = 1024;
const MIB = 1024 * KIB;

/**
 * Creates the spec of the RTC, with the CMOS memory-size fields filled in
 * for `memBytes` of RAM laid out as {@link x86Layout} does.
 */
export function rtcSpec(memBytes: number, name = "rtc"): DeviceSpec {
  if (!Number.isSafeInteger(memBytes) || memBytes < 0) {
    throw new DeviceSpecError(name, `memory size ${memBytes} must be a non-negative integer`);
  }
  const state = new SharedArrayBuffer(RTC_STATE_BYTES);
  const ram = new Uint8Array(state, S_RAM, CMOS_BYTES);
  ram[REG_A] = 0x26; // 32.768 kHz time base, 1024 Hz periodic rate
  ram[REG_B] = B_24H;
  ram[REG_D] = D_VRT;
  const below = Math.min(memBytes, MMIO_GAP_START);
  const above = memBytes - below;
  const set16 = (at: number, v: number): void => {
    ram[at] = v & 0xff;
    ram[at + 1] = (v >> 8) & 0xff;
  };
  set16(0x15, Math.min(Math.floor(below / KIB), 640));
  const ext = below > MIB ? Math.min(Math.floor((below - MIB) / KIB), 0xffff) : 0;
  set16(0x17, ext);
  set16(0x30, ext);
  const hi = below > 16 * MIB ? Math.min(Math.floor((below - 16 * MIB) / (64 * KIB)), 0xffff) : 0;
  set16(0x34, hi);
  const above64k = Math.min(Math.floor(above / (64 * KIB)), 0xff_ffff);
  ram[0x5b] = above64k & 0xff;
  ram[0x5c] = (above64k >> 8) & 0xff;
  ram[0x5d] = (above64k >> 16) & 0xff;
  return { kind: RTC_KIND, name, config: { memBytes }, state };
}

/** Per-thread options. */
export interface RtcOptions {
  /** Host clock in milliseconds since the epoch (tests); defaults to `Date.now`. */
  readonly now?: () => number;
}

/** The CMOS RTC. All state is in the spec's shared buffer (guarded by the bus lock). */
export class CmosRtc implements Device {
  /** Stable name. */
  readonly name: string;
  /** Ports 0x70 and 0x71. */
  readonly ports: readonly AddressRange[] = [{ base: RTC_INDEX_PORT, length: 2 }];
  /** None. */
  readonly mmio: readonly AddressRange[] = [];
  readonly #s: Uint8Array;
  readonly #dv: DataView;
  readonly #now: () => number;

  /**
   * Builds this thread's instance over `spec.state`.
   *
   * @example
   * ```ts
   * import { CmosRtc, rtcSpec } from "./rtc.ts";
   * const rtc = new CmosRtc(rtcSpec(256 * 1024 * 1024), { setIrq() {}, requestStop() {} });
   * rtc.write(0x70, 1, 0x09);
   * console.log(rtc.read(0x71, 1).toString(16)); // the year, in BCD
   * ```
   */
  constructor(spec: DeviceSpec, _env: DeviceEnv, options: RtcOptions = {}) {
    if (spec.kind !== RTC_KIND) {
      throw new DeviceSpecError(spec.name, `kind '${spec.kind}' is not '${RTC_KIND}'`);
    }
    checkStateSize(spec, RTC_STATE_BYTES);
    this.name = spec.name;
    this.#s = new Uint8Array(spec.state);
    this.#dv = new DataView(spec.state);
    this.#now = options.now ?? Date.now;
  }

  /** Guest read: the index register reads back; the data port reads the selected register. */
  read(addr: number, _size: number): number {
    const s = this.#s;
    if (addr === RTC_INDEX_PORT) return s[S_INDEX] ?? 0;
    if (addr !== RTC_DATA_PORT) return 0xff;
    const reg = (s[S_INDEX] ?? 0) & 0x7f;
    switch (reg) {
      case REG_A:
        return (s[S_RAM + REG_A] ?? 0) & ~A_UIP;
      case REG_C: {
        const v = s[S_RAM + REG_C] ?? 0;
        s[S_RAM + REG_C] = 0;
        return v;
      }
      case REG_D:
        return D_VRT;
      default:
        if (TIME_REGS.includes(reg) && ((s[S_RAM + REG_B] ?? 0) & B_SET) === 0) {
          this.#latch();
        }
        return s[S_RAM + reg] ?? 0;
    }
  }

  /** Guest write: selects a register (index port) or writes it (data port). */
  write(addr: number, _size: number, value: number): void {
    const s = this.#s;
    const v = value & 0xff;
    if (addr === RTC_INDEX_PORT) {
      s[S_INDEX] = v & 0x7f; // bit 7 masks NMI on a PC; nothing to mask here
      return;
    }
    if (addr !== RTC_DATA_PORT) return;
    const reg = (s[S_INDEX] ?? 0) & 0x7f;
    const b = s[S_RAM + REG_B] ?? 0;
    switch (reg) {
      case REG_A:
        s[S_RAM + REG_A] = v & ~A_UIP;
        return;
      case REG_B:
        if ((b & B_SET) === 0 && (v & B_SET) !== 0) this.#latch(); // freeze what the guest edits
        s[S_RAM + REG_B] = v;
        if ((b & B_SET) !== 0 && (v & B_SET) === 0) this.#setClockFromRam();
        return;
      case REG_C:
      case REG_D:
        return; // read-only
      default:
        if (TIME_REGS.includes(reg)) {
          if ((b & B_SET) === 0) {
            // A running clock: apply the write at once.
            this.#latch();
            s[S_RAM + reg] = v;
            this.#setClockFromRam();
          } else s[S_RAM + reg] = v;
          return;
        }
        s[S_RAM + reg] = v;
    }
  }

  /** Saves the index, clock offset and CMOS RAM. */
  save(): Uint8Array {
    return encodeDeviceState(RTC_KIND, STATE_VERSION, this.#s.slice());
  }

  /** Restores state from {@link CmosRtc.save}. */
  restore(state: Uint8Array): void {
    const body = decodeDeviceState(RTC_KIND, STATE_VERSION, RTC_STATE_BYTES, state);
    const off = new DataView(body.buffer, body.byteOffset, body.byteLength).getFloat64(
      S_OFFSET,
      true,
    );
    if (!Number.isFinite(off)) throw new DeviceStateError(RTC_KIND, "clock offset is not finite");
    this.#s.set(body);
  }

  /** Writes the current guest time into the time registers in the current format. */
  #latch(): void {
    const s = this.#s;
    const b = s[S_RAM + REG_B] ?? 0;
    const binary = (b & B_DM_BINARY) !== 0;
    const enc = (n: number): number => binary ? n : ((Math.floor(n / 10) << 4) | (n % 10));
    const t = new Date(this.#now() + this.#dv.getFloat64(S_OFFSET, true) * 1000);
    const hour = t.getUTCHours();
    let hourReg: number;
    if ((b & B_24H) !== 0) hourReg = enc(hour);
    else hourReg = enc(hour % 12 === 0 ? 12 : hour % 12) | (hour >= 12 ? HOUR_PM : 0);
    s[S_RAM + REG_SECONDS] = enc(t.getUTCSeconds());
    s[S_RAM + REG_MINUTES] = enc(t.getUTCMinutes());
    s[S_RAM + REG_HOURS] = hourReg;
    s[S_RAM + REG_WEEKDAY] = enc(t.getUTCDay() + 1);
    s[S_RAM + REG_DAY] = enc(t.getUTCDate());
    s[S_RAM + REG_MONTH] = enc(t.getUTCMonth() + 1);
    s[S_RAM + REG_YEAR] = enc(t.getUTCFullYear() % 100);
    s[S_RAM + REG_CENTURY] = enc(Math.floor(t.getUTCFullYear() / 100));
  }

  /** Makes the time in the registers the guest's clock, as an offset from host time. */
  #setClockFromRam(): void {
    const s = this.#s;
    const b = s[S_RAM + REG_B] ?? 0;
    const binary = (b & B_DM_BINARY) !== 0;
    const dec = (v: number): number => binary ? v : (v >> 4) * 10 + (v & 0x0f);
    const hourReg = s[S_RAM + REG_HOURS] ?? 0;
    let hour = dec(hourReg & 0x7f);
    if ((b & B_24H) === 0) hour = (hour % 12) + ((hourReg & HOUR_PM) !== 0 ? 12 : 0);
    const year = dec(s[S_RAM + REG_CENTURY] ?? 0) * 100 + dec(s[S_RAM + REG_YEAR] ?? 0);
    const ms = Date.UTC(
      year,
      dec(s[S_RAM + REG_MONTH] ?? 1) - 1,
      dec(s[S_RAM + REG_DAY] ?? 1),
      hour,
      dec(s[S_RAM + REG_MINUTES] ?? 0),
      dec(s[S_RAM + REG_SECONDS] ?? 0),
    );
    // Garbage from a hostile guest gives NaN or absurd dates; keep the old clock then.
    if (!Number.isFinite(ms)) return;
    this.#dv.setFloat64(S_OFFSET, Math.round((ms - this.#now()) / 1000), true);
  }
}
