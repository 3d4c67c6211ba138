/**
 * netguard classification throughput: frames of an in-memory capture parsed
 * and classified (Ethernet, 802.1Q, IPv4/IPv6, TCP flags, UDP, ICMP) on one
 * core, beside tcpdump classifying the same pcap with a BPF filter (the
 * peer run here), and FastNetMon's published 5–6 Mpps per core (anchor).
 * Both sides also read the file: vmkit streams it through a ReadableStream
 * (bounded memory), tcpdump reads it with `-r`.
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
  parseLinkFrame,
  parseRecord,
  PcapWriter,
  prng,
  readCapture,
  readCaptureStream,
} from "../netguard/mod.ts";
import { machineLine, spread } from "./stats.ts";

const PACKETS = 500_000;
const PASSES = 7;
const SEED = 20261124;

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

// vmkit: parse + classify every frame of the in-memory index (the zero-copy fast path).
const info = new PacketInfo();
const counts = new Float64Array(10);
const classifyMs: number[] = [];
for (let p = 0; p < PASSES; p++) {
  counts.fill(0);
  const t0 = performance.now();
  for (let i = 0; i < cap.count; i++) {
    parseRecord(cap, i, info);
    counts[info.cls] = (counts[info.cls] ?? 0) + 1;
  }
  classifyMs.push(performance.now() - t0);
}
if (counts[2] !== synCount) throw new Error(`classified ${counts[2]} SYNs, expected ${synCount}`);

// vmkit: the whole monitor path (parse, windows, flows, top talkers, detectors).
const guard = new NetGuard(parseConfig({}));
const guardMs: number[] = [];
for (let p = 0; p < PASSES; p++) {
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
  guardMs.push(performance.now() - t0);
}

// Both sides read the same file and classify it: vmkit streams it (ReadableStream,
// bounded memory), the peer is tcpdump with a compiled BPF filter.
const dir = await Deno.makeTempDir({ prefix: "netguard-bench-" });
const file = `${dir}/mix.pcap`;
const peerCmd = [
  "tcpdump",
  "-nn",
  "-r",
  file,
  "-w",
  "/dev/null",
  "tcp[tcpflags] & (tcp-syn|tcp-ack) == tcp-syn",
];
const peerMs: number[] = [];
const streamMs: number[] = [];
try {
  await Deno.writeFile(file, bytes);
  for (let p = 0; p < PASSES; p++) {
    // Alternate which side goes first; the file is in the page cache for both (warm).
    const sides = [async () => {
      const t0 = performance.now();
      const out = await new Deno.Command(peerCmd[0] ?? "tcpdump", {
        args: peerCmd.slice(1),
        stdout: "null",
        stderr: "null",
      }).output();
      if (!out.success) throw new Error(`tcpdump failed (${out.code})`);
      peerMs.push(performance.now() - t0);
    }, async () => {
      counts.fill(0);
      const t0 = performance.now();
      const f = await Deno.open(file);
      await readCaptureStream(f.readable, (buf, off, len, _wire, _ts, link) => {
        parseLinkFrame(link, buf, off, len, info);
        counts[info.cls] = (counts[info.cls] ?? 0) + 1;
      });
      streamMs.push(performance.now() - t0);
      if (counts[2] !== synCount) throw new Error(`stream classified ${counts[2]} SYNs`);
    }];
    if (p % 2 === 1) sides.reverse();
    for (const side of sides) await side();
  }
} finally {
  await Deno.remove(dir, { recursive: true });
}

const pps = (ms: number) => cap.count / (ms / 1000);
const mpps = (x: number) => `${(x / 1e6).toFixed(2)} Mpps`;
/** "median (range min–max)" of a rate from times (the fastest time is the highest rate). */
const cell = (ms: number[]) => {
  const t = spread(ms);
  return `${mpps(pps(t.med))} (${mpps(pps(t.max))}–${mpps(pps(t.min))})`;
};
const peer = spread(peerMs).med;
console.log(
  `netguard classification, ${cap.count} frames (seed ${SEED}), median of ${PASSES} passes (range)`,
);
console.log(`machine: ${machineLine()}, deno ${Deno.version.deno}`);
console.log("");
console.log("| metric | vmkit | peer | ratio (vmkit/peer) |");
console.log("| --- | --- | --- | --- |");
console.log(
  `| read file + classify, frames/s (vmkit: ReadableStream; peer: tcpdump -r with BPF) | ${
    cell(streamMs)
  } | ${cell(peerMs)} | ${(peer / spread(streamMs).med).toFixed(2)} |`,
);
console.log(
  `| classify in-memory index, frames/s, one core (zero-copy) | ${cell(classifyMs)} | ${
    cell(peerMs)
  } | ${(peer / spread(classifyMs).med).toFixed(2)} |`,
);
console.log(
  `| classify vs FastNetMon README anchor (5 Mpps/core) | ${mpps(pps(spread(classifyMs).med))} | ` +
    `5.00 Mpps (published) | ${(pps(spread(classifyMs).med) / 5e6).toFixed(2)} |`,
);
console.log(
  `| full monitor path frames/s (parse+windows+flows+top-k+detect) | ${cell(guardMs)} | ${
    cell(peerMs)
  } | ${(peer / spread(guardMs).med).toFixed(2)} |`,
);
console.log("");
console.log(
  `peer command: ${
    peerCmd.map((a) => (a.includes(" ") ? `'${a}'` : a)).join(" ")
  } (wall time incl. process start and file read, file in page cache; alternating order)`,
);
console.log(
  `target: >= 5 Mpps classification on one core: ${
    pps(spread(classifyMs).med) >= 5e6 ? "met" : "NOT met"
  }`,
);
