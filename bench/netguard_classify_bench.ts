/**
 * netguard classification throughput beside libpcap, like for like: both
 * sides evaluate the same filter (`SYN_FILTER` in bench/netguard_peer.ts:
 * netguard's `tcp_syn` class) over the same frames, timed in-process.
 *
 * - in memory: the pcap file held in one buffer and indexed (untimed) on
 *   both sides; the peer runs libpcap's `bpf_filter` over every frame
 *   (filter from `pcap_compile` on a dead Ethernet handle, optimised or
 *   not), vmkit classifies every frame;
 * - from the file, warm and cold page cache (pages dropped with
 *   posix_fadvise(DONTNEED) before each cold run, both sides): the peer is
 *   libpcap reading it (`pcap_next_ex` + `pcap_offline_filter`,
 *   `pcap_dispatch`, or `pcap_next_ex` over a 1 MiB stdio buffer), vmkit
 *   reads it and classifies each record;
 * - the full monitor path (parse, windows, flows, top-k, detectors:
 *   `NetGuard.ingest`), from memory and from the file, against the goal of
 *   5 Mpps per core (FastNetMon's published figure).
 *
 * The peer's settings are all run in every pass; the one with the best
 * median is the peer, and the table says which. Median of PASSES
 * alternating passes (the order flips every pass), range and load printed.
 *
 * Usage: `deno run -A bench/netguard_classify_bench.ts` (about a minute).
 *
 * @module
 */

import {
  classifyEthernet,
  classifyFrame,
  LINKTYPE_ETHERNET,
  NetGuard,
  PacketClass,
  parseConfig,
  readCapture,
  readCaptureStream,
} from "../netguard/mod.ts";
import { buildMix, buildPeer, dropCache, runPeer, SYN_FILTER } from "./netguard_peer.ts";
import { loadAverage, machineLine, spread } from "./stats.ts";

const PACKETS = 500_000;
const PASSES = 5;
const SEED = 20261124;

const mix = buildMix(PACKETS, SEED);
const cap = readCapture(mix.bytes);
const peer = await buildPeer();
const dir = await Deno.makeTempDir({ prefix: "netguard-bench-" });
const file = `${dir}/mix.pcap`;
await Deno.writeFile(file, mix.bytes);

/** Milliseconds of every run, by row and side. */
const times = new Map<string, number[]>();
const loads: string[] = [];
let peerLib = "";
function record(key: string, ms: number): void {
  let t = times.get(key);
  if (t === undefined) times.set(key, t = []);
  t.push(ms);
}
function check(what: string, matched: number): void {
  if (matched !== mix.syns) {
    throw new Error(`${what} matched ${matched} frames, expected ${mix.syns}`);
  }
}

// vmkit in memory: every frame of the indexed capture classified, the SYNs counted.
const SYN = PacketClass.tcpSyn;
// A classic pcap has one link type, Ethernet here: like the peer's filter compiled for
// DLT_EN10MB, the loop calls the Ethernet classifier without a per-record link check.
if (cap.format !== "pcap" || cap.linkTypes[0] !== LINKTYPE_ETHERNET) {
  throw new Error("not Ethernet");
}
function vmkitMemory(): number {
  const t0 = performance.now();
  let n = 0;
  const { buf, offsets, lengths } = cap;
  for (let i = 0; i < cap.count; i++) {
    if (classifyEthernet(buf, offsets[i] ?? 0, lengths[i] ?? 0) === SYN) n++;
  }
  const ms = performance.now() - t0;
  check("vmkit (memory)", n);
  return ms;
}

// vmkit from the file: opened, read and every record classified, in-process.
async function vmkitFile(): Promise<number> {
  const t0 = performance.now();
  let n = 0;
  using f = await Deno.open(file);
  await readCaptureStream(f.readable, (buf, off, len, _wire, _ts, link) => {
    if (classifyFrame(link, buf, off, len) === SYN) n++;
  });
  const ms = performance.now() - t0;
  check("vmkit (file)", n);
  return ms;
}

// The whole monitor path, a fresh guard per run (its tables start empty).
function monitorMemory(): number {
  const guard = new NetGuard(parseConfig({}));
  const { buf, offsets, lengths, origLengths, tsMs, linkTypes } = cap;
  const t0 = performance.now();
  for (let i = 0; i < cap.count; i++) {
    guard.ingest(
      "vm",
      "inbound",
      "",
      buf,
      offsets[i] ?? 0,
      lengths[i] ?? 0,
      origLengths[i] ?? 0,
      tsMs[i] ?? 0,
      linkTypes[i] ?? 1,
    );
  }
  const ms = performance.now() - t0;
  if (guard.metrics().frames !== cap.count) throw new Error("monitor missed frames");
  return ms;
}

async function monitorFile(): Promise<number> {
  const guard = new NetGuard(parseConfig({}));
  const t0 = performance.now();
  using f = await Deno.open(file);
  await readCaptureStream(f.readable, (buf, off, len, wire, ts, link) => {
    guard.ingest("vm", "inbound", "", buf, off, len, wire, ts, link);
  });
  const ms = performance.now() - t0;
  if (guard.metrics().frames !== cap.count) throw new Error("monitor (file) missed frames");
  return ms;
}

const MEM_OPTS = ["1", "0"];
const READERS = ["next_ex", "dispatch", "bigbuf"];

async function peerMemory(opt: string): Promise<void> {
  const r = await runPeer(peer, ["mem", file, SYN_FILTER, opt]);
  check(`bpf_filter (optimize ${opt})`, r.matched);
  peerLib = r.lib;
  record(`mem:peer:${opt}`, r.ns / 1e6);
}
async function peerFile(reader: string, cold: boolean): Promise<void> {
  if (cold) await dropCache(peer, file);
  const r = await runPeer(peer, ["file", file, SYN_FILTER, reader]);
  check(`libpcap ${reader}`, r.matched);
  record(`${cold ? "cold" : "warm"}:peer:${reader}`, r.ns / 1e6);
}

// One untimed round warms the JIT (the peer is compiled ahead of time).
vmkitMemory();
await vmkitFile();
monitorMemory();
await monitorFile();

const steps: (() => Promise<void> | void)[] = [
  ...MEM_OPTS.map((o) => () => peerMemory(o)),
  () => record("mem:vmkit", vmkitMemory()),
  ...READERS.map((r) => () => peerFile(r, false)),
  async () => record("warm:vmkit", await vmkitFile()),
  ...READERS.map((r) => () => peerFile(r, true)),
  async () => {
    await dropCache(peer, file);
    record("cold:vmkit", await vmkitFile());
  },
  () => record("monitor-mem:vmkit", monitorMemory()),
  async () => record("monitor-warm:vmkit", await monitorFile()),
  async () => {
    await dropCache(peer, file);
    record("monitor-cold:vmkit", await monitorFile());
  },
];
try {
  for (let p = 0; p < PASSES; p++) {
    loads.push(loadAverage());
    const order = p % 2 === 0 ? steps : [...steps].reverse();
    for (const s of order) await s();
  }
} finally {
  await Deno.remove(dir, { recursive: true });
}

const mpps = (ms: number) => cap.count / ms / 1000;
/** "median Mpps [range]" of some run times (the fastest run is the top of the range). */
function cell(ms: readonly number[]): string {
  const s = spread(ms);
  return `${mpps(s.med).toFixed(2)} [${mpps(s.max).toFixed(2)}–${mpps(s.min).toFixed(2)}]`;
}
function get(key: string): number[] {
  const t = times.get(key);
  if (t === undefined) throw new Error(`no runs of ${key}`);
  return t;
}
/** The peer setting of `prefix` with the best median, and every setting's median. */
function bestPeer(prefix: string, settings: string[]): { key: string; note: string } {
  let best = "";
  let bestMed = Infinity;
  const notes: string[] = [];
  for (const s of settings) {
    const med = spread(get(`${prefix}:peer:${s}`)).med;
    notes.push(`${s} ${mpps(med).toFixed(2)}`);
    if (med < bestMed) [best, bestMed] = [s, med];
  }
  return { key: `${prefix}:peer:${best}`, note: `best: ${best} (tried ${notes.join(", ")} Mpps)` };
}
function row(metric: string, vmkit: string, peerKey: string | null, note: string): string {
  const v = get(vmkit);
  if (peerKey === null) {
    const r = mpps(spread(v).med) / 5;
    return `| ${metric} | ${cell(v)} | 5.00 (goal) | ${r.toFixed(2)} | ${note} |`;
  }
  const p = get(peerKey);
  const ratio = spread(p).med / spread(v).med;
  return `| ${metric} | ${cell(v)} | ${cell(p)} | ${ratio.toFixed(2)} | ${note} |`;
}

const mem = bestPeer("mem", MEM_OPTS);
const warm = bestPeer("warm", READERS);
const cold = bestPeer("cold", READERS);
console.log(
  `netguard classification, ${cap.count} frames (${(mix.bytes.length / 1e6).toFixed(1)} MB pcap, ` +
    `seed ${SEED}, ${mix.syns} SYNs), median of ${PASSES} alternating passes [range], Mpps, one core`,
);
console.log(`machine: ${machineLine()}, deno ${Deno.version.deno}`);
console.log(`load at each pass: ${loads.join(" | ")}`);
console.log(`filter (both sides): ${SYN_FILTER}`);
console.log("");
console.log("| metric | vmkit | peer | ratio (vmkit/peer) | peer settings |");
console.log("| --- | --- | --- | --- | --- |");
console.log(
  row("filter frames in memory (peer: bpf_filter)", "mem:vmkit", mem.key, `optimize ${mem.note}`),
);
console.log(
  row("read file + filter, warm cache (peer: libpcap)", "warm:vmkit", warm.key, warm.note),
);
console.log(
  row("read file + filter, cold cache (peer: libpcap)", "cold:vmkit", cold.key, cold.note),
);
console.log(row("full monitor path from memory", "monitor-mem:vmkit", null, "goal ≥ 5 Mpps/core"));
console.log(
  row("full monitor path from the file, warm", "monitor-warm:vmkit", null, "goal ≥ 5 Mpps/core"),
);
console.log(
  row("full monitor path from the file, cold", "monitor-cold:vmkit", null, "goal ≥ 5 Mpps/core"),
);
console.log("");
console.log(
  `peer: ${peer} (bench/netguard_bpf_peer.c, ${peerLib}) mem|file FILE FILTER OPT|READER; ` +
    `timed in-process like vmkit (performance.now around the loop / open-to-last-record)`,
);
