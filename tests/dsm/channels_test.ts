import assert from "node:assert/strict";
import { runLocalCluster } from "../../dsm/cluster.ts";
import {
  acceptChannelHandshake,
  acceptHandshake,
  clusterAuth,
  dialHandshake,
} from "../../dsm/handshake.ts";

Deno.test("a worker writes its remote misses on its own request channel to the home", async () => {
  const run = await runLocalCluster({
    program: "read_latency",
    nodes: 2,
    workers: 1,
    params: { count: 40, warmup: 10 },
  });
  const prober = run.stats.find((s) => s.node === 1);
  assert.ok(prober !== undefined);
  // 50 probed blocks homed on node 0, each one READ written by the worker itself.
  assert.ok(prober.channelRequests >= 50, `only ${prober.channelRequests} requests on channels`);
  assert.ok(prober.readMisses + prober.writeMisses + prober.upgrades >= prober.channelRequests);
  const r = run.result as { count: number; medianUs: number };
  assert.equal(r.count, 40);
  // The summary only: every sample is printed only when asked (`samples=1`, the bench).
  assert.equal("samplesUs" in r, false);
});

async function pair(): Promise<[Deno.TcpConn, Deno.TcpConn]> {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const dial = Deno.connect({ hostname: "127.0.0.1", port: (l.addr as Deno.NetAddr).port });
  const acc = await l.accept();
  l.close();
  return [await dial, acc];
}

Deno.test("any member may open a request channel, and the node-link acceptor refuses one", async () => {
  const auth = await clusterAuth(new Uint8Array(32).fill(7), ["127.0.0.1:1", "127.0.0.1:2"]);
  const deadline = () => Date.now() + 5000;
  // Node 0 may open a channel to node 1 (a node link goes only from higher to lower ids).
  {
    const [d, a] = await pair();
    const [, got] = await Promise.all([
      dialHandshake(d, auth, 0, 1, deadline(), 3),
      acceptChannelHandshake(a, auth, 1, deadline()),
    ]);
    assert.deepEqual(got, { node: 0, channel: 3 });
    d.close();
    a.close();
  }
  // The public node-link acceptor refuses a channel.
  {
    const [d, a] = await pair();
    const results = await Promise.allSettled([
      dialHandshake(d, auth, 1, 0, deadline(), 1),
      acceptHandshake(a, auth, 0, deadline()),
    ]);
    assert.equal(results[1].status, "rejected");
    assert.match(String((results[1] as PromiseRejectedResult).reason), /request channel 1/);
    d.close();
  }
});
