import assert from "node:assert/strict";
import {
  type AlertEvent,
  buildFrame,
  ConfigError,
  type DecisionEvent,
  eventToJson,
  NetGuard,
  type NetguardEvent,
  parseConfig,
  type PausableVm,
  synthesizeTrace,
} from "../../netguard/mod.ts";
import { ProcessVm, sleep } from "./helpers.ts";

const T0 = 1_800_000_000_000;

/** Feeds `pps` copies of `frame` for `ms` milliseconds starting at `from` to `vm` going `dir`. */
function flood(
  g: NetGuard,
  vm: string,
  dir: "inbound" | "outbound",
  frame: Uint8Array,
  from: number,
  ms: number,
  pps: number,
): string[] {
  const verdicts: string[] = [];
  for (let t = from; t < from + ms; t += 1000 / pps) verdicts.push(g.frame(vm, dir, frame, t));
  return verdicts;
}

function collect(g: NetGuard): NetguardEvent[] {
  const events: NetguardEvent[] = [];
  g.onEvent((e) => events.push(e));
  return events;
}

function decisions(events: NetguardEvent[]): DecisionEvent[] {
  return events.filter((e): e is DecisionEvent => e.event === "decision");
}

class RecordingVm implements PausableVm {
  calls: string[] = [];
  pause(): Promise<void> {
    this.calls.push("pause");
    return Promise.resolve();
  }
  resume(): Promise<void> {
    this.calls.push("resume");
    return Promise.resolve();
  }
}

const SYN = buildFrame({
  src: "198.51.100.9",
  dst: "10.0.0.2",
  proto: "tcp",
  dport: 80,
  flags: 0x02,
});
const TEST_CONFIG = {
  thresholds: { synPps: 1000, udpPps: 1000, icmpPps: 1000 },
  detector: { adaptive: { enabled: false } },
  policy: { holdMs: 300 },
};

Deno.test("a SYN flood on one VM stops that VM's process while a second VM keeps running, then resumes it", async () => {
  const victim = new ProcessVm();
  const bystander = new ProcessVm();
  try {
    const g = new NetGuard(parseConfig(TEST_CONFIG));
    const events = collect(g);
    g.registerVm("victim", victim);
    g.registerVm("bystander", bystander);
    await sleep(200);
    const start = Date.now();
    flood(g, "victim", "inbound", SYN, start, 500, 4000);
    await g.settled();
    assert.deepEqual(victim.calls, ["pause"]);
    assert.deepEqual(g.suspended(), ["victim"]);
    await sleep(100);
    const v0 = victim.count, b0 = bystander.count;
    await sleep(400);
    assert.equal(victim.count, v0, "the suspended VM made no progress");
    assert.ok(bystander.count > b0 + 5, `the other VM kept running (${b0} -> ${bystander.count})`);
    g.advance(start + 500 + 100 + 500 + 300 + 50);
    await g.settled();
    assert.deepEqual(victim.calls, ["pause", "resume"]);
    assert.deepEqual(g.suspended(), []);
    const v1 = victim.count;
    await sleep(300);
    assert.ok(victim.count > v1 + 3, "the VM runs again after the hold time");
    const text = g.metricsText();
    assert.match(text, /^netguard_decisions_total\{action="suspend"\} 1$/m);
    assert.match(text, /^netguard_decisions_total\{action="resume"\} 1$/m);
    assert.match(text, /^netguard_suspended_vms 0$/m);
    const d = decisions(events);
    assert.deepEqual(d.map((e) => `${e.action}:${e.kind}:${e.targets.join()}`), [
      "suspend:syn_flood:victim",
      "resume:syn_flood:victim",
    ]);
    const alert = events.find((e): e is AlertEvent => e.event === "alert");
    assert.ok(alert !== undefined);
    // Detection latency is bounded by the window fill, "exceeded for" and one bucket.
    assert.ok(alert.ts - start <= 100, `detected after ${alert.ts - start} ms`);
  } finally {
    await victim.close();
    await bystander.close();
  }
});

Deno.test("an alert names the VM, direction, kind and rate, with top sources, ports and sample packets", () => {
  const g = new NetGuard(parseConfig(TEST_CONFIG));
  const events = collect(g);
  g.registerVm("web", new RecordingVm());
  flood(g, "web", "inbound", SYN, T0, 300, 3000);
  const alert = events.find((e): e is AlertEvent => e.event === "alert");
  assert.ok(alert !== undefined);
  assert.equal(alert.vm, "web");
  assert.equal(alert.direction, "inbound");
  assert.equal(alert.kind, "syn_flood");
  assert.equal(alert.detector, "threshold");
  assert.ok(alert.rate >= 1000);
  assert.equal(alert.evidence.topSources[0]?.key, "198.51.100.9");
  assert.equal(alert.evidence.topPorts[0]?.key, "tcp/80");
  assert.ok(alert.evidence.samples.length > 0);
  assert.match(alert.evidence.samples[0]?.summary ?? "", /TCP \[S\]/);
  const line = JSON.parse(eventToJson(alert));
  for (const k of ["ts", "event", "vm", "direction", "kind"]) assert.ok(k in line, `JSON has ${k}`);
  const decision = JSON.parse(eventToJson(decisions(events)[0] ?? alert));
  assert.equal(decision.event, "decision");
  assert.equal(decision.action, "suspend");
});

Deno.test("an outbound flood suspends the VM sending it", async () => {
  const g = new NetGuard(parseConfig(TEST_CONFIG));
  const events = collect(g);
  const sender = new RecordingVm();
  g.registerVm("sender", sender);
  const udp = buildFrame({ src: "10.0.0.5", dst: "203.0.113.1", proto: "udp", dport: 53 });
  flood(g, "sender", "outbound", udp, T0, 300, 3000);
  await g.settled();
  assert.deepEqual(sender.calls, ["pause"]);
  const d = decisions(events)[0];
  assert.equal(d?.kind, "udp_flood");
  assert.equal(d?.direction, "outbound");
  assert.match(d?.reason ?? "", /suspending the VM sending it/);
});

Deno.test("suspend_lowest_priority pauses the lowest-priority unprotected VM, not the one attacked", async () => {
  const g = new NetGuard(parseConfig({
    ...TEST_CONFIG,
    policy: { holdMs: 300, actions: { inbound: { icmp_flood: "suspend_lowest_priority" } } },
  }));
  const events = collect(g);
  const db = new RecordingVm(), batch = new RecordingVm(), infra = new RecordingVm();
  g.registerVm("db", db, { priority: 50 });
  g.registerVm("batch", batch, { priority: 10 });
  g.registerVm("infra", infra, { priority: 0, protected: true });
  const icmp = buildFrame({ src: "203.0.113.5", dst: "10.0.0.3", proto: "icmp" });
  flood(g, "db", "inbound", icmp, T0, 300, 3000);
  g.advance(T0 + 2000);
  await g.settled();
  assert.deepEqual(batch.calls, ["pause", "resume"]);
  assert.deepEqual(db.calls, []);
  assert.deepEqual(infra.calls, []);
  assert.deepEqual(decisions(events).map((d) => d.action), ["suspend", "resume"]);
});

Deno.test("drop and rate_limit decide per frame: the attack's packets are dropped or limited, others pass", () => {
  const g = new NetGuard(parseConfig({
    ...TEST_CONFIG,
    policy: {
      rateLimitPps: 200,
      actions: { inbound: { syn_flood: "drop", udp_flood: "rate_limit" } },
    },
  }));
  const events = collect(g);
  const verdicts = flood(g, "vm", "inbound", SYN, T0, 1000, 2000);
  const dropped = verdicts.filter((v) => v === "drop").length;
  assert.ok(dropped > 1800, `most SYNs dropped once detected (${dropped} of ${verdicts.length})`);
  const ack = buildFrame({ src: "192.0.2.1", dst: "10.0.0.2", proto: "tcp", flags: 0x10 });
  assert.equal(g.frame("vm", "inbound", ack, T0 + 1000), "pass", "other traffic still passes");
  g.advance(T0 + 3000);
  assert.equal(
    g.frame("vm", "inbound", SYN, T0 + 3001),
    "pass",
    "after the clear, SYNs pass again",
  );
  const udp = buildFrame({ src: "203.0.113.7", dst: "10.0.0.2", proto: "udp" });
  const uv = flood(g, "vm", "inbound", udp, T0 + 4000, 1000, 3000);
  const passed = uv.filter((v) => v === "pass").length;
  // Before detection (~50 ms at 3000 pps) everything passes; after, 200 pps plus one second of burst.
  assert.ok(passed > 300 && passed < 700, `rate limit let ${passed} of ${uv.length} through`);
  assert.deepEqual(
    decisions(events).map((d) => `${d.action}:${d.kind}`),
    ["drop:syn_flood", "unblock:syn_flood", "rate_limit:udp_flood"],
  );
});

Deno.test("a drop or rate_limit decision hands the interface's table to its sink before the event, the unblock clears it, and unregistering lifts it", async () => {
  const g = new NetGuard(parseConfig({
    ...TEST_CONFIG,
    policy: {
      rateLimitPps: 300,
      actions: { inbound: { syn_flood: "drop" }, outbound: { udp_flood: "rate_limit" } },
    },
  }));
  const seen: string[] = [];
  g.onEvent((e) => {
    if (e.event === "decision") seen.push(`event ${e.action}`);
  });
  g.registerVm("vm", null);
  const detach = g.enforceAt("vm", "tap0", (dir, classes, rate) => {
    seen.push(`${dir} ${[...classes].join("")} ${rate}`);
  });
  assert.throws(() => g.enforceAt("vm", "tap0", () => {}), /already has its blocks enforced/);
  for (let t = T0; t < T0 + 500; t += 1000 / 2000) {
    g.ingest("vm", "inbound", "tap0", SYN, 0, SYN.length, SYN.length, t, 1);
  }
  const udp = buildFrame({ src: "10.0.0.2", dst: "203.0.113.7", proto: "udp" });
  for (let t = T0 + 500; t < T0 + 1000; t += 1000 / 8000) {
    g.ingest("vm", "outbound", "tap0", udp, 0, udp.length, udp.length, t, 1);
  }
  // tcpSyn is class 2, udp class 6.
  assert.deepEqual(seen.slice(0, 4), [
    "inbound 0010000000 0",
    "event drop",
    "outbound 0000002000 300",
    "event rate_limit",
  ]);
  g.advance(T0 + 3000);
  assert.deepEqual(seen.slice(4).sort(), [
    "event unblock",
    "event unblock",
    "inbound 0000000000 0",
    "outbound 0000000000 0",
  ]);
  // A sink attached while blocks are in force gets them at once; unregistering lifts them.
  detach();
  for (let t = T0 + 4000; t < T0 + 4500; t += 1000 / 2000) {
    g.ingest("vm", "inbound", "tap0", SYN, 0, SYN.length, SYN.length, t, 1);
  }
  const late: string[] = [];
  g.enforceAt(
    "vm",
    "tap0",
    (dir, classes, rate) => late.push(`${dir} ${[...classes].join("")} ${rate}`),
  );
  assert.deepEqual(late, ["inbound 0010000000 0"]);
  await g.unregisterVm("vm");
  assert.deepEqual(late.slice(1), ["inbound 0000000000 0", "outbound 0000000000 0"]);
});

Deno.test("traffic from whitelisted prefixes is never counted toward an attack", async () => {
  const g = new NetGuard(
    parseConfig({ ...TEST_CONFIG, whitelist: ["198.51.100.0/24", "2001:db8::/32"] }),
  );
  const events = collect(g);
  const vm = new RecordingVm();
  g.registerVm("vm", vm);
  flood(g, "vm", "inbound", SYN, T0, 500, 4000);
  const syn6 = buildFrame({ src: "2001:db8::66", dst: "fd00::2", proto: "tcp", flags: 0x02 });
  flood(g, "vm", "inbound", syn6, T0 + 500, 500, 4000);
  await g.settled();
  assert.deepEqual(vm.calls, []);
  assert.equal(events.filter((e) => e.event === "alert").length, 0);
  assert.equal(g.monitorsOf("vm").find((m) => m.direction === "inbound")?.whitelisted, 4000);
});

Deno.test("benign established TCP at a high rate raises no suspension (seeded trace)", async () => {
  const g = new NetGuard(parseConfig({}));
  const events = collect(g);
  const vm = new RecordingVm();
  g.registerVm("vm", vm);
  const trace = synthesizeTrace({
    seed: 7,
    startMs: T0,
    benignPps: 15_000,
    durationMs: 4000,
    victim: "10.0.0.2",
  });
  trace.frames.forEach((f, i) => g.frame("vm", "inbound", f, trace.tsMs[i] ?? 0));
  await g.settled();
  assert.deepEqual(vm.calls, []);
  assert.equal(decisions(events).filter((d) => d.action === "suspend").length, 0);
});

Deno.test("the adaptive detector catches a SYN surge far below the static threshold", async () => {
  const g = new NetGuard(parseConfig({
    thresholds: { synPps: 100_000 },
    detector: { adaptive: { enabled: true, minPps: 500, warmupMs: 1000 } },
  }));
  const events = collect(g);
  const vm = new RecordingVm();
  g.registerVm("vm", vm);
  const trace = synthesizeTrace({
    seed: 11,
    startMs: T0,
    benignPps: 2000,
    durationMs: 4000,
    victim: "10.0.0.2",
    attack: { kind: "syn", atMs: 3000, forMs: 1000, pps: 3000 },
  });
  trace.frames.forEach((f, i) => g.frame("vm", "inbound", f, trace.tsMs[i] ?? 0));
  await g.settled();
  const alert = events.find((e): e is AlertEvent => e.event === "alert");
  assert.equal(alert?.kind, "syn_flood");
  assert.equal(alert?.detector, "cusum");
  assert.ok(
    (alert?.ts ?? 0) - (T0 + 3000) < 150,
    `adaptive detection took ${(alert?.ts ?? 0) - T0 - 3000} ms`,
  );
  assert.deepEqual(vm.calls, ["pause"]);
});

Deno.test("a protected VM or one with nothing to pause is reported, never acted on", async () => {
  const g = new NetGuard(parseConfig(TEST_CONFIG));
  const events = collect(g);
  const vm = new RecordingVm();
  g.registerVm("core", vm, { protected: true });
  flood(g, "core", "inbound", SYN, T0, 300, 3000);
  flood(g, "unknown", "inbound", SYN, T0 + 1000, 300, 3000);
  await g.settled();
  assert.deepEqual(vm.calls, []);
  const d = decisions(events);
  assert.equal(d.length, 2);
  for (const e of d) {
    assert.equal(e.action, "alert");
    assert.match(e.reason, /no registered, unprotected VM/);
  }
});

Deno.test("frames from a shared host interface are assigned to VMs by address, both directions", () => {
  const g = new NetGuard(
    parseConfig({
      vms: [{ id: "a", addresses: ["10.0.0.2"] }, { id: "b", addresses: ["fd00::/64"] }],
    }),
  );
  const toA = buildFrame({ src: "192.0.2.1", dst: "10.0.0.2", proto: "udp" });
  const fromB = buildFrame({ src: "fd00::5", dst: "2001:db8::1", proto: "tcp" });
  const other = buildFrame({ src: "192.0.2.1", dst: "192.0.2.2", proto: "udp" });
  for (const f of [toA, fromB, other]) g.ingestHost(f, 0, f.length, f.length, T0, 1, -1, "eth0");
  const count = (vm: string, dir: string) =>
    g.monitorsOf(vm).find((m) => m.direction === dir)?.totals[0] ?? 0;
  assert.equal(count("a", "inbound"), 1);
  assert.equal(count("b", "outbound"), 1);
  assert.equal(count("host", "inbound"), 1);
  assert.equal(count("a", "outbound"), 0);
});

Deno.test("configuration errors name the bad field", () => {
  assert.throws(
    () => parseConfig({ thresholds: { synpps: 5 } }),
    (e: unknown) => e instanceof ConfigError && /thresholds\.synpps: unknown field/.test(e.message),
  );
  assert.throws(
    () => parseConfig({ policy: { actions: { syn_flood: "nuke" } } }),
    /policy\.actions\.syn_flood: must be one of/,
  );
  assert.throws(
    () => parseConfig({ whitelist: ["10.0.0.0/33"] }),
    /whitelist\[0\]: '10\.0\.0\.0\/33' has a bad prefix length/,
  );
  assert.throws(
    () => parseConfig({ vms: [{ id: "x" }, { id: "x" }] }),
    /vms\[1\]\.id: VM 'x' is listed twice/,
  );
  assert.throws(() => parseConfig({ detector: { windowMs: -1 } }), /detector\.windowMs/);
  const c = parseConfig({
    thresholds: { inbound: { synPps: 7 } },
    vms: [{ id: "v", thresholds: { udpPps: 9 } }],
  });
  assert.equal(c.thresholds.inbound.synPps, 7);
  assert.equal(c.thresholds.outbound.synPps, 5000);
  assert.equal(c.vms[0]?.thresholds.inbound.udpPps, 9);
  assert.equal(
    c.vms[0]?.thresholds.inbound.synPps,
    7,
    "a VM inherits the host thresholds it does not override",
  );
});

Deno.test("a VM that floods again each time it is resumed is held twice as long each time", async () => {
  const g = new NetGuard(parseConfig(TEST_CONFIG));
  const events = collect(g);
  g.registerVm("bot", new RecordingVm());
  const udp = buildFrame({ src: "10.0.0.9", dst: "203.0.113.1", proto: "udp" });
  // The VM sends 3000 pps whenever it runs.
  for (let t = T0; t < T0 + 12_000; t += 1 / 3) {
    if (g.suspended().includes("bot")) g.advance(t);
    else g.frame("bot", "outbound", udp, t);
  }
  await g.settled();
  const d = decisions(events);
  const suspends = d.filter((e) => e.action === "suspend").map((e) => e.ts);
  const resumes = d.filter((e) => e.action === "resume").map((e) => e.ts);
  assert.ok(suspends.length >= 4, `suspended ${suspends.length} times`);
  const held = resumes.map((r, i) => r - (suspends[i] ?? 0));
  for (let i = 1; i < held.length; i++) {
    assert.ok(
      (held[i] ?? 0) - (held[i - 1] ?? 0) >= 250,
      `hold ${i} (${held[i]} ms) is longer than hold ${i - 1} (${held[i - 1]} ms)`,
    );
  }
  assert.match(d.at(-1)?.reason ?? "", /ended \d+ ms ago|suspending the VM sending it/);
});

Deno.test("an IPv6 SYN flood is detected with IPv6 evidence, and malformed frames are counted, not thrown", async () => {
  const g = new NetGuard(parseConfig(TEST_CONFIG));
  const events = collect(g);
  const vm = new RecordingVm();
  g.registerVm("v6", vm);
  const syn6 = buildFrame({
    src: "2001:db8:bad::1",
    dst: "fd00::10",
    proto: "tcp",
    dport: 443,
    flags: 0x02,
  });
  for (let i = 0; i < 50; i++) {
    g.frame("v6", "inbound", syn6.subarray(0, 20 + (i % 40)), T0 + i * 0.1);
  }
  flood(g, "v6", "inbound", syn6, T0 + 10, 300, 3000);
  await g.settled();
  assert.equal(g.metrics().malformed, 50);
  const alert = events.find((e): e is AlertEvent => e.event === "alert");
  assert.equal(alert?.kind, "syn_flood");
  assert.equal(alert?.evidence.topSources[0]?.key, "2001:db8:bad::1");
  assert.equal(alert?.evidence.topDestinations[0]?.key, "fd00::10");
  assert.equal(alert?.evidence.topPorts[0]?.key, "tcp/443");
  assert.deepEqual(vm.calls, ["pause"]);
});

Deno.test("with the wall clock running, a VM resumes after its flood stops even if no frame follows", async () => {
  const g = new NetGuard(
    parseConfig({ ...TEST_CONFIG, detector: { ...TEST_CONFIG.detector, clearForMs: 100 } }),
  );
  const vm = new RecordingVm();
  g.registerVm("vm", vm);
  using _clock = g.startClock(20);
  flood(g, "vm", "inbound", SYN, Date.now(), 200, 3000);
  await g.settled();
  assert.deepEqual(vm.calls, ["pause"]);
  // Window 100 ms + clear 100 ms + hold 300 ms, ticked by the clock alone.
  const deadline = Date.now() + 3000;
  while (!vm.calls.includes("resume") && Date.now() < deadline) await sleep(20);
  assert.deepEqual(vm.calls, ["pause", "resume"]);
});
