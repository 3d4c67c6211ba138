import assert from "node:assert/strict";
import { IscsiConnection, type PduSink } from "../../san/iscsi_connection.ts";
import { pduLength, putNopOut } from "../../san/iscsi_pdu_build.ts";

/** A sink whose in-flight count the test sets; it expects no PDUs. */
function sink(inFlight: { n: number }): PduSink {
  return {
    pdu: () => {
      throw new Error("the test's peer sends nothing");
    },
    directTarget: () => undefined,
    placedDataIn: () => {},
    inFlight: () => inFlight.n,
    lost: () => {},
  };
}

/** Queues one 48-byte PDU (a NOP-Out stands in for a command) as a new command that may wait. */
function queueCommand(c: IscsiConnection, itt: number): void {
  const off = c.reserve(pduLength(0));
  putNopOut(c.out, c.outView, off, itt, 0xffffffff, itt, 0);
  c.queued(true);
}

/** Counts the bytes arriving on `conn` in the background. */
function counter(conn: Deno.Conn): { bytes: number; done: Promise<void> } {
  const state = { bytes: 0, done: Promise.resolve() };
  state.done = (async () => {
    const buf = new Uint8Array(4096);
    for (;;) {
      const n = await conn.read(buf).catch((err) => {
        if (err instanceof Deno.errors.BadResource || err instanceof Deno.errors.Interrupted) {
          return null;
        }
        throw err;
      });
      if (n === null) return;
      state.bytes += n;
    }
  })();
  return state;
}

/** Waits until `count` has seen `want` bytes or `ms` passed; returns the bytes seen. */
async function seen(count: { bytes: number }, want: number, ms: number): Promise<number> {
  const deadline = Date.now() + ms;
  while (count.bytes < want && Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 5));
  }
  return count.bytes;
}

Deno.test("new commands leave together once a quarter of those in flight wait, and at once when few are in flight", async () => {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  const accepted = listener.accept();
  const inFlight = { n: 16 };
  const c = await IscsiConnection.open("127.0.0.1", port, sink(inFlight));
  const peer = await accepted;
  const got = counter(peer);
  try {
    // 16 in flight: three new commands wait (the target still works on 13)...
    for (let i = 1; i <= 3; i++) queueCommand(c, i);
    assert.equal(await seen(got, 48, 150), 0, "commands left before a quarter waited");
    // ...and the fourth sends all four in one go.
    queueCommand(c, 4);
    assert.equal(await seen(got, 48 * 4, 2000), 48 * 4);
    // 6 in flight (fewer than 8): a new command leaves at once.
    inFlight.n = 6;
    queueCommand(c, 5);
    assert.equal(await seen(got, 48 * 5, 2000), 48 * 5);
    // A command that completes releases the held ones: 16 in flight, two wait,
    // then completions bring the count down to 7 and release() sends them.
    inFlight.n = 16;
    queueCommand(c, 6);
    queueCommand(c, 7);
    assert.equal(await seen(got, 48 * 6, 150), 48 * 5, "commands left before a quarter waited");
    inFlight.n = 7;
    c.release();
    assert.equal(await seen(got, 48 * 7, 2000), 48 * 7);
  } finally {
    c.drop();
    await c.reader;
    peer.close();
    await got.done;
    listener.close();
  }
});
