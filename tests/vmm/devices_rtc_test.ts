import assert from "node:assert/strict";
import { CmosRtc, type DeviceEnv, rtcSpec } from "../../vmm/devices/mod.ts";

const env: DeviceEnv = { setIrq() {}, requestStop() {} };
const MIB = 1024 * 1024;

function reg(rtc: CmosRtc, index: number): number {
  rtc.write(0x70, 1, index);
  return rtc.read(0x71, 1);
}

function setReg(rtc: CmosRtc, index: number, v: number): void {
  rtc.write(0x70, 1, index);
  rtc.write(0x71, 1, v);
}

function readClock(rtc: CmosRtc, binary: boolean): number {
  const dec = (v: number) => binary ? v : (v >> 4) * 10 + (v & 0xf);
  const b = reg(rtc, 0x0b);
  const h = reg(rtc, 0x04);
  let hour = dec(h & 0x7f);
  if ((b & 0x02) === 0) hour = (hour % 12) + ((h & 0x80) !== 0 ? 12 : 0);
  return Date.UTC(
    dec(reg(rtc, 0x32)) * 100 + dec(reg(rtc, 0x09)),
    dec(reg(rtc, 0x08)) - 1,
    dec(reg(rtc, 0x07)),
    hour,
    dec(reg(rtc, 0x02)),
    dec(reg(rtc, 0x00)),
  );
}

Deno.test("rtc reports host UTC time in BCD, 24-hour mode, by default", () => {
  const rtc = new CmosRtc(rtcSpec(256 * MIB), env);
  assert.equal(reg(rtc, 0x0b) & 0x06, 0x02);
  const before = Date.now();
  // Registers are read one by one; retry if a second ticked over between them.
  let t = readClock(rtc, false);
  for (let i = 0; i < 5 && readClock(rtc, false) !== t; i++) t = readClock(rtc, false);
  assert.ok(Math.abs(t - before) < 3000, `rtc ${new Date(t).toISOString()} vs host`);
  const weekday = reg(rtc, 0x06);
  assert.equal(weekday, new Date(t).getUTCDay() + 1);
  for (const r of [0x00, 0x02, 0x04, 0x07, 0x08, 0x09]) {
    const v = reg(rtc, r);
    assert.ok((v & 0x0f) <= 9 && (v >> 4) <= 9, `register ${r} = 0x${v.toString(16)} is BCD`);
  }
});

Deno.test("rtc switches to binary and 12-hour formats from register B", () => {
  const fixed = Date.UTC(2031, 6, 9, 15, 4, 5); // 15:04:05 → 3 PM
  const rtc = new CmosRtc(rtcSpec(256 * MIB), env, { now: () => fixed });
  assert.equal(reg(rtc, 0x04), 0x15);
  setReg(rtc, 0x0b, 0x04 | 0x02); // binary, 24 h
  assert.equal(reg(rtc, 0x04), 15);
  assert.equal(reg(rtc, 0x09), 31);
  assert.equal(reg(rtc, 0x08), 7);
  assert.equal(readClock(rtc, true), fixed);
  setReg(rtc, 0x0b, 0x04); // binary, 12 h
  assert.equal(reg(rtc, 0x04), 0x80 | 3);
  setReg(rtc, 0x0b, 0x00); // BCD, 12 h
  assert.equal(reg(rtc, 0x04), 0x83);
  assert.equal(reg(rtc, 0x32), 0x20);
});

Deno.test("rtc keeps UIP clear, VRT set and clears register C on read", () => {
  const rtc = new CmosRtc(rtcSpec(64 * MIB), env);
  assert.equal(reg(rtc, 0x0a) & 0x80, 0);
  assert.equal(reg(rtc, 0x0d), 0x80);
  assert.equal(reg(rtc, 0x0c), 0);
  // The NMI-mask bit of the index is ignored.
  assert.equal(reg(rtc, 0x8d), 0x80);
  setReg(rtc, 0x40, 0x77);
  assert.equal(reg(rtc, 0x40), 0x77);
});

Deno.test("rtc lets the guest set its clock as an offset from host time", () => {
  let now = Date.UTC(2026, 0, 1, 0, 0, 0);
  const rtc = new CmosRtc(rtcSpec(64 * MIB), env, { now: () => now });
  setReg(rtc, 0x0b, 0x82); // SET: freeze
  setReg(rtc, 0x32, 0x19);
  setReg(rtc, 0x09, 0x99);
  setReg(rtc, 0x08, 0x12);
  setReg(rtc, 0x07, 0x31);
  setReg(rtc, 0x04, 0x23);
  setReg(rtc, 0x02, 0x59);
  setReg(rtc, 0x00, 0x50);
  setReg(rtc, 0x0b, 0x02);
  now += 20_000;
  assert.equal(readClock(rtc, false), Date.UTC(2000, 0, 1, 0, 0, 10));
  const copy = new CmosRtc(rtcSpec(64 * MIB), env, { now: () => now });
  copy.restore(rtc.save());
  assert.equal(readClock(copy, false), Date.UTC(2000, 0, 1, 0, 0, 10));
});

Deno.test("rtc CMOS memory-size fields describe guest RAM below and above 4 GiB", () => {
  const small = new CmosRtc(rtcSpec(256 * MIB), env);
  const w = (rtc: CmosRtc, r: number) => reg(rtc, r) | (reg(rtc, r + 1) << 8);
  assert.equal(w(small, 0x15), 640);
  assert.equal(w(small, 0x17), 0xffff);
  assert.equal(w(small, 0x30), 0xffff);
  assert.equal(w(small, 0x34), (256 - 16) * 16);
  assert.equal(reg(small, 0x5b) | reg(small, 0x5c) | reg(small, 0x5d), 0);
  const tiny = new CmosRtc(rtcSpec(8 * MIB), env);
  assert.equal(w(tiny, 0x17), 7 * 1024);
  assert.equal(w(tiny, 0x34), 0);
  const big = new CmosRtc(rtcSpec(5 * 1024 * MIB), env);
  assert.equal(w(big, 0x34), (3072 - 16) * 16);
  const above = reg(big, 0x5b) | (reg(big, 0x5c) << 8) | (reg(big, 0x5d) << 16);
  assert.equal(above, (2 * 1024 * MIB) / 65536);
});
