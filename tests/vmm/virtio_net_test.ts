import assert from "node:assert/strict";
import { LiveReader } from "../../netguard/mod.ts";
import { MmioAllocator } from "../../vmm/devices/mmio_allocator.ts";
import { VirtioDeviceHost } from "../../vmm/devices/virtio/host.ts";
import { Q, queueWord } from "../../vmm/devices/virtio/layout.ts";
import { VirtioMmioTransport } from "../../vmm/devices/virtio/mmio.ts";
import { netDevice, NetStat, setNetRateLimiters } from "../../vmm/devices/virtio/net_format.ts";
import { sleep, waitFor } from "../netguard/helpers.ts";
import { benchFrame, FRAME_LEN } from "../../bench/net_frames.ts";
import { R, S, type Used } from "./virtio_driver.ts";
import { BUFS, F, type NetRig, netRig, startDriver } from "./virtio_net_rig.ts";

const BASE = F.VERSION_1 | F.MAC | F.STATUS;
const HDR = 12;

/** Posts `n` receive buffers of `size` bytes from `at`; returns their addresses by head. */
function postRx(r: NetRig, n: number, size: number, at = BUFS): Map<number, number> {
  const byHead = new Map<number, number>();
  r.drv.use(0);
  for (let i = 0; i < n; i++) {
    const addr = at + i * size;
    byHead.set(r.drv.addChain([{ addr, len: size, write: true }]), addr);
  }
  r.drv.kick(0);
  return byHead;
}

/** Sends pings of `size` payload bytes from the namespace to the device's address. */
async function ping(r: NetRig, count: number, size = 56): Promise<void> {
  await r.ns.exec(
    ["ping", "-c", String(count), "-i", "0.05", "-W", "1", "-s", String(size), "10.95.0.2"],
    true,
  );
}

/** Frames of the used receive entries, reassembled by num_buffers. */
function frames(r: NetRig, used: Used[], byHead: Map<number, number>): Uint8Array[] {
  const out: Uint8Array[] = [];
  for (let i = 0; i < used.length;) {
    const first = used[i];
    if (first === undefined) break;
    const hdr = r.mem.view(byHead.get(first.id) ?? 0, HDR);
    const n = hdr[10]! | (hdr[11]! << 8);
    assert.ok(n >= 1 && i + n <= used.length, `num_buffers ${n} at ${i} of ${used.length}`);
    const parts = used.slice(i, i + n).map((u) => r.mem.view(byHead.get(u.id) ?? 0, u.len).slice());
    const total = parts.reduce((s, p) => s + p.length, 0);
    const f = new Uint8Array(total);
    let off = 0;
    for (const p of parts) {
      f.set(p, off);
      off += p.length;
    }
    out.push(f);
    i += n;
  }
  return out;
}

function isEchoRequest(f: Uint8Array, payload: number): boolean {
  const e = HDR;
  return f.length === HDR + 14 + 20 + 8 + payload && f[e + 12] === 0x08 && f[e + 13] === 0 &&
    f[e + 14 + 9] === 1 && f[e + 14 + 20] === 8;
}

Deno.test("virtio-net offers its features and shows its MAC and link in the configuration space (root, netns)", async () => {
  const r = await netRig();
  try {
    const f = r.drv.deviceFeatures();
    for (
      const bit of [F.VERSION_1, F.MAC, F.STATUS, F.MRG_RXBUF, F.CSUM, F.HOST_TSO4, F.EVENT_IDX]
    ) {
      assert.ok((f & bit) !== 0n, `feature ${bit.toString(2).length - 1} offered`);
    }
    assert.equal(r.drv.read(R.DEVICE_ID), 1);
    const mac = [0, 1, 2, 3, 4, 5].map((i) => r.drv.config(i, 1));
    assert.deepEqual(mac, [2, 0, 0, 0, 0x95, 2]);
    assert.equal(r.drv.config(6, 2), 1, "VIRTIO_NET_S_LINK_UP");
    assert.equal(r.drv.config(8, 2), 1, "one queue pair");
  } finally {
    await r.close();
  }
});

Deno.test("frames sent from the namespace arrive in receive buffers behind a header with num_buffers 1 (root, netns)", async () => {
  const r = await netRig();
  try {
    startDriver(r, BASE);
    const byHead = postRx(r, 16, 1536);
    await ping(r, 3);
    const used = await r.drv.use(0).collect(3);
    const got = frames(r, used, byHead);
    assert.equal(got.length, 3);
    for (const f of got) {
      assert.ok(isEchoRequest(f, 56), `not the echo request: ${f.length} bytes`);
      assert.equal(f[0], 0, "flags zero without GUEST_CSUM");
      assert.equal(f[10]! | (f[11]! << 8), 1);
    }
    assert.equal(r.stats.get(NetStat.RX_FRAMES), 3);
    assert.equal(r.stats.get(NetStat.RX_BYTES), 3 * (14 + 20 + 8 + 56));
  } finally {
    await r.close();
  }
});

Deno.test("with MRG_RXBUF a 1428-byte frame fills six 256-byte buffers that appear at once (root, netns)", async () => {
  const r = await netRig();
  try {
    startDriver(r, BASE | F.MRG_RXBUF, 128);
    const byHead = postRx(r, 100, 256);
    await ping(r, 2, 1400);
    const used = await r.drv.use(0).collect(12);
    const got = frames(r, used, byHead);
    assert.equal(got.length, 2);
    for (const f of got) assert.ok(isEchoRequest(f, 1400), `${f.length} bytes`);
    assert.deepEqual(used.slice(0, 6).map((u) => u.len), [
      256,
      256,
      256,
      256,
      256,
      HDR + 42 + 1400 - 5 * 256,
    ]);
    // iputils ping fills byte i of the payload with i after a 16-byte timeval.
    const payload = got[0]!.subarray(HDR + 42);
    for (let i = 16; i < 1400; i++) assert.equal(payload[i], i & 0xff, `payload byte ${i}`);
  } finally {
    await r.close();
  }
});

Deno.test("without MRG_RXBUF a frame larger than its buffer is dropped and counted; smaller ones pass (root, netns)", async () => {
  const r = await netRig();
  try {
    startDriver(r, BASE);
    const byHead = postRx(r, 4, 512);
    await ping(r, 1, 1400);
    await sleep(100);
    assert.equal(r.drv.use(0).takeUsed().length, 0);
    assert.equal(r.stats.get(NetStat.RX_TOO_BIG), 1);
    await ping(r, 1, 100);
    const got = frames(r, await r.drv.collect(1), byHead);
    assert.ok(isEchoRequest(got[0] ?? new Uint8Array(), 100));
  } finally {
    await r.close();
  }
});

Deno.test("frames wait in the TAP while the guest has no receive buffers and arrive once it adds some (root, netns)", async () => {
  const r = await netRig();
  try {
    startDriver(r, BASE | F.EVENT_IDX);
    await ping(r, 3);
    await sleep(50);
    assert.ok(r.stats.get(NetStat.RX_NO_BUFFERS) >= 1);
    const byHead = postRx(r, 8, 1536);
    const got = frames(r, await r.drv.use(0).collect(3), byHead);
    assert.equal(got.filter((f) => isEchoRequest(f, 56)).length, 3);
  } finally {
    await r.close();
  }
});

Deno.test("transmitted chains reach the namespace whatever their buffer split, and each is used with length 0 (root, netns)", async () => {
  const r = await netRig();
  const capture = await LiveReader.openInterface(r.tap, { netns: r.ns.name });
  const seen: Uint8Array[] = [];
  const loop = capture.run((buf, off, len) => void seen.push(buf.slice(off, off + len)));
  try {
    startDriver(r, BASE);
    const frame = new Uint8Array(HDR + 64);
    frame.fill(0xff, HDR, HDR + 6);
    frame.set(r.mac, HDR + 6);
    frame.set([0x88, 0xb5], HDR + 12);
    for (let i = HDR + 14; i < frame.length; i++) frame[i] = i;
    r.mem.write(BUFS, frame);
    r.drv.use(1);
    r.drv.addChain([{ addr: BUFS, len: frame.length, write: false }]);
    r.drv.addChain([
      { addr: BUFS, len: HDR, write: false },
      { addr: BUFS + HDR, len: 64, write: false },
    ]);
    r.drv.addChain([
      { addr: BUFS, len: 5, write: false },
      { addr: BUFS + 5, len: 30, write: false },
      { addr: BUFS + 35, len: frame.length - 35, write: false },
    ]);
    r.drv.kick(1);
    const used = await r.drv.collect(3);
    assert.deepEqual(used.map((u) => u.len), [0, 0, 0]);
    assert.ok(await waitFor(() => seen.length >= 3, 3000), `captured ${seen.length}`);
    for (const s of seen.slice(0, 3)) assert.deepEqual(s, frame.subarray(HDR));
    assert.equal(r.stats.get(NetStat.TX_FRAMES), 3);
    assert.equal(r.stats.get(NetStat.TX_BYTES), 3 * 64);
  } finally {
    await capture.close();
    await loop;
    await r.close();
  }
});

Deno.test("a transmit chain too short for the header, or asking for TSO it did not negotiate, is dropped and the device lives on (root, netns)", async () => {
  const r = await netRig();
  try {
    startDriver(r, BASE);
    const frame = new Uint8Array(HDR + 60);
    frame.set([0xff, 0xff, 0xff, 0xff, 0xff, 0xff], HDR);
    r.mem.write(BUFS, frame);
    const tso = frame.slice();
    tso[1] = 1; // VIRTIO_NET_HDR_GSO_TCPV4 without HOST_TSO4
    r.mem.write(BUFS + 0x1000, tso);
    r.drv.use(1);
    r.drv.addChain([{ addr: BUFS, len: 6, write: false }]);
    r.drv.addChain([{ addr: BUFS + 0x1000, len: tso.length, write: false }]);
    r.drv.addChain([{ addr: BUFS, len: frame.length, write: false }]);
    r.drv.kick(1);
    await r.drv.collect(3);
    assert.equal(r.stats.get(NetStat.TX_BAD), 2);
    assert.equal(r.stats.get(NetStat.TX_FRAMES), 1);
    assert.equal(r.drv.read(R.STATUS) & S.NEEDS_RESET, 0);
  } finally {
    await r.close();
  }
});

Deno.test("a transmit ops limit of 20 frames per 100 ms spaces 60 frames over at least 200 ms and loses none (root, netns)", async () => {
  const r = await netRig({ txRateLimiter: { ops: { size: 20, refillTimeMs: 100 } } });
  try {
    startDriver(r, BASE, 64);
    const frame = new Uint8Array(HDR + 60).fill(0xff, HDR, HDR + 6);
    r.mem.write(BUFS, frame);
    r.drv.use(1);
    const t0 = performance.now();
    for (let i = 0; i < 60; i++) r.drv.addChain([{ addr: BUFS, len: frame.length, write: false }]);
    r.drv.kick(1);
    await r.drv.collect(60, 5000);
    const ms = performance.now() - t0;
    assert.ok(ms >= 190, `60 frames in ${ms.toFixed(0)} ms`);
    assert.equal(r.stats.get(NetStat.TX_FRAMES), 60);
    assert.ok(r.stats.get(NetStat.TX_THROTTLED) >= 2);
  } finally {
    await r.close();
  }
});

Deno.test("a running device's transmit limit replaced through its call lets held frames go and a new limit holds them (root, netns)", async () => {
  // 5 frames a minute: the sixth waits until the limit changes.
  const r = await netRig({ txRateLimiter: { ops: { size: 5, refillTimeMs: 60_000 } } });
  try {
    startDriver(r, BASE, 64);
    const frame = new Uint8Array(HDR + 60).fill(0xff, HDR, HDR + 6);
    r.mem.write(BUFS, frame);
    const send = (n: number) => {
      r.drv.use(1);
      for (let i = 0; i < n; i++) r.drv.addChain([{ addr: BUFS, len: frame.length, write: false }]);
      r.drv.kick(1);
    };
    send(20);
    assert.equal((await r.drv.collect(5, 5000)).length, 5);
    await sleep(300);
    assert.equal(r.drv.takeUsed().length, 0, "the limit holds the other 15");
    assert.ok(r.stats.get(NetStat.TX_THROTTLED) >= 1);
    // Firecracker's removal: 0-sized buckets. The held frames go at once.
    const t0 = performance.now();
    await setNetRateLimiters(r.host, "eth0", { tx: { ops: { size: 0, refillTimeMs: 0 } } });
    await r.drv.collect(15, 5000);
    assert.ok(performance.now() - t0 < 3000, "held frames left soon after the limit went");
    assert.equal(r.stats.get(NetStat.TX_FRAMES), 20);
    // A new limit on the running device: 2 of 6 pass.
    await setNetRateLimiters(r.host, "eth0", { tx: { ops: { size: 2, refillTimeMs: 60_000 } } });
    send(6);
    assert.equal((await r.drv.collect(2, 5000)).length, 2);
    await sleep(300);
    assert.equal(r.drv.takeUsed().length, 0, "the new limit holds the other 4");
    assert.equal(r.stats.get(NetStat.TX_FRAMES), 22);
    await assert.rejects(() => r.host.call("nope", {}), /virtio-net has no call 'nope'/);
  } finally {
    await r.close();
  }
});

Deno.test("a receive bandwidth limit of 1500 bytes per 100 ms holds frames in the TAP and delivers them all, paced (root, netns)", async () => {
  const r = await netRig({ rxRateLimiter: { bandwidth: { size: 1500, refillTimeMs: 100 } } });
  try {
    startDriver(r, BASE);
    const byHead = postRx(r, 32, 1536);
    // 10 frames of 1042 bytes sent within ~100 ms take about 0.6 s at 15 kB/s.
    const t0 = performance.now();
    const sender = r.ns.exec(
      ["ping", "-c", "10", "-i", "0.01", "-W", "1", "-s", "1000", "10.95.0.2"],
      true,
    );
    const used = await r.drv.use(0).collect(10, 5000);
    const ms = performance.now() - t0;
    await sender;
    assert.ok(ms >= 450, `10 frames delivered ${ms.toFixed(0)} ms after the first was sent`);
    const got = frames(r, used, byHead);
    assert.equal(got.filter((f) => isEchoRequest(f, 1000)).length, 10);
    assert.ok(r.stats.get(NetStat.RX_THROTTLED) >= 1, "the limit held frames back");
  } finally {
    await r.close();
  }
});

Deno.test("a net device saved while quiesced with frames waiting both ways resumes in a new device exactly where it was (root, netns)", async () => {
  const r = await netRig({}, 32 << 20, true);
  let host2: VirtioDeviceHost | undefined;
  try {
    startDriver(r, BASE | F.EVENT_IDX | F.MRG_RXBUF, 32);
    const byHead = postRx(r, 16, 1536);
    const heads = [...byHead.keys()];
    await ping(r, 5);
    const first = await r.drv.use(0).collect(5);
    assert.deepEqual(first.map((u) => u.id), heads.slice(0, 5));
    await r.host.quiesce();
    // Buffers the device had taken ahead went back to the ring.
    assert.equal(r.host.state[queueWord(0, Q.LAST_AVAIL)], 5);
    // While quiesced: ten transmit chains wait in the avail ring.
    const frame = new Uint8Array(HDR + 60).fill(0xff, HDR, HDR + 6);
    frame.set([0x88, 0xb5], HDR + 12);
    r.mem.write(BUFS + 0x80000, frame);
    r.drv.use(1);
    const txHeads: number[] = [];
    for (let i = 0; i < 10; i++) {
      txHeads.push(r.drv.addChain([{ addr: BUFS + 0x80000, len: frame.length, write: false }]));
    }
    r.drv.kick(1);
    await sleep(50);
    assert.equal(r.drv.usedIdx(), 0, "nothing taken while quiesced");
    const saved = r.drv.regs.save();
    await r.host.close(); // the TAP is persistent: it stays, with its namespace setup

    const dev2 = netDevice({ id: "eth0", tap: r.tap, netns: r.ns.name, mac: "02:00:00:00:95:02" });
    host2 = await VirtioDeviceHost.start(
      dev2.device,
      r.mem.regions,
      new MmioAllocator().allocate("eth0"),
    );
    const regs2 = new VirtioMmioTransport(host2.spec);
    regs2.restore(saved);
    regs2.resume();
    // The rings are guest memory: the driver (r.drv) goes on reading them as before.
    const tx: number[] = [];
    assert.ok(
      await waitFor(() => {
        tx.push(...r.drv.use(1).takeUsed().map((u) => u.id));
        return tx.length >= 10;
      }, 5000),
      `transmit chains used after restore: ${tx.length}`,
    );
    assert.deepEqual(tx, txHeads, "each waiting chain used once, in order");
    assert.equal(dev2.stats.get(NetStat.TX_FRAMES), 10);
    await ping(r, 3);
    const rx: number[] = [];
    assert.ok(
      await waitFor(() => {
        rx.push(...r.drv.use(0).takeUsed().map((u) => u.id));
        return rx.length >= 3;
      }, 5000),
      `frames after restore: ${rx.length}`,
    );
    assert.deepEqual(rx, heads.slice(5, 8), "the next buffers, none lost or used twice");
    assert.equal(regs2.read(host2.slot.base + R.STATUS, 4) & S.NEEDS_RESET, 0);
  } finally {
    await host2?.close();
    await r.close();
  }
});

Deno.test("with HOST_TSO4 a 64 KiB TCP frame and its GSO header pass to the TAP as one frame (root, netns)", async () => {
  const r = await netRig();
  const capture = await LiveReader.openInterface(r.tap, { netns: r.ns.name, snaplen: 128 });
  const seen: number[] = [];
  const loop = capture.run((_b, _o, _l, wire) => void seen.push(wire));
  try {
    startDriver(r, BASE | F.CSUM | F.HOST_TSO4);
    const frame = benchFrame("tso", [0x02, 0, 0, 0, 0x95, 0x01], 1);
    r.mem.write(BUFS, frame);
    r.drv.use(1);
    r.drv.addChain([
      { addr: BUFS, len: HDR, write: false },
      { addr: BUFS + HDR, len: frame.length - HDR, write: false },
    ]);
    r.drv.kick(1);
    await r.drv.collect(1);
    assert.ok(await waitFor(() => seen.length >= 1, 3000));
    assert.equal(seen[0], FRAME_LEN.tso, "one GSO frame, segmented later by the host stack");
    assert.equal(r.stats.get(NetStat.TX_FRAMES), 1);
    assert.equal(r.stats.get(NetStat.TX_BAD) + r.stats.get(NetStat.TX_ERRORS), 0);
  } finally {
    await capture.close();
    await loop;
    await r.close();
  }
});

Deno.test("with guest offloads negotiated frames still arrive whole, merged buffers sized for 64 KiB (root, netns)", async () => {
  const r = await netRig();
  try {
    startDriver(r, BASE | F.MRG_RXBUF | F.GUEST_CSUM | F.GUEST_TSO4, 64);
    // 48 buffers of 1536 bytes hold the 65562 bytes a GSO frame could need.
    const byHead = postRx(r, 48, 1536);
    await ping(r, 2, 1400);
    const got = frames(r, await r.drv.use(0).collect(2), byHead);
    assert.equal(got.filter((f) => isEchoRequest(f, 1400)).length, 2);
  } finally {
    await r.close();
  }
});
