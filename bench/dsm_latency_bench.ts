/**
 * Remote read-miss latency over loopback TCP: a worker on node 1 reads 1000
 * cold blocks homed on node 0, after 1000 untimed misses on other blocks (JIT
 * warm-up). Peer: a raw request/response between two Deno processes over
 * loopback TCP with the same frame sizes (READ 20 B, DATA 84 B) and the same
 * warm-up, the floor any Deno TCP DSM pays.
 *
 * @module
 */

import { runLocalCluster } from "../dsm/cluster.ts";
import { loadAverage, machineLine, median, medianRange } from "./stats.ts";

const SELF = new URL(import.meta.url).pathname;
const COUNT = 1000;
const WARMUP = 1000;
const RUNS = 5;
const RELAY_WORKER = "dsm-latency-relay";
const RELAY_BELL = 0;
const RELAY_DONE = 1;

async function echoServer(port: number): Promise<void> {
  const l = Deno.listen({ hostname: "127.0.0.1", port });
  const c = await l.accept();
  l.close();
  c.setNoDelay(true);
  const req = new Uint8Array(20);
  const reply = new Uint8Array(84);
  for (;;) {
    let got = 0;
    while (got < req.length) {
      const n = await c.read(req.subarray(got));
      if (n === null) return;
      got += n;
    }
    let off = 0;
    while (off < reply.length) off += await c.write(reply.subarray(off));
  }
}

/**
 * Round-trip times of the peer: the warm-up ones and the timed ones, each
 * sorted. With `relay`, a worker thread asks the main thread (shared-memory
 * doorbell, `Atomics.waitAsync`) to do each TCP round trip and sleeps in
 * `Atomics.wait` until the main thread wakes it: the thread layout of a DSM
 * miss (worker → node thread → remote → node thread → worker) with no DSM code.
 */
async function peerRtt(relay: boolean): Promise<{ cold: number[]; warm: number[] }> {
  const probe = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (probe.addr as Deno.NetAddr).port;
  probe.close();
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", SELF, "--echo", String(port)],
  })
    .spawn();
  let conn: Deno.TcpConn | null = null;
  for (let i = 0; conn === null && i < 500; i++) {
    try {
      conn = await Deno.connect({ hostname: "127.0.0.1", port });
    } catch (err) {
      if (!(err instanceof Deno.errors.ConnectionRefused)) throw err;
      await new Promise((r) => setTimeout(r, 10));
    }
  }
  if (conn === null) throw new Error("echo peer did not start");
  conn.setNoDelay(true);
  const req = new Uint8Array(20);
  const reply = new Uint8Array(84);
  const roundTrip = async (): Promise<void> => {
    await conn.write(req);
    let got = 0;
    while (got < reply.length) {
      const n = await conn.read(reply.subarray(got));
      if (n === null) throw new Error("echo peer closed");
      got += n;
    }
  };
  const all = new Float64Array(WARMUP + COUNT);
  if (relay) {
    const ctrl = new Int32Array(new SharedArrayBuffer(8));
    const worker = new Worker(import.meta.url, { type: "module", name: RELAY_WORKER });
    const done = new Promise<Float64Array>((resolve) => {
      worker.onmessage = (ev: MessageEvent<Float64Array>) => resolve(ev.data);
    });
    worker.postMessage(ctrl);
    for (let i = 0; i < all.length; i++) {
      const wait = Atomics.waitAsync(ctrl, RELAY_BELL, i);
      if (wait.async) await wait.value;
      await roundTrip();
      Atomics.add(ctrl, RELAY_DONE, 1);
      Atomics.notify(ctrl, RELAY_DONE);
    }
    all.set(await done);
    worker.terminate();
  } else {
    for (let i = 0; i < all.length; i++) {
      const t0 = performance.now();
      await roundTrip();
      all[i] = (performance.now() - t0) * 1000;
    }
  }
  conn.close();
  await child.status;
  const cold = Array.from(all.subarray(0, WARMUP)).sort((a, b) => a - b);
  const warm = Array.from(all.subarray(WARMUP)).sort((a, b) => a - b);
  return { cold, warm };
}

/** The worker side of the relayed peer: rings, sleeps until woken, times each round trip. */
function relayWorker(): void {
  const scope = globalThis as unknown as {
    onmessage: ((ev: MessageEvent<Int32Array>) => void) | null;
    postMessage(v: Float64Array): void;
  };
  scope.onmessage = (ev) => {
    const ctrl = ev.data;
    const lat = new Float64Array(WARMUP + COUNT);
    for (let i = 0; i < lat.length; i++) {
      const t0 = performance.now();
      Atomics.add(ctrl, RELAY_BELL, 1);
      Atomics.notify(ctrl, RELAY_BELL);
      while (Atomics.load(ctrl, RELAY_DONE) === i) Atomics.wait(ctrl, RELAY_DONE, i, 1000);
      lat[i] = (performance.now() - t0) * 1000;
    }
    scope.postMessage(lat);
  };
}

if ((globalThis as { name?: string }).name === RELAY_WORKER) {
  relayWorker();
} else if (Deno.args[0] === "--echo") {
  await echoServer(Number(Deno.args[1]));
} else {
  const medians: number[] = [];
  // Every timed sample of every run, per side: the judged figure is their median.
  const pooled: number[] = [];
  const p90s: number[] = [];
  const colds: number[] = [];
  // Both peers are measured like vmkit: each run after the same warm-up, the three
  // sides alternating run by run, the median of the runs reported.
  const at = (v: number[], q: number): number => v[Math.floor(v.length * q)] ?? 0;
  const side = () => ({
    median: [] as number[],
    p90: [] as number[],
    cold: [] as number[],
    all: [] as number[],
  });
  const raw = side();
  const relayed = side();
  const peer = async (relay: boolean, into: typeof raw): Promise<void> => {
    const r = await peerRtt(relay);
    into.all.push(...r.warm);
    into.median.push(at(r.warm, 0.5));
    into.p90.push(at(r.warm, 0.9));
    into.cold.push(at(r.cold, 0.5));
  };
  for (let run = 0; run < RUNS; run++) {
    const sides = [
      async () => {
        const r = await runLocalCluster({
          program: "read_latency",
          nodes: 2,
          workers: 1,
          params: { count: COUNT, warmup: WARMUP, samples: 1 },
        });
        const res = r.result as {
          medianUs: number;
          p90Us: number;
          warmupMedianUs: number;
          samplesUs: number[];
        };
        pooled.push(...res.samplesUs);
        medians.push(res.medianUs);
        p90s.push(res.p90Us);
        colds.push(res.warmupMedianUs);
      },
      () => peer(false, raw),
      () => peer(true, relayed),
    ];
    if (run % 2 === 1) sides.reverse();
    for (const side of sides) await side();
  }
  const fmt = (x: number): string => x.toFixed(1);
  const row = (metric: string, vmkit: number[], peer: number[]): string =>
    `| ${metric} | ${medianRange(vmkit, fmt)} | ${medianRange(peer, fmt)} | ${
      (median(peer) / median(vmkit)).toFixed(2)
    } |`;
  console.log("machine:", machineLine());
  console.log(
    `peer command: deno run -A bench/dsm_latency_bench.ts --echo PORT (raw 20 B request / 84 B reply over loopback TCP, ${COUNT} timed round trips after ${WARMUP} untimed); ` +
      `"relayed" peer: the same round trips made by the main thread for a worker that rings it and sleeps (Atomics.waitAsync / Atomics.wait), the thread layout of a DSM miss`,
  );
  const pooledMedian = median(pooled);
  console.log(
    `| metric (µs) | vmkit | peer | ratio (peer/vmkit, higher is better) |`,
  );
  console.log("| --- | --- | --- | --- |");
  console.log(
    `| remote read miss, median of all ${pooled.length} timed misses of ${RUNS} runs vs raw round trip | ${
      fmt(pooledMedian)
    } | ${fmt(median(raw.all))} | ${(median(raw.all) / pooledMedian).toFixed(2)} |`,
  );
  console.log(
    `| the same vs relayed round trip | ${fmt(pooledMedian)} | ${fmt(median(relayed.all))} | ${
      (median(relayed.all) / pooledMedian).toFixed(2)
    } |`,
  );
  console.log(`per run (median of ${RUNS} runs [range]):`);
  console.log(row("remote read miss median vs raw round trip", medians, raw.median));
  console.log(row("remote read miss p90 vs raw round trip", p90s, raw.p90));
  console.log(row("remote read miss median vs relayed round trip", medians, relayed.median));
  console.log(row("remote read miss p90 vs relayed round trip", p90s, relayed.p90));
  console.log(
    row(`first ${WARMUP} misses (JIT warm-up) median vs raw round trip`, colds, raw.cold),
  );
  console.log(
    `target: median of all timed misses ≤ 50 µs: ${fmt(pooledMedian)} µs, ${
      pooledMedian <= 50 ? "met" : "NOT met"
    } (load ${loadAverage()})`,
  );
}
