import assert from "node:assert/strict";
import { buildFrame, PacketClass } from "../../netguard/mod.ts";
import {
  FILTER_SNAP,
  FilterVerdict,
  NET_INBOUND,
  NET_OUTBOUND,
  NetBlockPort,
  NetFilterError,
  NetFrameFilter,
  RING_SLOTS,
} from "../../vmm/devices/virtio/net_filter.ts";

const UDP = buildFrame({ src: "203.0.113.7", dst: "10.0.0.2", proto: "udp", dport: 53 });
const ICMP = buildFrame({ src: "203.0.113.7", dst: "10.0.0.2", proto: "icmp" });
const T0 = 1_800_000_000_000;

function modes(entries: [number, number][]): Uint8Array {
  const m = new Uint8Array(10);
  for (const [c, v] of entries) m[c] = v;
  return m;
}

Deno.test("a published drop blocks only its class and direction, and clearing lifts it", () => {
  const port = NetBlockPort.create();
  const filter = new NetFrameFilter(port.buffer);
  assert.equal(filter.blocking(NET_INBOUND), false);
  port.publish(NET_INBOUND, modes([[PacketClass.udp, 1]]), 0);
  assert.equal(filter.blocking(NET_INBOUND), true);
  assert.equal(filter.blocking(NET_OUTBOUND), false);
  assert.equal(filter.verdict(NET_INBOUND, UDP, 0, UDP.length, T0), FilterVerdict.BLOCKED);
  assert.equal(filter.verdict(NET_INBOUND, ICMP, 0, ICMP.length, T0), FilterVerdict.PASS);
  assert.equal(filter.verdict(NET_OUTBOUND, UDP, 0, UDP.length, T0), FilterVerdict.PASS);
  port.clear();
  assert.equal(filter.blocking(NET_INBOUND), false);
  assert.equal(filter.verdict(NET_INBOUND, UDP, 0, UDP.length, T0), FilterVerdict.PASS);
  assert.throws(() => port.publish(2, modes([]), 0), NetFilterError);
  assert.throws(() => port.publish(NET_INBOUND, modes([[1, 3]]), 0), NetFilterError);
});

Deno.test("a rate limit lets one second's burst and then the rate through, and drops the rest", () => {
  const port = NetBlockPort.create();
  const filter = new NetFrameFilter(port.buffer);
  port.publish(NET_OUTBOUND, modes([[PacketClass.udp, 2]]), 100);
  let passed = 0;
  // 2 s at 1000 pps: a full bucket of 100, then 100/s.
  for (let i = 0; i < 2000; i++) {
    const v = filter.verdict(NET_OUTBOUND, UDP, 0, UDP.length, T0 + i);
    if (v === FilterVerdict.PASS) passed++;
    else assert.equal(v, FilterVerdict.LIMITED);
  }
  assert.ok(passed >= 295 && passed <= 302, `passed ${passed}`);
  assert.equal(filter.verdict(NET_OUTBOUND, ICMP, 0, ICMP.length, T0 + 2000), FilterVerdict.PASS);
});

Deno.test("the device keeps its old table while the main thread is writing a new one (seqlock)", () => {
  const port = NetBlockPort.create();
  const filter = new NetFrameFilter(port.buffer);
  port.publish(NET_INBOUND, modes([[PacketClass.udp, 1]]), 0);
  assert.equal(filter.verdict(NET_INBOUND, UDP, 0, UDP.length, T0), FilterVerdict.BLOCKED);
  // A writer half-way: sequence odd, the udp mode already rewritten.
  const w = new Int32Array(port.buffer, 0, 64);
  Atomics.add(w, 1, 1);
  Atomics.store(w, 4 + PacketClass.udp, 0);
  Atomics.store(w, 4 + PacketClass.icmp, 1);
  assert.equal(filter.verdict(NET_INBOUND, UDP, 0, UDP.length, T0), FilterVerdict.BLOCKED);
  assert.equal(filter.verdict(NET_INBOUND, ICMP, 0, ICMP.length, T0), FilterVerdict.PASS);
  Atomics.add(w, 1, 1);
  assert.equal(filter.verdict(NET_INBOUND, UDP, 0, UDP.length, T0), FilterVerdict.PASS);
  assert.equal(filter.verdict(NET_INBOUND, ICMP, 0, ICMP.length, T0), FilterVerdict.BLOCKED);
});

Deno.test("dropped outbound frames come back through the ring in order, and a full ring's drops as copies of the last", () => {
  const port = NetBlockPort.create();
  const filter = new NetFrameFilter(port.buffer);
  const big = new Uint8Array(1000).fill(0xab);
  big.set(UDP);
  filter.report(UDP, 0, UDP.length, UDP.length, T0);
  filter.report(big, 0, big.length, 1000, T0 + 1);
  const got: [number, number, number, number][] = [];
  const n = port.drain((buf, off, len, wire, ts) => {
    got.push([len, wire, ts, buf[off + len - 1] ?? -1]);
    assert.deepEqual(buf.slice(off, off + 14), UDP.slice(0, 14));
  });
  assert.equal(n, 2);
  assert.deepEqual(got, [
    [UDP.length, UDP.length, T0, UDP[UDP.length - 1] ?? 0],
    [FILTER_SNAP, 1000, T0 + 1, 0xab],
  ]);
  assert.equal(port.drain(() => assert.fail("drained twice")), 0);
  for (let i = 0; i < RING_SLOTS + 5; i++) {
    const f = Uint8Array.from(UDP);
    f[f.length - 1] = i & 0xff;
    filter.report(f, 0, f.length, f.length, T0 + 10 + i);
  }
  const last: number[] = [];
  assert.equal(port.drain((buf, off, len) => last.push(buf[off + len - 1] ?? -1)), RING_SLOTS + 5);
  const keptLast = (RING_SLOTS - 1) & 0xff;
  assert.deepEqual(last.slice(-6), Array(6).fill(keptLast));
  assert.equal(last[0], 0);
  // The ring goes on after an overflow.
  filter.report(ICMP, 0, ICMP.length, ICMP.length, T0 + 5000);
  assert.equal(port.drain(() => {}), 1);
});
