import assert from "node:assert/strict";
import { encodeFrame, MsgType } from "../../dsm/frames.ts";
import { freePorts, joinAs, startNode } from "./node_helpers.ts";

async function attack(frames: Uint8Array[]): Promise<{ code: number; stderr: string }> {
  // The fake peer takes the higher port, so it has id 1 and dials node 0; it knows the secret.
  const ports = freePorts(2);
  const [a = 0, b = 0] = ports;
  const node = startNode(a, [b], { program: "death_watch", params: [] });
  const conn = await joinAs(ports, 1, 0);
  try {
    for (const f of frames) await conn.write(f);
    const out = await node.done;
    return { code: out.code, stderr: out.stderr };
  } finally {
    conn.close();
  }
}

Deno.test("a peer sending data for a region that does not exist makes the node exit 1 with a protocol error", async () => {
  const bad = encodeFrame({
    type: MsgType.DATA,
    region: 9,
    block: 0,
    a: 0,
    b: 0,
    data: new Uint8Array(64),
  });
  const r = await attack([bad]);
  assert.equal(r.code, 1);
  assert.match(r.stderr, /region 9 block 0, which does not exist/);
});

Deno.test("a peer sending a frame longer than any block makes the node exit 1 without crashing", async () => {
  const bad = new Uint8Array(8);
  new DataView(bad.buffer).setUint32(0, 0x7fffffff, true);
  const r = await attack([bad]);
  assert.equal(r.code, 1);
  assert.match(r.stderr, /frame length 2147483647 is outside/);
});

Deno.test("a peer writing back a block it does not own makes the node exit 1 with a protocol error", async () => {
  const bad = encodeFrame({
    type: MsgType.WRITEBACK,
    region: 0,
    block: 0,
    a: 0,
    b: 0,
    data: new Uint8Array(64),
  });
  const r = await attack([bad]);
  assert.equal(r.code, 1);
  assert.match(r.stderr, /wrote back block 0 it does not own/);
});
