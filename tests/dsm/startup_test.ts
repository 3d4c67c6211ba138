import assert from "node:assert/strict";
import { encodeFrame, MsgType } from "../../dsm/frames.ts";
import { connectRetry, freePorts, joinAs, startNode } from "./node_helpers.ts";

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

Deno.test("silent and garbage connections at startup neither hang a node nor keep its real peer out", async () => {
  const [p0 = 0, p1 = 0] = freePorts(2);
  const n0 = startNode(p0, [p1]);
  const silent = await connectRetry(p0);
  const garbage = await connectRetry(p0);
  await garbage.write(crypto.getRandomValues(new Uint8Array(4096)));
  // A legacy HELLO claiming to be node 1, followed by frames: a spoof without the secret.
  const spoof = await connectRetry(p0);
  await spoof.write(
    encodeFrame({ type: MsgType.HELLO, region: 0, block: 0, a: 1, b: 2, data: null }),
  );
  await sleep(300);
  spoof.close(); // a "node 1" that vanishes must not be reported dead: it was never node 1
  // More silent connections than node 0 handshakes at once: it turns the rest away,
  // and node 1, turned away too at first, tries again until it gets in.
  const crowd = await Promise.all(Array.from({ length: 80 }, () => connectRetry(p0)));
  const n1 = startNode(p1, [p0]);
  const [a, b] = await Promise.all([n0.done, n1.done]);
  silent.close();
  garbage.close();
  for (const c of crowd) c.close();
  assert.ok(!a.killed && !b.killed, `a node hung (${a.ms} ms, ${b.ms} ms)`);
  assert.equal(a.code, 0, a.stderr);
  assert.equal(b.code, 0, b.stderr);
  assert.match(a.stdout, /DSM-RESULT/);
  assert.match(a.stderr, /refused a connection from 127\.0\.0\.1:\d+: /);
  assert.doesNotMatch(a.stderr + b.stderr, /died/);
});

Deno.test("a node whose peer never comes gives up at its start timeout whatever connects meanwhile", async () => {
  const [p0 = 0, p1 = 0] = freePorts(2);
  const n0 = startNode(p0, [p1], { extra: ["--start-timeout", "3000"] });
  const silent = await connectRetry(p0);
  const garbage = await connectRetry(p0);
  await garbage.write(new Uint8Array(64).fill(0xff));
  const r = await n0.done;
  silent.close();
  garbage.close();
  assert.ok(!r.killed, `the node hung for ${r.ms} ms`);
  assert.equal(r.code, 1, r.stderr);
  assert.match(
    r.stderr,
    /only 0 of 1 peers joined before the start timeout \(3000 ms\); missing node 1 at 127\.0\.0\.1:\d+/,
  );
  assert.ok(r.ms < 20_000, `gave up after ${r.ms} ms`);
});

Deno.test("a peer that does not know the cluster secret is refused on both sides, with the reason", async () => {
  const [p0 = 0, p1 = 0] = freePorts(2);
  const n0 = startNode(p0, [p1], { extra: ["--start-timeout", "4000"] });
  const n1 = startNode(p1, [p0], { secret: "another-secret-0123456789abcdef" });
  const [a, b] = await Promise.all([n0.done, n1.done]);
  assert.equal(b.code, 1, b.stderr);
  assert.match(
    b.stderr,
    /node 0 at 127\.0\.0\.1:\d+: handshake failed: the peer failed authentication/,
  );
  assert.equal(a.code, 1, a.stderr);
  // Node 1 hung up on seeing node 0's proof fail: node 0 says so, against the id it claimed.
  assert.match(
    a.stderr,
    /missing node 1 at 127\.0\.0\.1:\d+ \(a connection claiming to be it was refused: the peer closed the connection during the handshake\)/,
  );
  assert.doesNotMatch(a.stdout + b.stdout, /DSM-READY/);
});

Deno.test("a member that breaks the protocol is reported as misbehaving by the others, never as dead", async () => {
  // Nodes 0 and 1 are real; node 2 is the test, a member (it knows the secret) that dials both.
  const ports = freePorts(3);
  const [p0 = 0, p1 = 0, p2 = 0] = ports;
  const n0 = startNode(p0, [p1, p2], { program: "death_watch", params: [] });
  const n1 = startNode(p1, [p0, p2], { program: "death_watch", params: [] });
  const to0 = await joinAs(ports, 2, 0);
  const to1 = await joinAs(ports, 2, 1);
  await sleep(500);
  // A write-back of a block node 2 never owned: node 0 stops and tells node 1 why.
  await to0.write(encodeFrame({
    type: MsgType.WRITEBACK,
    region: 0,
    block: 0,
    a: 0,
    b: 0,
    data: new Uint8Array(64),
  }));
  const [a, b] = await Promise.all([n0.done, n1.done]);
  to0.close();
  to1.close();
  assert.equal(a.code, 1, a.stderr);
  assert.match(a.stderr, /wrote back block 0 it does not own/);
  assert.equal(b.code, 1, b.stderr);
  assert.match(b.stderr, /node 2 at 127\.0\.0\.1:\d+ broke the protocol \(reported by node 0\)/);
  assert.doesNotMatch(b.stderr, /node 2 .*died/);
});

Deno.test("a dialer that answers the challenge with a wrong proof is refused and the real peer still joins", async () => {
  const ports = freePorts(2);
  const [p0 = 0, p1 = 0] = ports;
  const n0 = startNode(p0, [p1]);
  await assert.rejects(
    () => joinAs(ports, 1, 0, "not-the-secret-0123456789abcdef"),
    /the peer failed authentication/,
  );
  // Replaying a HELLO_AUTH without knowing the secret: node 0 must check the proof itself.
  const conn = await connectRetry(p0);
  const nonce = new Uint8Array(16);
  await conn.write(
    encodeFrame({ type: MsgType.HELLO, region: 0, block: 0, a: 1, b: 2, data: nonce }),
  );
  const ack = new Uint8Array(4 + 16 + 48);
  for (let got = 0; got < ack.length;) got += (await conn.read(ack.subarray(got))) ?? ack.length;
  await conn.write(
    encodeFrame({
      type: MsgType.HELLO_AUTH,
      region: 0,
      block: 0,
      a: 1,
      b: 2,
      data: new Uint8Array(32),
    }),
  );
  const closed = await conn.read(new Uint8Array(1));
  conn.close();
  assert.equal(closed, null, "node 0 closed the connection of a wrong proof");
  const n1 = startNode(p1, [p0]);
  const [a, b] = await Promise.all([n0.done, n1.done]);
  assert.equal(a.code, 0, a.stderr);
  assert.equal(b.code, 0, b.stderr);
  assert.match(a.stderr, /failed authentication as node 1/);
  assert.doesNotMatch(a.stderr + b.stderr, /died/);
});
