/**
 * Benchmark: vmkit's TypeScript iSCSI initiator against libiscsi's
 * `iscsi-perf`, both reading from the same private tgtd LUN on 127.0.0.1:
 * random 4 KiB reads with 32 in flight, and sequential 128 KiB reads with 16
 * in flight, each with the LUN's backing file warm in the page cache and cold
 * (written back and dropped with posix_fadvise(DONTNEED) before every run of
 * either side, checked with mincore; tgtd's rdwr backing store reads through
 * the page cache).
 *
 * Both sides do the same work and are timed the same way: each counts the
 * commands completed in a window of `--seconds` from its first command, after
 * login (vmkit in-process, iscsi-perf with its own `-t` window and "iops
 * average"). The same address pattern on both: random = any start block,
 * sequential = consecutive from block 0, wrapping.
 *
 * The peer first runs a pilot of the libiscsi settings that could matter
 * (default, header digest forced to None, allocation cache off: 3 rounds of
 * 2 s runs, the settings in rotating order), and the measured rounds use the
 * one with the best median for each workload (the pilot table says which). Then each cell runs one untimed warm-up per side and
 * `--runs` rounds (default 5), the side that goes first alternating from
 * round to round (the order is printed per round); the table gives the
 * median with the range [min-max] and the load after the cell. Never a
 * best-of.
 *
 * Usage: deno run -A bench/san_iscsi_bench.ts [--seconds N] [--runs N] [--lun-mib N]
 * (default 3 s runs, 5 rounds, 1024 MiB LUN: about 3 minutes).
 *
 * @module
 */

import { IscsiSession } from "../san/mod.ts";
import { backingFile, Tgtd } from "../tests/san/tgt.ts";
import { loadAverage, machineLine, median, medianRange } from "./stats.ts";
import { prepareCache, residentBytes, warmPageCache } from "./page_cache.ts";

const TARGET = "iqn.2026-01.dev.vmkit.bench:lun";
const VM = "iqn.2026-01.dev.vmkit.bench:vm-1";
/** The numeric value after `flag` on the command line, or `dflt`. */
function numArg(flag: string, dflt: number): number {
  const i = Deno.args.indexOf(flag);
  return i < 0 ? dflt : Number(Deno.args[i + 1] ?? "") || dflt;
}
const SECONDS = numArg("--seconds", 3);
const RUNS = Math.max(1, numArg("--runs", 5));
const LUN_BYTES = numArg("--lun-mib", 1024) * (1 << 20);
/** Seconds of each pilot run of a peer setting, and of each untimed warm-up run. */
const PILOT_SECONDS = 2;
/** Pilot runs of each peer setting. */
const PILOT_ROUNDS = 3;

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

/** A libiscsi setting of the peer: environment variables and URL arguments. */
interface PeerSetting {
  name: string;
  env: Record<string, string>;
  url: string;
}

const PEER_DEFAULT: PeerSetting = { name: "default", env: {}, url: "" };
const PEER_SETTINGS: PeerSetting[] = [
  PEER_DEFAULT,
  { name: "header_digest=none", env: {}, url: "?header_digest=none" },
  { name: "LIBISCSI_CACHE_ALLOCATIONS=0", env: { LIBISCSI_CACHE_ALLOCATIONS: "0" }, url: "" },
];

/** The figure a workload reports: IOPS for random reads, MB/s for sequential. */
function figure(w: Workload, iops: number): number {
  return w.random ? iops : (iops * w.blocks * 512) / 1e6;
}

/** vmkit: `w.depth` commands in flight for `seconds`; returns the workload's figure. */
async function vmkitRun(port: number, w: Workload, seconds: number): Promise<number> {
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
  const end = t0 + seconds * 1000;
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
      // The buffer itself; a view only for a transfer cut short at the end of the LUN.
      await s.read16(1, lba, blocks, blocks === w.blocks ? buf : buf.subarray(0, blocks * 512));
      done++;
    }
  };
  await Promise.all(Array.from({ length: w.depth }, worker));
  const secs = (performance.now() - t0) / 1000;
  await s.logout();
  return figure(w, done / secs);
}

function peerArgs(port: number, w: Workload, p: PeerSetting, seconds: number): string[] {
  // -t: iscsi-perf measures exactly `seconds` (from its first command) and exits.
  const args = ["-i", VM, "-m", String(w.depth), "-b", String(w.blocks), "-t", String(seconds)];
  if (w.random) args.push("-r");
  args.push(`iscsi://127.0.0.1:${port}/${TARGET}/1${p.url}`);
  return args;
}

/** The peer command line, environment first, for the record. */
function peerCommand(port: number, w: Workload, p: PeerSetting): string {
  const env = Object.entries(p.env).map(([k, v]) => `${k}=${v} `).join("");
  return `${env}iscsi-perf ${peerArgs(port, w, p, SECONDS).join(" ")}`;
}

async function peerRun(
  port: number,
  w: Workload,
  p: PeerSetting,
  seconds: number,
): Promise<number> {
  const child = new Deno.Command("iscsi-perf", {
    args: peerArgs(port, w, p, seconds),
    env: p.env,
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  // A safety net only: iscsi-perf stops by itself after `seconds`.
  const timer = setTimeout(() => child.kill("SIGINT"), seconds * 1000 + 10_000);
  const out = await child.output();
  clearTimeout(timer);
  const text = new TextDecoder().decode(out.stdout).replaceAll("\r", "\n");
  const m = [...text.matchAll(/iops average (\d+) \((\d+) MB\/s\)/g)].pop();
  if (m === undefined) {
    const err = new TextDecoder().decode(out.stderr);
    throw new Error(`iscsi-perf (${p.name}) printed no average:\n${text.slice(-300)}${err}`);
  }
  // iscsi-perf's MB/s are MiB/s; recompute from IOPS for one unit with vmkit.
  return figure(w, Number(m[1]));
}

/** Runs `sides` (name, run) once per round, alternating which goes first, printing the order. */
async function alternate(
  label: string,
  before: () => Promise<unknown>,
  sides: Array<[string, () => Promise<number>]>,
  firstRound: number,
): Promise<Map<string, number[]>> {
  const results = new Map<string, number[]>(sides.map(([n]) => [n, []]));
  for (let round = 0; round < RUNS; round++) {
    const order = (firstRound + round) % 2 === 0 ? sides : [...sides].reverse();
    const parts: string[] = [];
    for (const [name, run] of order) {
      await before();
      const x = await run();
      results.get(name)?.push(x);
      parts.push(`${name} ${x.toFixed(0)}`);
    }
    console.log(`  ${label} round ${round + 1}: ${parts.join(", then ")}`);
  }
  return results;
}

const fmt = (x: number): string => x.toFixed(0);
const dir = await Deno.makeTempDir({ prefix: "vmkit-bench-san-" });
const tgt = await Tgtd.start();
try {
  const lun = await backingFile(dir, "lun.img", LUN_BYTES);
  // Fill the LUN so reads return real data from the page cache or the disk.
  {
    using f = await Deno.open(lun, { write: true });
    const chunk = new Uint8Array(4 << 20).fill(0xa5);
    for (let o = 0; o < LUN_BYTES; o += chunk.length) await f.write(chunk);
  }
  await tgt.addTarget({ tid: 1, name: TARGET, luns: [{ lun: 1, path: lun }], initiators: [VM] });
  console.log(`machine: ${machineLine()}`);
  console.log(
    `target: tgtd 127.0.0.1:${tgt.port} (rdwr backing store), ${LUN_BYTES >> 20} MiB LUN on ` +
      `${dir}; ${SECONDS} s per run; median of ${RUNS} alternating rounds [range]`,
  );

  // ---- the peer's settings: a short pilot, warm cache, the best per workload
  await warmPageCache(lun);
  const best = new Map<Workload, PeerSetting>();
  console.log("");
  console.log(
    `peer settings pilot (warm, ${PILOT_SECONDS} s runs, ${PILOT_ROUNDS} rounds of every ` +
      `setting in rotating order, median):`,
  );
  for (const w of WORKLOADS) {
    const xs = new Map<PeerSetting, number[]>(PEER_SETTINGS.map((p) => [p, []]));
    for (let round = 0; round < PILOT_ROUNDS; round++) {
      for (let k = 0; k < PEER_SETTINGS.length; k++) {
        const p = PEER_SETTINGS[(round + k) % PEER_SETTINGS.length] ?? PEER_DEFAULT;
        xs.get(p)?.push(await peerRun(tgt.port, w, p, PILOT_SECONDS));
      }
    }
    let chosen = PEER_DEFAULT;
    for (const p of PEER_SETTINGS) {
      if (median(xs.get(p) ?? []) > median(xs.get(chosen) ?? [])) chosen = p;
    }
    best.set(w, chosen);
    const row = PEER_SETTINGS.map((p) => `${p.name} ${medianRange(xs.get(p) ?? [], fmt)}`);
    console.log(`  ${w.name}: ${row.join(", ")}; best: ${chosen.name}`);
  }

  // ---- the measured rounds
  const rows: string[] = [];
  let cell = 0;
  for (const w of WORKLOADS) {
    const p = best.get(w) ?? PEER_DEFAULT;
    for (const cache of ["warm", "cold"] as const) {
      const label = `${w.random ? "random 4K" : "seq 128K"} ${cache}`;
      if (cache === "warm") {
        await warmPageCache(lun);
        // One untimed run per side: V8 optimises vmkit's path after some thousand commands.
        await vmkitRun(tgt.port, w, PILOT_SECONDS / 2);
        await peerRun(tgt.port, w, p, PILOT_SECONDS / 2);
      }
      if (cache === "cold") await prepareCache([lun], false);
      const resident = ((await residentBytes(lun)) / (1 << 20)).toFixed(0);
      console.log("");
      console.log(
        `${label}: ${resident} MiB of the LUN file in the page cache before each run` +
          (cache === "cold" ? " (dropped and checked ≤ 1% before every run of either side)" : ""),
      );
      const before = cache === "cold" ? () => prepareCache([lun], false) : () => Promise.resolve();
      const r = await alternate(label, before, [
        ["vmkit", () => vmkitRun(tgt.port, w, SECONDS)],
        ["peer", () => peerRun(tgt.port, w, p, SECONDS)],
      ], cell++);
      const vmkit = r.get("vmkit") ?? [];
      const peer = r.get("peer") ?? [];
      rows.push(
        `| ${w.name} | ${cache} | ${medianRange(vmkit, fmt)} | ${medianRange(peer, fmt)} | ${
          (median(vmkit) / median(peer)).toFixed(2)
        } | ${loadAverage()} |`,
      );
    }
  }
  console.log("");
  console.log("| metric | cache | vmkit | peer (iscsi-perf) | ratio (vmkit/peer) | load after |");
  console.log("| --- | --- | ---: | ---: | ---: | --- |");
  for (const row of rows) console.log(row);
  console.log("");
  console.log(`machine after the runs: ${machineLine()}`);
  for (const w of WORKLOADS) {
    console.log(`peer command: ${peerCommand(tgt.port, w, best.get(w) ?? PEER_DEFAULT)}`);
  }
} finally {
  await tgt.stop();
  await Deno.remove(dir, { recursive: true });
}
