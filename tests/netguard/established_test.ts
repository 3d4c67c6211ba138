/**
 * The established-traffic discount (issue 11.11) keeps bulk transfers out of
 * the volumetric detectors without hiding attacks: synthetic traffic with
 * real sequence and acknowledgement numbers through the frame tap.
 */

import assert from "node:assert/strict";
import {
  type AlertEvent,
  buildFrame,
  type DecisionEvent,
  NetGuard,
  type NetguardEvent,
  parseConfig,
  prng,
} from "../../netguard/mod.ts";

const T0 = 1_800_000_000_000;
/** A TSO-sized segment as AF_PACKET and tcpdump see it on a veth. */
const TSO_BYTES = 65_226;

/** A TCP segment with sequence and acknowledgement numbers. */
function seg(
  src: string,
  dst: string,
  sport: number,
  dport: number,
  flags: number,
  seq: number,
  ack: number,
): Uint8Array {
  return buildFrame({ src, dst, proto: "tcp", sport, dport, flags, seq, ack });
}

interface Flow {
  client: string;
  sport: number;
  seq: number;
  ack: number;
}

/**
 * One step of a bulk upload from `flow.client` to the VM (10.0.0.2:5201):
 * a TSO-sized data segment in, and the VM's ACK of it out.
 */
function bulkStep(g: NetGuard, flow: Flow, t: number): void {
  const data = seg(flow.client, "10.0.0.2", flow.sport, 5201, 0x18, flow.seq, flow.ack);
  g.ingest("vm", "inbound", "", data, 0, data.length, TSO_BYTES, t, 1);
  flow.seq = (flow.seq + TSO_BYTES - 54) >>> 0;
  const ackSeg = seg("10.0.0.2", flow.client, 5201, flow.sport, 0x10, flow.ack, flow.seq);
  g.frame("vm", "outbound", ackSeg, t + 0.01);
}

/** A three-way handshake of `flow` at `t`. */
function handshake(g: NetGuard, flow: Flow, t: number): void {
  g.frame(
    "vm",
    "inbound",
    seg(flow.client, "10.0.0.2", flow.sport, 5201, 0x02, flow.seq - 1, 0),
    t,
  );
  g.frame(
    "vm",
    "outbound",
    seg("10.0.0.2", flow.client, 5201, flow.sport, 0x12, flow.ack - 1, flow.seq),
    t + 0.1,
  );
  g.frame(
    "vm",
    "inbound",
    seg(flow.client, "10.0.0.2", flow.sport, 5201, 0x10, flow.seq, flow.ack),
    t + 0.2,
  );
}

function collect(g: NetGuard): NetguardEvent[] {
  const events: NetguardEvent[] = [];
  g.onEvent((e) => events.push(e));
  return events;
}

const alerts = (events: NetguardEvent[]) =>
  events.filter((e): e is AlertEvent => e.event === "alert");

Deno.test("a 20 Gbit/s bulk upload over one acknowledged connection raises no alert", () => {
  const g = new NetGuard(parseConfig({}));
  const events = collect(g);
  const flow = { client: "192.0.2.10", sport: 40000, seq: 1000, ack: 5000 };
  handshake(g, flow, T0);
  // 40 000 TSO segments/s in, as many ACKs out: ~21 Gbit/s and 80 000 packets/s in all.
  for (let t = T0 + 1; t < T0 + 2500; t += 0.025) bulkStep(g, flow, t);
  g.advance(T0 + 4500);
  assert.deepEqual(alerts(events).map((a) => `${a.kind} ${a.direction}`), []);
  const inbound = g.monitorsOf("vm").find((m) => m.direction === "inbound");
  assert.ok((inbound?.totals[1] ?? 0) * 8 / 2.5 > 2e10, "the upload really was ~20 Gbit/s");
});

Deno.test("without its acknowledgements the same upload is volume from nobody's connection and alerts", () => {
  const g = new NetGuard(parseConfig({}));
  const events = collect(g);
  const flow = { client: "192.0.2.10", sport: 40000, seq: 1000, ack: 5000 };
  for (let t = T0 + 1; t < T0 + 2000; t += 0.025) {
    const data = seg(flow.client, "10.0.0.2", flow.sport, 5201, 0x18, flow.seq, flow.ack);
    g.ingest("vm", "inbound", "", data, 0, data.length, TSO_BYTES, t, 1);
    flow.seq = (flow.seq + TSO_BYTES) >>> 0;
  }
  const kinds = new Set(alerts(events).map((a) => a.kind));
  assert.ok(kinds.has("bps") && kinds.has("pps"), `alerts: ${[...kinds]}`);
});

Deno.test("a SYN flood during a bulk transfer is suspended as fast as without it", async () => {
  const latency = async (withBulk: boolean): Promise<number> => {
    const g = new NetGuard(parseConfig({}));
    const events = collect(g);
    g.registerVm("vm", { pause: () => Promise.resolve(), resume: () => Promise.resolve() });
    const flow = { client: "192.0.2.10", sport: 40000, seq: 1000, ack: 5000 };
    const rnd = prng(5);
    handshake(g, flow, T0);
    const floodAt = T0 + 2000.3;
    let nextSyn = floodAt;
    for (let t = T0 + 1; t < T0 + 3000; t += 0.025) {
      if (withBulk) bulkStep(g, flow, t);
      // 20 000 SYN/s from random sources for 0.5 s.
      while (nextSyn <= t && nextSyn < floodAt + 500) {
        const src = `198.51.${Math.floor(rnd() * 256)}.${Math.floor(rnd() * 256)}`;
        g.frame(
          "vm",
          "inbound",
          seg(src, "10.0.0.2", 1024 + Math.floor(rnd() * 60000), 80, 0x02, 7, 0),
          nextSyn,
        );
        nextSyn += 0.05;
      }
      if (!withBulk && t % 10 < 0.025) g.advance(t);
    }
    await g.settled();
    const d = events.find((e): e is DecisionEvent =>
      e.event === "decision" && e.action === "suspend"
    );
    assert.equal(
      d?.kind,
      "syn_flood",
      `bulk ${withBulk}: ${
        events.filter((e) => e.event !== "stats").map((e) => `${e.event}:${e.kind}@${e.ts - T0}`)
      }`,
    );
    return (d?.ts ?? Infinity) - floodAt;
  };
  const quiet = await latency(false);
  const busy = await latency(true);
  assert.ok(busy <= 100, `SYN flood under bulk traffic suspended after ${busy} ms`);
  assert.ok(busy <= quiet + 10, `bulk traffic slowed detection: ${busy} ms vs ${quiet} ms`);
});

Deno.test("a spoofed ACK flood beside a bulk transfer still raises a pps alert at the flood's rate", () => {
  const g = new NetGuard(parseConfig({}));
  const events = collect(g);
  const flow = { client: "192.0.2.10", sport: 40000, seq: 1000, ack: 5000 };
  const rnd = prng(9);
  handshake(g, flow, T0);
  let nextAck = T0 + 1000;
  for (let t = T0 + 1; t < T0 + 3000; t += 0.025) {
    bulkStep(g, flow, t);
    // 30 000 ACK segments/s from random sources, each with random numbers; nobody answers them.
    while (nextAck <= t && nextAck < T0 + 2000) {
      const src = `203.0.${Math.floor(rnd() * 256)}.${Math.floor(rnd() * 256)}`;
      const r = Math.floor(rnd() * 2 ** 32);
      g.frame(
        "vm",
        "inbound",
        seg(src, "10.0.0.2", 1024 + (r & 0xffff), 80, 0x10, r, r ^ 0x5555),
        nextAck,
      );
      nextAck += 1000 / 30_000;
    }
  }
  const pps = alerts(events).find((a) => a.kind === "pps" && a.direction === "inbound");
  assert.ok(pps !== undefined, `no pps alert: ${alerts(events).map((a) => a.kind)}`);
  // The alert measures the flood, not the flood plus the transfer's 40 000 segments/s.
  assert.ok(pps.rate > 20_000 && pps.rate < 36_000, `alert rate ${pps.rate}`);
  assert.ok(pps.ts < T0 + 1120, `pps alert after ${pps.ts - T0 - 1000} ms`);
});

Deno.test("acknowledged connections from more host pairs than maxPeers are not discounted", () => {
  const run = (clients: number) => {
    const g = new NetGuard(parseConfig({}));
    const events = collect(g);
    const flows: Flow[] = Array.from({ length: clients }, (_, i) => ({
      client: `100.64.${i >> 8}.${i & 255}`,
      sport: 30000 + i,
      seq: 1000 * i + 1,
      ack: 77 * i + 1,
    }));
    flows.forEach((f, i) => handshake(g, f, T0 + i * 0.001));
    // 36 000 data segments/s in all, spread over the clients, each acknowledged.
    let i = 0;
    for (let t = T0 + 10; t < T0 + 2000; t += 1000 / 36_000) {
      const f = flows[i++ % clients];
      if (f !== undefined) bulkStep(g, f, t);
    }
    return alerts(events).map((a) => `${a.kind} ${a.direction}`);
  };
  assert.deepEqual(run(8), [], "eight hosts with bulk connections are benign");
  const many = run(200);
  assert.ok(many.includes("pps inbound"), `200 hosts: ${many}`);
});
