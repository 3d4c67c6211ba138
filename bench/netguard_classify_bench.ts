/**
 * netguard classification throughput: frames of an in-memory capture parsed
 * and classified (Ethernet, 802.1Q, IPv4/IPv6, TCP flags, UDP, ICMP) on one
 * core, beside tcpdump classifying the same pcap with a BPF filter (the
 * peer run here), and FastNetMon's published 5–6 Mpps per core (anchor).
 *
 * Usage: `deno run -A bench/netguard_classify_bench.ts`
 *
 * @module
 */

import {
  buildFrame,
  NetGuard,
  PacketInfo,
  parseConfig,
  parseRecord,
  PcapWriter,
  prng,
  readCapture,
} from "../netguard/mod.ts";

const PACKETS = 500_000;
const PASSES = 7;
const SEED = 20261124;

function machine(): string {
  let cpu = "unknown";
  try {
    const m = Deno.readTextFileSync("/proc/cpuinfo").match(/model name\s*:\s*(.*)/);
    if (m?.[1]) cpu = m[1];
  } catch (err) {
    cpu = `unreadable (${err instanceof Error ? err.message : String(err)})`;
  }
  return `nproc ${navigator.hardwareConcurrency}, CPU ${cpu}, deno ${Deno.version.deno}`;
}

// A mix: SYN flood from random sources, UDP, VLAN-tagged ICMP, IPv6 ACKs, established TCP.
const rnd = prng(SEED);
const w = new PcapWriter();
let synCount = 0;
for (let i = 0; i < PACKETS; i++) {
  const r = rnd();
  const src = `198.51.${Math.floor(rnd() * 256)}.${Math.floor(rnd() * 256)}`;
  let f: Uint8Array;
  if (r < 0.4) {
    f = buildFrame({ src, dst: "10.0.0.2", proto: "tcp", flags: 0x02, sport: 1024 + (i & 0xfff) });
    synCount++;
  } else if (r < 0.6) f = buildFrame({ src, dst: "10.0.0.2", proto: "udp", payload: 32 });
  else if (r < 0.7) f = buildFrame({ src, dst: "10.0.0.2", proto: "icmp", payload: 16, vlan: 5 });
  else if (r < 0.8) {
    f = buildFrame({ src: "2001:db8::1", dst: "2001:db8::2", proto: "tcp", flags: 0x10 });
  } else f = buildFrame({ src, dst: "10.0.0.2", proto: "tcp", flags: 0x18, payload: 100 });
  w.write(f, 1_800_000_000_000 + i * 0.05);
}
const bytes = w.bytes();
const cap = readCapture(bytes);

// vmkit: parse + classify every frame, best of PASSES.
const info = new PacketInfo();
const counts = new Float64Array(10);
let best = Infinity;
for (let p = 0; p < PASSES; p++) {
  counts.fill(0);
  const t0 = performance.now();
  for (let i = 0; i < cap.count; i++) {
    parseRecord(cap, i, info);
    counts[info.cls] = (counts[info.cls] ?? 0) + 1;
  }
  best = Math.min(best, performance.now() - t0);
}
if (counts[2] !== synCount) throw new Error(`classified ${counts[2]} SYNs, expected ${synCount}`);
const vmkitPps = cap.count / (best / 1000);

// vmkit: the whole monitor path (parse, windows, flows, top talkers, detectors).
const guard = new NetGuard(parseConfig({}));
let bestGuard = Infinity;
for (let p = 0; p < 3; p++) {
  const t0 = performance.now();
  const { buf, offsets, lengths, tsMs } = cap;
  for (let i = 0; i < cap.count; i++) {
    const len = lengths[i] ?? 0;
    guard.ingest(
      "vm",
      "inbound",
      "",
      buf,
      offsets[i] ?? 0,
      len,
      len,
      (tsMs[i] ?? 0) + p * 60_000,
      1,
    );
  }
  bestGuard = Math.min(bestGuard, performance.now() - t0);
}
const guardPps = cap.count / (bestGuard / 1000);

// Peer: tcpdump classifying the same capture with a compiled BPF filter.
const dir = await Deno.makeTempDir({ prefix: "netguard-bench-" });
const peerCmd = [
  "tcpdump",
  "-nn",
  "-r",
  `${dir}/mix.pcap`,
  "-w",
  "/dev/null",
  "tcp[tcpflags] & (tcp-syn|tcp-ack) == tcp-syn",
];
let peerMs = Infinity;
try {
  await Deno.writeFile(`${dir}/mix.pcap`, bytes);
  for (let p = 0; p < 3; p++) {
    const t0 = performance.now();
    const out = await new Deno.Command(peerCmd[0] ?? "tcpdump", {
      args: peerCmd.slice(1),
      stdout: "null",
      stderr: "null",
    })
      .output();
    if (!out.success) throw new Error(`tcpdump failed (${out.code})`);
    peerMs = Math.min(peerMs, performance.now() - t0);
  }
} finally {
  await Deno.remove(dir, { recursive: true });
}
const peerPps = cap.count / (peerMs / 1000);

const mpps = (x: number) => `${(x / 1e6).toFixed(2)} Mpps`;
console.log(
  `netguard classification, ${cap.count} frames (seed ${SEED}), best of ${PASSES} passes`,
);
console.log(`machine: ${machine()}`);
console.log("");
console.log("| metric | vmkit | peer | ratio (vmkit/peer) |");
console.log("| --- | --- | --- | --- |");
console.log(
  `| classify frames/s, one core (peer: tcpdump BPF) | ${mpps(vmkitPps)} | ${mpps(peerPps)} | ${
    (vmkitPps / peerPps).toFixed(2)
  } |`,
);
console.log(
  `| classify frames/s vs FastNetMon README anchor (5 Mpps/core) | ${
    mpps(vmkitPps)
  } | 5.00 Mpps (published) | ${(vmkitPps / 5e6).toFixed(2)} |`,
);
console.log(
  `| full monitor path frames/s (parse+windows+flows+top-k+detect) | ${mpps(guardPps)} | ${
    mpps(peerPps)
  } | ${(guardPps / peerPps).toFixed(2)} |`,
);
console.log("");
console.log(
  `peer command: ${
    peerCmd.map((a) => (a.includes(" ") ? `'${a}'` : a)).join(" ")
  } (wall time incl. file read; best of 3)`,
);
console.log(`target: >= 5 Mpps classification on one core: ${vmkitPps >= 5e6 ? "met" : "NOT met"}`);
