import assert from "node:assert/strict";
import { encodeFrame, MsgType } from "../../dsm/frames.ts";

const NODE_MAIN = new URL("../../dsm/node_main.ts", import.meta.url).pathname;

function freePort(): number {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (l.addr as Deno.NetAddr).port;
  l.close();
  return port;
}

async function connectRetry(port: number): Promise<Deno.TcpConn> {
  for (let i = 0;; i++) {
    try {
      return await Deno.connect({ hostname: "127.0.0.1", port });
    } catch (err) {
      if (!(err instanceof Deno.errors.ConnectionRefused) || i > 300) throw err;
      await new Promise((r) => setTimeout(r, 20));
    }
  }
}

async function attack(frames: Uint8Array[]): Promise<{ code: number; stderr: string }> {
  // The fake peer takes the higher port, so it has id 1 and dials node 0.
  let a = freePort();
  let b = freePort();
  if (a > b) [a, b] = [b, a];
  if (a === b) b = a + 1;
  const child = new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "-A",
      NODE_MAIN,
      "--listen",
      `127.0.0.1:${a}`,
      "--peers",
      `127.0.0.1:${b}`,
      "--program",
      "death_watch",
    ],
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const conn = await connectRetry(a);
  try {
    const hello = encodeFrame({ type: MsgType.HELLO, region: 0, block: 0, a: 1, b: 2, data: null });
    await conn.write(hello);
    for (const f of frames) await conn.write(f);
    const out = await child.output();
    return { code: out.code, stderr: new TextDecoder().decode(out.stderr) };
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
