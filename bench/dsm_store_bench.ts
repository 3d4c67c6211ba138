/**
 * Lock-up free stores against the two baselines a user would compare with,
 * on a store-heavy kernel (`dsm/programs/store_kernel.ts`: workers overwrite
 * blocks homed on other nodes, each block's first store a miss):
 *
 * - blocking stores: the same program and cluster with `--blocking-stores`
 *   (every store waits until performed). Its store-miss latency inside the
 *   kernel is printed beside the same misses made by one writer alone, so the
 *   baseline is seen to be honest (a slow baseline inflates the ratio).
 * - message passing: the same kernel written with explicit messages over the
 *   same TCP mesh, no DSM (`bench/dsm_store_mp.ts`), at two settings: one PUT
 *   frame per block, and blocks coalesced per destination; the faster is the
 *   peer.
 *
 * Each side is timed the same way: the write phase in process per rank (stores
 * up to the fence / PUTs until acknowledged), mean over the writers; median of
 * RUNS alternating runs with the range; the load is printed.
 *
 * @module
 */

import { runLocalCluster } from "../dsm/cluster.ts";
import { SECRET_ENV } from "../dsm/handshake.ts";
import { loadAverage, machineLine, median, medianRange } from "./stats.ts";

const RUNS = 5;
const MP_NODE = new URL("./dsm_store_mp.ts", import.meta.url).pathname;
const BATCHES = [1, 15];

const params = { blocks: 128, blockSize: 256, rounds: 6 };
const shapes = [{ nodes: 2, workers: 1 }, { nodes: 3, workers: 1 }];

function freePorts(n: number): number[] {
  const ls = Array.from({ length: n }, () => Deno.listen({ hostname: "127.0.0.1", port: 0 }));
  const ports = ls.map((l) => (l.addr as Deno.NetAddr).port).sort((x, y) => x - y);
  for (const l of ls) l.close();
  return ports;
}

/** One message-passing run: the write-phase ms, mean over the ranks. */
async function messagePassing(nodes: number, batch: number): Promise<number> {
  const ports = freePorts(nodes);
  const secret = Array.from(crypto.getRandomValues(new Uint8Array(16)), (b) => b.toString(16))
    .join("").padEnd(32, "0");
  const children = ports.map((_, i) =>
    new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "-A",
        MP_NODE,
        "--ports",
        ports.join(","),
        "--id",
        String(i),
        "--blocks",
        String(params.blocks),
        "--block-size",
        String(params.blockSize),
        "--rounds",
        String(params.rounds),
        "--batch",
        String(batch),
      ],
      env: { [SECRET_ENV]: secret },
      stdout: "piped",
      stderr: "piped",
    }).output()
  );
  const outs = await Promise.all(children);
  let sum = 0;
  for (const [i, o] of outs.entries()) {
    const text = new TextDecoder().decode(o.stdout);
    const line = text.split("\n").find((l) => l.startsWith("MP-RESULT "));
    if (!o.success || line === undefined) {
      throw new Error(`message-passing node ${i} failed: ${new TextDecoder().decode(o.stderr)}`);
    }
    sum += (JSON.parse(line.slice(10)) as { writeMs: number }).writeMs;
  }
  return sum / nodes;
}

async function dsm(
  shape: { nodes: number; workers: number },
  blockingStores: boolean,
  solo = -1,
): Promise<{ writeMs: number; missUs: number; stores: number }> {
  const r = await runLocalCluster({
    program: "store_kernel",
    ...shape,
    params: { ...params, solo },
    blockingStores,
  });
  return r.result as { writeMs: number; missUs: number; stores: number };
}

console.log("machine:", machineLine());
console.log(
  `peer commands: deno task vmkit dsm run store_kernel --nodes N --blocking-stores ` +
    `--param blocks=${params.blocks} --param blockSize=${params.blockSize} --param rounds=${params.rounds}; ` +
    `deno run -A bench/dsm_store_mp.ts --ports P0,.. --id I --batch K (one process per node; ` +
    `batch ${BATCHES.join(" and ")} tried)`,
);
console.log(
  `| metric (median of ${RUNS} [range]) | vmkit (lock-up free) | peer | ratio (peer/vmkit, higher is better) | load |`,
);
console.log("| --- | --- | --- | --- | --- |");
const fmt = (x: number): string => x.toFixed(1);
const baseline: string[] = [];
for (const shape of shapes) {
  const free: number[] = [];
  const blocking: number[] = [];
  const missIn: number[] = [];
  const missAlone: number[] = [];
  const mp = new Map<number, number[]>(BATCHES.map((b) => [b, []]));
  let stores = 0;
  for (let run = 0; run < RUNS; run++) {
    const sides: Array<() => Promise<void>> = [
      async () => {
        const r = await dsm(shape, false);
        stores = r.stores;
        free.push(r.writeMs);
      },
      async () => {
        const r = await dsm(shape, true);
        blocking.push(r.writeMs);
        missIn.push(r.missUs);
      },
      async () => {
        missAlone.push((await dsm(shape, true, 1)).missUs);
      },
      ...BATCHES.map((b) => async () => {
        mp.get(b)?.push(await messagePassing(shape.nodes, b));
      }),
    ];
    // Alternate the order run by run.
    if (run % 2 === 1) sides.reverse();
    for (const side of sides) await side();
  }
  const what = `write phase ms, ${shape.nodes} nodes x ${shape.workers} worker, ${stores} stores`;
  const row = (peerName: string, peer: number[]): void =>
    console.log(
      `| ${what}, vs ${peerName} | ${medianRange(free, fmt)} | ${medianRange(peer, fmt)} | ${
        (median(peer) / median(free)).toFixed(2)
      } | ${loadAverage()} |`,
    );
  row("blocking stores", blocking);
  for (const b of BATCHES) {
    row(
      `message passing, ${b === 1 ? "one PUT frame per block" : `${b} blocks per frame`}`,
      mp.get(b) ?? [],
    );
  }
  const best = BATCHES.reduce((x, y) => median(mp.get(y) ?? []) < median(mp.get(x) ?? []) ? y : x);
  console.log(
    `| ${what}, vs message passing at its best setting (batch ${best}) | ${
      medianRange(free, fmt)
    } | ${medianRange(mp.get(best) ?? [], fmt)} | ${
      (median(mp.get(best) ?? []) / median(free)).toFixed(2)
    } | ${loadAverage()} |`,
  );
  baseline.push(
    `| blocking store miss µs, ${shape.nodes} nodes: inside the kernel vs one writer alone | ${
      medianRange(missIn, fmt)
    } | ${medianRange(missAlone, fmt)} | ${
      (median(missIn) / median(missAlone)).toFixed(2)
    } | ${loadAverage()} |`,
  );
}
console.log("");
console.log(
  "baseline check (both columns are the blocking mode; ≈ 1 means the baseline is honest):",
);
console.log("| metric (median of runs [range]) | inside the kernel | alone | ratio | load |");
console.log("| --- | --- | --- | --- | --- |");
for (const l of baseline) console.log(l);
