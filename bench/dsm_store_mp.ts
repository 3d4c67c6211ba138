/**
 * The message-passing peer of the store kernel (`dsm/programs/store_kernel.ts`):
 * what a user would write instead of shared memory, over the same
 * authenticated TCP mesh (`dsm/transport.ts`, the same frames) with no DSM
 * protocol. Each node process is one rank. Per round, every rank fills the
 * blocks it is assigned (the same words, the same `hash32`) and sends each to
 * the block's home (PUT = a WRITEBACK frame; `batch` blocks per frame), then
 * waits until every PUT is acknowledged (its fence); a barrier; every rank
 * fetches the blocks the kernel checks from their homes (GET = READ → DATA,
 * all in flight at once) and checks them; a barrier. The write phase (fill,
 * send, acknowledged) is timed in process, as the DSM kernel times its
 * stores up to the fence.
 *
 * Run by `bench/dsm_store_bench.ts`:
 * `deno run -A bench/dsm_store_mp.ts --ports P0,P1,.. --id I --blocks N --block-size B --rounds R --batch K`
 * with the cluster secret in `$VMKIT_DSM_SECRET`; prints `MP-RESULT {"writeMs":…}`.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { clusterAuth, SECRET_ENV } from "../dsm/handshake.ts";
import { type Message, MsgType } from "../dsm/frames.ts";
import { hash32 } from "../dsm/programs/util.ts";
import { type Endpoint, formatEndpoint, Mesh } from "../dsm/transport.ts";

const a = parseArgs({
  args: Deno.args,
  options: {
    ports: { type: "string" },
    id: { type: "string" },
    blocks: { type: "string", default: "128" },
    "block-size": { type: "string", default: "256" },
    rounds: { type: "string", default: "6" },
    batch: { type: "string", default: "1" },
  },
}).values;
const members: Endpoint[] = String(a.ports).split(",").map((p) => ({
  host: "127.0.0.1",
  port: Number(p),
}));
const id = Number(a.id);
const n = members.length;
const blocks = Number(a.blocks);
const blockSize = Number(a["block-size"]);
const rounds = Number(a.rounds);
const batch = Math.max(1, Math.min(Number(a.batch), Math.floor(4096 / (4 + blockSize))));
const words = blockSize / 4;

/** A count that a promise waits to reach. */
class Counter {
  value = 0;
  #target = Infinity;
  #resolve: (() => void) | null = null;
  add(k = 1): void {
    this.value += k;
    if (this.value >= this.#target && this.#resolve !== null) {
      const r = this.#resolve;
      this.#resolve = null;
      r();
    }
  }
  reach(target: number): Promise<void> {
    if (this.value >= target) return Promise.resolve();
    this.#target = target;
    return new Promise((r) => (this.#resolve = r));
  }
}

const memory = new Uint8Array(blocks * blockSize); // the blocks homed here
const acks = new Counter();
const got = new Counter();
const arrivals = new Map<number, number>();
const gos = new Counter();
const fetched = new Map<number, Uint8Array>();
let failure: Error | null = null;

const secret = new TextEncoder().encode(Deno.env.get(SECRET_ENV) ?? "");
const auth = await clusterAuth(secret, members.map(formatEndpoint));
const send = (to: number, msg: Message): void => {
  if (to === id) queueMicrotask(() => onMessage(id, msg));
  else mesh.send(to, msg);
};
function onMessage(from: number, m: Message): void {
  switch (m.type) {
    case MsgType.WRITEBACK: { // PUT: `a` blocks, each u32 id + data
      const d = m.data ?? new Uint8Array(0);
      const dv = new DataView(d.buffer, d.byteOffset, d.byteLength);
      for (let k = 0, off = 0; k < m.a; k++, off += 4 + blockSize) {
        memory.set(d.subarray(off + 4, off + 4 + blockSize), dv.getUint32(off, true) * blockSize);
      }
      send(from, { type: MsgType.ACK, region: 0, block: 0, a: m.a, b: 0, data: null });
      return;
    }
    case MsgType.ACK:
      return acks.add(m.a);
    case MsgType.READ: // GET
      send(from, {
        type: MsgType.DATA,
        region: 0,
        block: m.block,
        a: 0,
        b: 0,
        data: memory.slice(m.block * blockSize, (m.block + 1) * blockSize),
      });
      return;
    case MsgType.DATA:
      fetched.set(m.block, m.data ?? new Uint8Array(0));
      return got.add();
    case MsgType.BARRIER_ENTER: {
      const c = (arrivals.get(m.block) ?? 0) + 1;
      arrivals.set(m.block, c);
      if (c === n) {
        for (let k = 0; k < n; k++) {
          send(k, { type: MsgType.BARRIER_GO, region: 0, block: m.block, a: 0, b: 0, data: null });
        }
      }
      return;
    }
    case MsgType.BARRIER_GO:
      return gos.add();
  }
}
const mesh: Mesh = new Mesh({
  id,
  members,
  auth,
  onMessage,
  onPeerLost: (_from, err) => {
    failure = err;
    console.error(`mp node ${id}: ${err.message}`);
    Deno.exit(1);
  },
});
await mesh.start(20_000);

let gen = 0;
async function barrier(): Promise<void> {
  send(0, { type: MsgType.BARRIER_ENTER, region: 0, block: gen, a: id, b: 0, data: null });
  gen++;
  await gos.reach(gen);
}

// The same deal of blocks as the kernel (one worker per node: rank = node id).
const mine: number[] = [];
for (let b = 0; b < blocks; b++) {
  if (n === 1) {
    mine.push(b);
    continue;
  }
  let k = hash32(b) % (n - 1);
  if (k >= b % n) k++;
  if (k === id) mine.push(b);
}
const perHome = Array.from({ length: n }, () => new Uint8Array(batch * (4 + blockSize)));
const perHomeCount = new Array<number>(n).fill(0);
const flush = (home: number): void => {
  const c = perHomeCount[home] ?? 0;
  if (c === 0) return;
  const buf = perHome[home] ?? new Uint8Array(0);
  send(home, {
    type: MsgType.WRITEBACK,
    region: 0,
    block: 0,
    a: c,
    b: 0,
    data: buf.slice(0, c * (4 + blockSize)),
  });
  perHomeCount[home] = 0;
};

await barrier();
let total = 0;
let sent = 0;
for (let r = 0; r < rounds; r++) {
  const t0 = performance.now();
  for (const b of mine) {
    const home = b % n;
    const buf = perHome[home] ?? new Uint8Array(0);
    const c = perHomeCount[home] ?? 0;
    const off = c * (4 + blockSize);
    const dv = new DataView(buf.buffer, off, 4 + blockSize);
    dv.setUint32(0, b, true);
    for (let w = 0; w < words; w++) dv.setUint32(4 + w * 4, hash32(r, b, w), true);
    perHomeCount[home] = c + 1;
    sent++;
    if (c + 1 === batch) flush(home);
  }
  for (let h = 0; h < n; h++) flush(h);
  await acks.reach(sent);
  total += performance.now() - t0;
  await barrier();
  const want: number[] = [];
  for (let b = id % blocks; b < blocks; b += 7) want.push(b);
  fetched.clear();
  const base = got.value;
  for (const b of want) {
    send(b % n, { type: MsgType.READ, region: 0, block: b, a: id, b: 0, data: null });
  }
  await got.reach(base + want.length);
  for (const b of want) {
    const d = fetched.get(b) ?? new Uint8Array(8);
    const v = new DataView(d.buffer, d.byteOffset, d.byteLength).getUint32(4, true);
    if (v !== hash32(r, b, 1)) throw new Error(`mp kernel read ${v} in block ${b} round ${r}`);
  }
  await barrier();
}
console.log(`MP-RESULT ${JSON.stringify({ writeMs: total })}`);
for (let k = 0; k < n; k++) {
  if (k !== id) mesh.send(k, { type: MsgType.BYE, region: 0, block: 0, a: 0, b: 0, data: null });
}
await mesh.drain();
const deadline = Date.now() + 10_000;
while (failure === null && Date.now() < deadline) {
  let all = true;
  for (let k = 0; k < n; k++) if (k !== id && !mesh.saidBye(k)) all = false;
  if (all) break;
  await new Promise((r) => setTimeout(r, 2));
}
mesh.close();
