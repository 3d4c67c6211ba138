import assert from "node:assert/strict";
import { type DeviceEnv, I8042, i8042Spec } from "../../vmm/devices/mod.ts";

function rig(): { kbc: I8042; stops: Array<[number, string]>; irqs: Array<[number, boolean]> } {
  const stops: Array<[number, string]> = [];
  const irqs: Array<[number, boolean]> = [];
  const env: DeviceEnv = {
    setIrq: (g, l) => irqs.push([g, l]),
    requestStop: (s, r) => stops.push([s, r]),
  };
  return { kbc: new I8042(i8042Spec(), env), stops, irqs };
}

Deno.test("i8042 command 0xFE on port 0x64 powers the microVM off with status 0", () => {
  const { kbc, stops } = rig();
  kbc.write(0x64, 1, 0xfe);
  assert.deepEqual(stops, [[0, "guest reset via i8042"]]);
});

Deno.test("i8042 output-port write clearing the reset bit powers off too", () => {
  const { kbc, stops } = rig();
  kbc.write(0x64, 1, 0xd0);
  assert.equal(kbc.read(0x60, 1) & 1, 1);
  kbc.write(0x64, 1, 0xd1);
  kbc.write(0x60, 1, 0x02);
  assert.deepEqual(stops, [[0, "guest reset via i8042"]]);
});

Deno.test("i8042 answers the self test, command byte and port tests Linux sends", () => {
  const { kbc, stops } = rig();
  assert.equal(kbc.read(0x64, 1) & 0x01, 0); // output buffer empty
  kbc.write(0x64, 1, 0xaa);
  assert.equal(kbc.read(0x64, 1) & 0x05, 0x05); // OBF and system flag
  assert.equal(kbc.read(0x60, 1), 0x55);
  assert.equal(kbc.read(0x64, 1) & 0x01, 0);
  kbc.write(0x64, 1, 0x20);
  const ctr = kbc.read(0x60, 1);
  assert.equal(ctr & 0x01, 0x01);
  kbc.write(0x64, 1, 0x60);
  kbc.write(0x60, 1, ctr & ~0x01);
  kbc.write(0x64, 1, 0x20);
  assert.equal(kbc.read(0x60, 1), ctr & ~0x01);
  kbc.write(0x64, 1, 0xab);
  assert.equal(kbc.read(0x60, 1), 0x00);
  assert.equal(kbc.read(0x64, 1) & 0x08, 0x08); // last write was a command
  assert.deepEqual(stops, []);
});

Deno.test("i8042 keyboard acknowledges reset and identify with an interrupt per byte", () => {
  const { kbc, irqs } = rig();
  kbc.write(0x60, 1, 0xff);
  assert.deepEqual(irqs, [[1, true]]);
  assert.equal(kbc.read(0x60, 1), 0xfa);
  assert.deepEqual(irqs, [[1, true], [1, false], [1, true]]);
  assert.equal(kbc.read(0x60, 1), 0xaa);
  assert.deepEqual(irqs.at(-1), [1, false]);
  kbc.write(0x60, 1, 0xf2);
  assert.deepEqual([kbc.read(0x60, 1), kbc.read(0x60, 1), kbc.read(0x60, 1)], [0xfa, 0xab, 0x83]);
  assert.equal(kbc.read(0x64, 1) & 0x01, 0);
});

Deno.test("i8042 save and restore carry the command byte and pending output", () => {
  const a = rig();
  a.kbc.write(0x64, 1, 0x60);
  a.kbc.write(0x60, 1, 0x44);
  a.kbc.write(0x64, 1, 0xaa);
  const b = rig();
  b.kbc.restore(a.kbc.save());
  assert.equal(b.kbc.read(0x60, 1), 0x55);
  b.kbc.write(0x64, 1, 0x20);
  assert.equal(b.kbc.read(0x60, 1), 0x44);
  assert.throws(() => b.kbc.restore(new Uint8Array(10)), /device state \(i8042\)/);
});
