/**
 * Benchmark: durable SUI allocations with the file registry (each allocation
 * is fsynced before it returns) — one at a time, many concurrent calls from
 * one process (group commit), and one `allocMany` batch — beside the floor
 * set by the disk: coreutils `dd` appending records of the same size with
 * `oflag=dsync` (one synchronous write per record), in the same directory.
 *
 * Usage: deno run -A bench/san_sui_bench.ts
 *
 * @module
 */

import { FileSuiRegistry } from "../san/mod.ts";

const SERIAL = 2000;
const CONCURRENT = 5000;
const BATCH = 20000;
const RECORD = 110; // bytes of one journal line for an iqn allocation

async function cpuModel(): Promise<string> {
  const info = await Deno.readTextFile("/proc/cpuinfo");
  return /model name\s*:\s*(.*)/.exec(info)?.[1] ?? "unknown";
}

const dir = await Deno.makeTempDir({ prefix: "vmkit-bench-sui-" });
try {
  const reg = await FileSuiRegistry.open(`${dir}/sui.journal`);
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
  await reg.close();
  if (unique !== SERIAL + CONCURRENT + BATCH) {
    throw new Error(`expected unique SUIs, got ${unique}`);
  }

  const peerArgs = [
    "if=/dev/zero",
    `of=${dir}/dd.journal`,
    `bs=${RECORD}`,
    `count=${SERIAL}`,
    "oflag=dsync,append",
    "conv=notrunc",
    "status=none",
  ];
  t = performance.now();
  const out = await new Deno.Command("dd", { args: peerArgs, stderr: "piped" }).output();
  if (!out.success) throw new Error(`dd failed: ${new TextDecoder().decode(out.stderr)}`);
  const peer = SERIAL / ((performance.now() - t) / 1000);

  console.log(`machine: nproc ${navigator.hardwareConcurrency}, CPU ${await cpuModel()}`);
  console.log(`registry: ${dir}/sui.journal (every allocation durable before it returns)`);
  console.log("");
  console.log("| metric | vmkit | peer (dd oflag=dsync) | ratio (vmkit/peer) |");
  console.log("| --- | ---: | ---: | ---: |");
  const row = (name: string, v: number): void =>
    console.log(`| ${name} | ${v.toFixed(0)} | ${peer.toFixed(0)} | ${(v / peer).toFixed(2)} |`);
  row(`durable allocations/s, one at a time (${SERIAL})`, serial);
  row(`durable allocations/s, ${CONCURRENT} concurrent calls, one process`, concurrent);
  row(`durable allocations/s, one allocMany batch of ${BATCH}`, batch);
  console.log("");
  console.log(`target: >= 1000 durable allocations/s from one process`);
  console.log(`peer command: dd ${peerArgs.join(" ")}`);
} finally {
  await Deno.remove(dir, { recursive: true });
}
