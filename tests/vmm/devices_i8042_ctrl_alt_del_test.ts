import assert from "node:assert/strict";
import { type DeviceEnv, I8042, i8042Spec } from "../../vmm/devices/mod.ts";

function rig(): { kbc: I8042; irqs: Array<[number, boolean]> } {
  const irqs: Array<[number, boolean]> = [];
  const env: DeviceEnv = { setIrq: (g, l) => irqs.push([g, l]), requestStop: () => {} };
  return { kbc: new I8042(i8042Spec(), env), irqs };
}

function drain(kbc: I8042): number[] {
  const out: number[] = [];
  while ((kbc.read(0x64, 1) & 1) !== 0) out.push(kbc.read(0x60, 1));
  return out;
}

Deno.test("i8042 Ctrl-Alt-Del queues set 1 make codes with translation on and raises IRQ 1", () => {
  const { kbc, irqs } = rig();
  assert.equal(kbc.sendCtrlAltDel(), true);
  assert.deepEqual(irqs[0], [1, true]);
  assert.deepEqual(drain(kbc), [0x1d, 0x38, 0xe0, 0x53]);
});

Deno.test("i8042 Ctrl-Alt-Del queues set 2 codes when the guest turned translation off", () => {
  const { kbc } = rig();
  kbc.write(0x64, 1, 0x60); // write command byte
  kbc.write(0x60, 1, 0x05); // keyboard interrupt + system flag, no translation
  assert.equal(kbc.sendCtrlAltDel(), true);
  assert.deepEqual(drain(kbc), [0x14, 0x11, 0xe0, 0x71]);
});

Deno.test("i8042 Ctrl-Alt-Del refuses, queueing nothing, when the guest leaves the buffer full", () => {
  const { kbc } = rig();
  assert.equal(kbc.sendCtrlAltDel(), true);
  assert.equal(kbc.sendCtrlAltDel(), true); // 8 bytes: full
  assert.equal(kbc.sendCtrlAltDel(), false);
  assert.deepEqual(drain(kbc), [0x1d, 0x38, 0xe0, 0x53, 0x1d, 0x38, 0xe0, 0x53]);
});
