/**
 * Benchmark: vmkit's TypeScript iSCSI initiator against libiscsi's
 * `iscsi-perf`, both reading from the same private tgtd LUN on 127.0.0.1:
 * random 4 KiB reads with 32 in flight, and sequential 128 KiB reads with 16
 * in flight. Each side runs `--runs` times (default 5), the order
 * alternating between rounds; the table gives the median with the range.
 *
 * Usage: deno run -A bench/san_iscsi_bench.ts [--seconds N] [--runs N]
 *
 * @module
 */

import { IscsiSession } from "../san/mod.ts";
import { backingFile, Tgtd } from "../tests/san/tgt.ts";
import { loadAverage, machineLine, median, medianRange } from "./stats.ts";

const TARGET = "iqn.2026-01.dev.vmkit.bench:lun";
const VM = "iqn.2026-01.dev.vmkit.bench:vm-1";
const LUN_BYTES = 256 << 20;
/** The numeric value after `flag` on the command line, or `dflt`. */
function numArg(flag: string, dflt: number): number {
  const i = Deno.args.indexOf(flag);
  return i < 0 ? dflt : Number(Deno.args[i + 1] ?? "") || dflt;
}
const SECONDS = numArg("--seconds", 4);
const RUNS = Math.max(1, numArg("--runs", 5));

interface Workload {
  name: string;
  blocks: number;
  depth: number;
  random: boolean;
}

const WORKLOADS: Workload[] = [
  { name: "random 4 KiB reads, 32 in flight (IOPS)", blocks: 8, depth: 32, random: true },
  { name: "sequential 128 KiB reads, 16 in flight (MB/s)", blocks: 256, depth: 16, random: false },
];

async function vmkitRun(port: number, w: Workload): Promise<{ iops: number; mbps: number }> {
  const s = await IscsiSession.connect({
    host: "127.0.0.1",
    port,
    initiatorName: VM,
    targetName: TARGET,
    keepaliveMs: 0,
  });
  const totalBlocks = LUN_BYTES / 512;
  let cursor = 0;
  let done = 0;
  let seed = 12345;
  const rand = (): number => {
    seed = (Math.imul(seed, 1103515245) + 12345) >>> 0;
    return seed / 0x1_0000_0000;
  };
  const t0 = performance.now();
  const end = t0 + SECONDS * 1000;
  const worker = async (): Promise<void> => {
    const buf = new Uint8Array(w.blocks * 512);
    while (performance.now() < end) {
      // The same pattern as iscsi-perf: random = any start block (not aligned
      // to the transfer size), sequential = consecutive from block 0, wrapping;
      // a transfer is cut short at the end of the LUN.
      let lba: number;
      if (w.random) {
        lba = Math.floor(rand() * totalBlocks);
      } else {
        lba = cursor;
        cursor = (cursor + w.blocks) % totalBlocks;
      }
      const blocks = Math.min(w.blocks, totalBlocks - lba);
      await s.read16(1, lba, blocks, buf.subarray(0, blocks * 512));
      done++;
    }
  };
  await Promise.all(Array.from({ length: w.depth }, worker));
  const secs = (performance.now() - t0) / 1000;
  await s.logout();
  const iops = done / secs;
  return { iops, mbps: (iops * w.blocks * 512) / 1e6 };
}

function peerArgs(port: number, w: Workload): string[] {
  // -t: iscsi-perf measures exactly SECONDS (from its first command) and exits,
  // the same window as vmkit's run.
  const args = ["-i", VM, "-m", String(w.depth), "-b", String(w.blocks), "-t", String(SECONDS)];
  if (w.random) args.push("-r");
  args.push(`iscsi://127.0.0.1:${port}/${TARGET}/1`);
  return args;
}

async function peerRun(port: number, w: Workload): Promise<{ iops: number; mbps: number }> {
  const child = new Deno.Command("iscsi-perf", {
    args: peerArgs(port, w),
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  // A safety net only: iscsi-perf stops by itself after SECONDS.
  const timer = setTimeout(() => child.kill("SIGINT"), SECONDS * 1000 + 10_000);
  const out = await child.output();
  clearTimeout(timer);
  const text = new TextDecoder().decode(out.stdout).replaceAll("\r", "\n");
  const m = [...text.matchAll(/iops average (\d+) \((\d+) MB\/s\)/g)].pop();
  if (m === undefined) throw new Error(`iscsi-perf printed no average:\n${text.slice(-500)}`);
  // iscsi-perf's MB/s are MiB/s; recompute from IOPS for one unit with vmkit.
  const iops = Number(m[1]);
  return { iops, mbps: (iops * w.blocks * 512) / 1e6 };
}

const dir = await Deno.makeTempDir({ prefix: "vmkit-bench-san-" });
const tgt = await Tgtd.start();
try {
  const lun = await backingFile(dir, "lun.img", LUN_BYTES);
  // Fill the LUN so reads hit real data (page cache on the target side, as for the peer).
  const f = await Deno.open(lun, { write: true });
  const chunk = new Uint8Array(1 << 20).fill(0xa5);
  for (let o = 0; o < LUN_BYTES; o += chunk.length) await f.write(chunk);
  f.close();
  await tgt.addTarget({ tid: 1, name: TARGET, luns: [{ lun: 1, path: lun }], initiators: [VM] });
  console.log(`machine: ${machineLine()}`);
  console.log(
    `target: tgtd 127.0.0.1:${tgt.port}, ${LUN_BYTES >> 20} MiB LUN, ${SECONDS} s per run, ` +
      `median of ${RUNS} runs [range], order alternating`,
  );
  console.log("");
  console.log("| metric | vmkit | peer (iscsi-perf) | ratio (vmkit/peer) |");
  console.log("| --- | ---: | ---: | ---: |");
  for (const w of WORKLOADS) {
    const metric = w.random ? "iops" : "mbps";
    const vmkit: number[] = [];
    const peer: number[] = [];
    for (let round = 0; round < RUNS; round++) {
      const sides = [
        async () => vmkit.push((await vmkitRun(tgt.port, w))[metric]),
        async () => peer.push((await peerRun(tgt.port, w))[metric]),
      ];
      if (round % 2 === 1) sides.reverse();
      for (const side of sides) await side();
    }
    const fmt = (x: number): string => x.toFixed(0);
    console.log(
      `| ${w.name} | ${medianRange(vmkit, fmt)} | ${medianRange(peer, fmt)} | ${
        (median(vmkit) / median(peer)).toFixed(2)
      } |`,
    );
  }
  console.log("");
  console.log(`load after the runs: ${loadAverage()}`);
  console.log("");
  for (const w of WORKLOADS) {
    console.log(
      `peer command: iscsi-perf ${peerArgs(tgt.port, w).join(" ")}`,
    );
  }
} finally {
  await tgt.stop();
  await Deno.remove(dir, { recursive: true });
}
