import assert from "node:assert/strict";
import { Directory } from "../../dsm/directory.ts";
import { DsmProtocolError } from "../../dsm/errors.ts";
import { type Message, MsgType } from "../../dsm/frames.ts";
import { SyncManager } from "../../dsm/sync_manager.ts";

interface Sent {
  to: number;
  type: number;
  block: number;
  a: number;
  b: number;
  data: number[] | null;
}

function directory(): { dir: Directory; sent: Sent[] } {
  const sent: Sent[] = [];
  const dir = new Directory(
    [{ size: 256, blockSize: 64 }],
    (to, type, _region, block, a, b, data) => {
      sent.push({
        to,
        type,
        block,
        a,
        b,
        data: data === null ? null : Array.from(data.subarray(0, 2)),
      });
    },
  );
  return { dir, sent };
}

function req(type: Message["type"], block: number, requester: number): Message {
  return { type, region: 0, block, a: requester, b: 0, data: null };
}

Deno.test("the home answers reads from memory and invalidates every other sharer before granting exclusivity", () => {
  const { dir, sent } = directory();
  dir.request(req(MsgType.READ, 1, 0));
  dir.request(req(MsgType.READ, 1, 2));
  assert.deepEqual(sent.map((s) => [s.to, s.type, s.b]), [[0, MsgType.DATA, 0], [
    2,
    MsgType.DATA,
    0,
  ]]);
  sent.length = 0;
  dir.request(req(MsgType.UPGRADE, 1, 2));
  assert.deepEqual(sent.map((s) => [s.to, s.type]), [[0, MsgType.INVALIDATE]]);
  // A read arriving meanwhile waits for the upgrade to finish.
  dir.request(req(MsgType.READ, 1, 1));
  assert.equal(sent.length, 1);
  dir.invalidationAck({ ...req(MsgType.ACK, 1, 0), b: 0 }, 0);
  // The upgrade is granted without data, then the queued read makes the new owner write back.
  assert.deepEqual(sent.slice(1).map((s) => [s.to, s.type, s.b]), [[2, MsgType.ACK, 1], [
    2,
    MsgType.FETCH,
    0,
  ]]);
  sent.length = 0;
  const data = new Uint8Array(64).fill(9);
  dir.writeback({ ...req(MsgType.WRITEBACK, 1, 0), data }, 2, data);
  assert.deepEqual(sent, [{ to: 1, type: MsgType.DATA, block: 1, a: 0, b: 0, data: [9, 9] }]);
});

Deno.test("an upgrade from a node that lost its copy meanwhile is answered with data", () => {
  const { dir, sent } = directory();
  dir.request(req(MsgType.READ, 0, 1));
  dir.request(req(MsgType.READX, 0, 2));
  dir.invalidationAck(req(MsgType.ACK, 0, 1), 1);
  sent.length = 0;
  dir.request(req(MsgType.UPGRADE, 0, 1));
  assert.deepEqual(sent.map((s) => [s.to, s.type, s.b]), [[2, MsgType.FETCH, 1]]);
  const data = new Uint8Array(64).fill(4);
  dir.writeback({ ...req(MsgType.WRITEBACK, 0, 0), data }, 2, data);
  assert.deepEqual(sent[1], { to: 1, type: MsgType.DATA, block: 0, a: 0, b: 1, data: [4, 4] });
});

Deno.test("the home refuses write-backs and acknowledgements nobody asked for", () => {
  const { dir } = directory();
  const data = new Uint8Array(64);
  assert.throws(
    () => dir.writeback({ ...req(MsgType.WRITEBACK, 2, 0), data }, 3, data),
    DsmProtocolError,
  );
  assert.throws(() => dir.invalidationAck(req(MsgType.ACK, 2, 0), 1), /nobody asked for/);
});

Deno.test("locks are granted in request order and only their holder may release them", () => {
  const grants: Array<[number, number, number]> = [];
  const sync = new SyncManager(3, (to, type, id, _a, b) => {
    if (type === MsgType.LOCK_GRANT) grants.push([id, to, b]);
  });
  sync.acquire(5, 1, 0);
  sync.acquire(5, 2, 3);
  sync.acquire(5, 0, 1);
  assert.deepEqual(grants, [[5, 1, 0]]);
  assert.throws(() => sync.release(5, 2), DsmProtocolError);
  sync.release(5, 1);
  sync.release(5, 2);
  assert.deepEqual(grants, [[5, 1, 0], [5, 2, 3], [5, 0, 1]]);
});
