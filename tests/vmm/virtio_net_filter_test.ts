import assert from "node:assert/strict";
import {
  buildFrame,
  type DecisionEvent,
  LiveReader,
  NetGuard,
  PACKET_OUTGOING,
  PacketClass,
  parseConfig,
} from "../../netguard/mod.ts";
import { NET_INBOUND, NET_OUTBOUND } from "../../vmm/devices/virtio/net_filter.ts";
import { NetStat } from "../../vmm/devices/virtio/net_format.ts";
import { VmNetWatch } from "../../vmm/net_guard.ts";
import { waitFor } from "../netguard/helpers.ts";
import { BUFS, F, type NetRig, netRig, startDriver } from "./virtio_net_rig.ts";

const BASE = F.VERSION_1 | F.MAC | F.STATUS;
const HDR = 12;

function modes(cls: number, mode: number): Uint8Array {
  const m = new Uint8Array(10);
  m[cls] = mode;
  return m;
}

/** A UDP frame (to port 53) the rig's guest sends to the host side, with its virtio-net header. */
function guestUdp(r: NetRig): Uint8Array {
  return withHeader(
    buildFrame({
      src: "10.95.0.2",
      dst: "10.95.0.1",
      proto: "udp",
      dport: 53,
      srcMac: Uint8Array.from(r.mac),
    }),
  );
}

/** `frame` behind a zeroed virtio-net header. */
function withHeader(frame: Uint8Array): Uint8Array {
  const out = new Uint8Array(HDR + frame.length);
  out.set(frame, HDR);
  return out;
}

/** The frames the device wrote to the rig's TAP (an AF_PACKET socket's view), until closed. */
async function capture(r: NetRig): Promise<{ seen: Uint8Array[]; close(): Promise<void> }> {
  const reader = await LiveReader.openInterface(r.tap, { netns: r.ns.name, pollMs: 20 });
  const seen: Uint8Array[] = [];
  const loop = reader.run((buf, off, len, _wire, _ts, pktType) => {
    if (pktType !== PACKET_OUTGOING) seen.push(buf.slice(off, off + len)); // not the host's replies
  });
  return {
    seen,
    async close() {
      await reader.close();
      await loop;
    },
  };
}

/** UDP frames from the namespace to the device's address (hping3, bounded). */
async function udpFrom(r: NetRig, count: number, gapUs: number): Promise<number> {
  const t0 = performance.now();
  const out = await r.ns.exec(
    [
      "timeout",
      "20",
      "hping3",
      "-2",
      "-p",
      "53",
      "-c",
      String(count),
      "-i",
      `u${gapUs}`,
      "-q",
      "10.95.0.2",
    ],
    true,
  );
  if (out.code !== 0 && out.code !== 1) {
    throw new Error(`hping3 failed (${out.code}): ${out.stderr}`);
  }
  return performance.now() - t0;
}

Deno.test("an outbound drop keeps the guest's UDP frames off the TAP, sends everything else whole, and hands the dropped headers back (root, netns)", async () => {
  const r = await netRig();
  const cap = await capture(r);
  try {
    startDriver(r, BASE);
    const udp = guestUdp(r);
    // Longer than the copied head (12 + 256), so the frame goes out as copy + guest memory.
    const icmp = withHeader(
      buildFrame({
        src: "10.95.0.2",
        dst: "10.95.0.1",
        proto: "icmp",
        payload: 600,
        srcMac: Uint8Array.from(r.mac),
      }),
    );
    r.mem.write(BUFS, udp);
    r.mem.write(BUFS + 0x1000, icmp);
    r.blocks.publish(NET_OUTBOUND, modes(PacketClass.udp, 1), 0);
    r.drv.use(1);
    for (let i = 0; i < 5; i++) {
      r.drv.addChain([{ addr: BUFS, len: udp.length, write: false }]);
      // Header and frame apart, split again inside the IP header.
      r.drv.addChain([
        { addr: BUFS, len: HDR, write: false },
        { addr: BUFS + HDR, len: 20, write: false },
        { addr: BUFS + HDR + 20, len: udp.length - HDR - 20, write: false },
      ]);
      r.drv.addChain([
        { addr: BUFS + 0x1000, len: 7, write: false },
        { addr: BUFS + 0x1007, len: 300, write: false },
        { addr: BUFS + 0x1000 + 307, len: icmp.length - 307, write: false },
      ]);
    }
    r.drv.kick(1);
    const used = await r.drv.collect(15);
    assert.deepEqual(used.map((u) => u.len), Array(15).fill(0));
    assert.equal(r.stats.get(NetStat.TX_BLOCKED), 10);
    assert.equal(r.stats.get(NetStat.TX_FRAMES), 5);
    assert.ok(await waitFor(() => cap.seen.length >= 5, 3000), `captured ${cap.seen.length}`);
    for (const f of cap.seen) assert.deepEqual(f, icmp.subarray(HDR), "only ICMP, byte for byte");
    const back: Uint8Array[] = [];
    assert.equal(
      r.blocks.drain((buf, off, len, wire) => {
        assert.equal(wire, udp.length - HDR);
        back.push(buf.slice(off, off + len));
      }),
      10,
    );
    for (const b of back) assert.deepEqual(b, udp.subarray(HDR));
    // Lifted: UDP goes out again.
    r.blocks.clear();
    r.drv.addChain([{ addr: BUFS, len: udp.length, write: false }]);
    r.drv.kick(1);
    await r.drv.collect(1);
    assert.ok(await waitFor(() => cap.seen.length >= 6, 3000));
    assert.deepEqual(cap.seen[5], udp.subarray(HDR));
    assert.equal(r.stats.get(NetStat.TX_BLOCKED), 10);
  } finally {
    await cap.close();
    await r.close();
  }
});

Deno.test("an inbound drop keeps UDP from the namespace out of the guest's buffers while pings arrive, headers split over small merged buffers (root, netns)", async () => {
  const r = await netRig();
  try {
    startDriver(r, BASE | F.MRG_RXBUF, 256);
    r.drv.use(0);
    // 32-byte buffers: the frame's first bytes span several (classified from a gathered copy).
    for (let i = 0; i < 250; i++) r.drv.addChain([{ addr: BUFS + i * 32, len: 32, write: true }]);
    r.drv.kick(0);
    r.blocks.publish(NET_INBOUND, modes(PacketClass.udp, 1), 0);
    await udpFrom(r, 20, 2000);
    await r.ns.exec(["ping", "-c", "3", "-i", "0.05", "-W", "1", "10.95.0.2"], true);
    assert.ok(
      await waitFor(() => r.stats.get(NetStat.RX_FRAMES) >= 3, 3000),
      `rx ${r.stats.get(NetStat.RX_FRAMES)}`,
    );
    assert.equal(r.stats.get(NetStat.RX_BLOCKED), 20);
    assert.equal(r.stats.get(NetStat.RX_FRAMES), 3, "only the echo requests");
    // Each 98-byte echo request (+12) took four 32-byte buffers.
    assert.equal(r.drv.takeUsed().length, 3 * 4);
  } finally {
    await r.close();
  }
});

Deno.test("an inbound rate limit lets a second's burst and then the rate of UDP through, and counts the rest (root, netns)", async () => {
  const r = await netRig();
  try {
    startDriver(r, BASE, 256);
    r.drv.use(0);
    for (let i = 0; i < 250; i++) {
      r.drv.addChain([{ addr: BUFS + i * 1536, len: 1536, write: true }]);
    }
    r.drv.kick(0);
    r.blocks.publish(NET_INBOUND, modes(PacketClass.udp, 2), 20);
    const ms = await udpFrom(r, 200, 1000);
    assert.ok(
      await waitFor(
        () => r.stats.get(NetStat.RX_FRAMES) + r.stats.get(NetStat.RX_LIMITED) >= 200,
        3000,
      ),
    );
    const delivered = r.stats.get(NetStat.RX_FRAMES);
    assert.equal(delivered + r.stats.get(NetStat.RX_LIMITED), 200);
    // A full bucket (20), then 20/s while hping3 ran.
    assert.ok(
      delivered >= 20 && delivered <= 20 + Math.ceil((20 * ms) / 1000) + 1,
      `${delivered} delivered in ${ms.toFixed(0)} ms`,
    );
  } finally {
    await r.close();
  }
});

Deno.test("netguard keeps seeing an outbound UDP flood its drop keeps off the TAP, and lifts the block only once the flood ends (root, netns)", async () => {
  const r = await netRig();
  const cap = await capture(r);
  const guard = new NetGuard(parseConfig({
    thresholds: { pps: 0, bps: 0, flows: 0, udpPps: 500 },
    detector: { adaptive: { enabled: false } },
    policy: { actions: { outbound: { udp_flood: "drop" } } },
  }));
  const events: DecisionEvent[] = [];
  guard.onEvent((e) => {
    if (e.event === "decision") events.push(e);
  });
  const vm = {
    pause: () => Promise.resolve(),
    resume: () => Promise.resolve(),
    net: (id: string) => (id === "eth0" ? { blocks: r.blocks } : undefined),
  };
  const watch = await VmNetWatch.start(guard, "V", vm, [{
    id: "eth0",
    tap: r.tap,
    netns: r.ns.name,
  }]);
  try {
    startDriver(r, BASE, 64);
    const udp = guestUdp(r);
    r.mem.write(BUFS, udp);
    r.drv.use(1);
    // ~2000 frames/s for 2 s: 20 frames every 10 ms.
    let sent = 0;
    const t0 = performance.now();
    while (performance.now() - t0 < 2000) {
      for (let i = 0; i < 20; i++) r.drv.addChain([{ addr: BUFS, len: udp.length, write: false }]);
      r.drv.kick(1);
      await r.drv.collect(20);
      sent += 20;
      await new Promise((res) => setTimeout(res, 10));
    }
    const floodEnd = Date.now();
    const blocked = r.stats.get(NetStat.TX_BLOCKED);
    assert.ok(events[0]?.action === "drop", `decisions: ${events.map((e) => e.action)}`);
    assert.ok(blocked > sent / 2, `${blocked} of ${sent} dropped`);
    assert.equal(r.stats.get(NetStat.TX_FRAMES) + blocked, sent);
    assert.ok(
      events.every((e) => e.action !== "unblock"),
      "the block held while the flood went on (netguard saw the dropped frames)",
    );
    assert.ok(await waitFor(() => events.some((e) => e.action === "unblock"), 5000), "unblocked");
    const unblock = events.find((e) => e.action === "unblock");
    assert.ok((unblock?.ts ?? 0) >= floodEnd - 50, "unblocked after the flood ended");
    assert.equal(r.blocks.blocking(NET_OUTBOUND), false);
    assert.ok(await waitFor(() => (watch.dropped.get(r.tap) ?? 0) >= blocked, 1000));
    assert.equal(watch.dropped.get(r.tap), blocked, "every dropped frame went to netguard");
    // The TAP saw only what passed before the block.
    await waitFor(() => cap.seen.length >= r.stats.get(NetStat.TX_FRAMES), 1000);
    assert.equal(cap.seen.length, r.stats.get(NetStat.TX_FRAMES));
  } finally {
    await watch.close();
    await cap.close();
    await r.close();
  }
});
