/**
 * Benchmark: durable SUI allocations with the file registry (each allocation
 * is fsynced before it returns) — one at a time, many concurrent calls from
 * one process (group commit), and one `allocMany` batch — beside the floor
 * set by the disk: coreutils `dd` appending records of the same size with
 * `oflag=dsync` (one synchronous write per record), in the same directory.
 *
 * Each of `--runs` rounds (default 5) uses a fresh registry and a fresh dd
 * file; vmkit and the peer alternate which goes first. The table gives the
 * median with the range; the machine load is printed before and after.
 *
 * Usage: deno run -A bench/san_sui_bench.ts [--runs N]
 *
 * @module
 */

import { FileSuiRegistry } from "../san/mod.ts";
import { loadAverage, machineLine, median, medianRange } from "./stats.ts";

const SERIAL = 2000;
const CONCURRENT = 5000;
const BATCH = 20000;
const RECORD = 110; // bytes of one journal line for an iqn allocation
const runsAt = Deno.args.indexOf("--runs");
const RUNS = Math.max(1, runsAt < 0 ? 5 : Number(Deno.args[runsAt + 1] ?? "") || 5);

/** Allocations per second of the three vmkit workloads on a fresh registry in `dir`. */
async function vmkitRound(
  dir: string,
): Promise<{ serial: number; concurrent: number; batch: number }> {
  const reg = await FileSuiRegistry.open(`${dir}/sui.journal`);
  try {
    let t = performance.now();
    for (let i = 0; i < SERIAL; i++) await reg.alloc(`serial-${i}`);
    const serial = SERIAL / ((performance.now() - t) / 1000);
    t = performance.now();
    await Promise.all(Array.from({ length: CONCURRENT }, (_, i) => reg.alloc(`conc-${i}`)));
    const concurrent = CONCURRENT / ((performance.now() - t) / 1000);
    t = performance.now();
    await reg.allocMany(Array.from({ length: BATCH }, (_, i) => `batch-${i}`));
    const batch = BATCH / ((performance.now() - t) / 1000);
    const unique = new Set((await reg.list()).map((r) => r.sui)).size;
    if (unique !== SERIAL + CONCURRENT + BATCH) {
      throw new Error(`expected unique SUIs, got ${unique}`);
    }
    return { serial, concurrent, batch };
  } finally {
    await reg.close();
  }
}

function peerArgs(dir: string): string[] {
  return [
    "if=/dev/zero",
    `of=${dir}/dd.journal`,
    `bs=${RECORD}`,
    `count=${SERIAL}`,
    "oflag=dsync,append",
    "conv=notrunc",
    "status=none",
  ];
}

/** Synchronous record appends per second of `dd oflag=dsync` in `dir`. */
async function peerRound(dir: string): Promise<number> {
  const t = performance.now();
  const out = await new Deno.Command("dd", { args: peerArgs(dir), stderr: "piped" }).output();
  if (!out.success) throw new Error(`dd failed: ${new TextDecoder().decode(out.stderr)}`);
  return SERIAL / ((performance.now() - t) / 1000);
}

const dir = await Deno.makeTempDir({ prefix: "vmkit-bench-sui-" });
try {
  console.log(`machine: ${machineLine()}`);
  const serial: number[] = [], concurrent: number[] = [], batch: number[] = [], peer: number[] = [];
  for (let round = 0; round < RUNS; round++) {
    const at = await Deno.makeTempDir({ dir, prefix: `round-${round}-` });
    const sides = [
      async () => {
        const v = await vmkitRound(at);
        serial.push(v.serial);
        concurrent.push(v.concurrent);
        batch.push(v.batch);
      },
      async () => peer.push(await peerRound(at)),
    ];
    if (round % 2 === 1) sides.reverse();
    for (const side of sides) await side();
    await Deno.remove(at, { recursive: true });
  }
  console.log(
    `registry: a fresh journal per round in ${dir} (every allocation durable before it returns); ` +
      `median of ${RUNS} rounds [range], order alternating`,
  );
  console.log("");
  console.log("| metric | vmkit | peer (dd oflag=dsync) | ratio (vmkit/peer) |");
  console.log("| --- | ---: | ---: | ---: |");
  const fmt = (x: number): string => x.toFixed(0);
  const row = (name: string, v: number[]): void =>
    console.log(
      `| ${name} | ${medianRange(v, fmt)} | ${medianRange(peer, fmt)} | ${
        (median(v) / median(peer)).toFixed(2)
      } |`,
    );
  row(`durable allocations/s, one at a time (${SERIAL})`, serial);
  row(`durable allocations/s, ${CONCURRENT} concurrent calls, one process`, concurrent);
  row(`durable allocations/s, one allocMany batch of ${BATCH}`, batch);
  console.log("");
  console.log(`load after the runs: ${loadAverage()}`);
  console.log(`target: >= 1000 durable allocations/s from one process`);
  console.log(`peer command: dd ${peerArgs("<round dir>").join(" ")}`);
} finally {
  await Deno.remove(dir, { recursive: true });
}
