import assert from "node:assert/strict";
import { IscsiConnectionError, IscsiSession } from "../../san/mod.ts";
import { backingFile, Tgtd } from "./tgt.ts";

const TARGET = "iqn.2026-01.dev.vmkit.test:restart";
const VM = "iqn.2026-01.dev.vmkit.test:vm-restart";
const BLOCKS_PER_WRITE = 8; // 4 KiB
const WRITES = 3000;
const IN_FLIGHT = 32;

/** Fills a 4 KiB block with a pattern identifying write number `n`. */
function pattern(n: number, buf: Uint8Array): void {
  const v = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  for (let o = 0; o < buf.length; o += 4) v.setUint32(o, (n * 2654435761 + o) >>> 0, true);
}

/** Streams WRITES writes, calls `disrupt` once a third is acknowledged, then checks everything. */
async function streamThrough(disrupt: (tgt: Tgtd) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "vmkit-san-restart-" });
  const tgt = await Tgtd.start();
  let s: IscsiSession | undefined;
  try {
    const lunPath = await backingFile(dir, "lun.img", WRITES * BLOCKS_PER_WRITE * 512);
    await tgt.addTarget({
      tid: 1,
      name: TARGET,
      luns: [{ lun: 1, path: lunPath }],
      initiators: [VM],
    });
    s = await IscsiSession.connect({
      host: "127.0.0.1",
      port: tgt.port,
      initiatorName: VM,
      targetName: TARGET,
      keepaliveMs: 200,
      nopTimeoutMs: 2000,
      reconnectTimeoutMs: 30_000,
    });
    const session = s;
    const acked = new Set<number>();
    let next = 0;
    let restarted: Promise<void> | undefined;
    let disruptError: unknown;
    const writer = async (): Promise<void> => {
      const buf = new Uint8Array(BLOCKS_PER_WRITE * 512);
      while (next < WRITES) {
        const n = next++;
        pattern(n, buf);
        await session.write16(1, n * BLOCKS_PER_WRITE, BLOCKS_PER_WRITE, buf);
        acked.add(n);
        // Restart the target once a third of the stream is acknowledged, with writes in flight.
        if (restarted === undefined && acked.size >= WRITES / 3) {
          // Keep a failed disruption for the check below, not as an unhandled rejection.
          restarted = disrupt(tgt).then(
            () => undefined,
            (err: unknown) => {
              disruptError = err;
            },
          );
        }
      }
    };
    await Promise.all(Array.from({ length: IN_FLIGHT }, writer));
    await restarted;
    if (disruptError !== undefined) throw disruptError;
    assert.equal(acked.size, WRITES);
    assert.ok(session.reconnects >= 1, "the session never noticed the disruption");
    await session.synchronizeCache(1);
    // Read everything back through the session and straight from the backing file.
    const file = await Deno.readFile(lunPath);
    const want = new Uint8Array(BLOCKS_PER_WRITE * 512);
    const got = new Uint8Array(BLOCKS_PER_WRITE * 512);
    for (let n = 0; n < WRITES; n++) {
      pattern(n, want);
      const off = n * BLOCKS_PER_WRITE * 512;
      const disk = file.subarray(off, off + want.length);
      assert.ok(disk.every((b, i) => b === want[i]), `write ${n} is missing from the backing file`);
      if (n % 97 === 0) {
        await session.read16(1, n * BLOCKS_PER_WRITE, BLOCKS_PER_WRITE, got);
        assert.ok(got.every((b, i) => b === want[i]), `write ${n} reads back wrong`);
      }
    }
  } finally {
    await s?.logout();
    await tgt.stop();
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test("a target restarted in the middle of a write stream loses no acknowledged write", async () => {
  await streamThrough((tgt) => tgt.restart());
});

Deno.test("a connection dropped by the target mid-stream is logged in again and loses no acknowledged write", async () => {
  await streamThrough(async (tgt) => {
    await tgt.adm(["--mode", "conn", "--op", "delete", "--tid", "1", "--sid", "1", "--cid", "0"]);
  });
});

Deno.test("a target that stays down fails pending commands with a typed error after the reconnect timeout", async () => {
  const dir = await Deno.makeTempDir({ prefix: "vmkit-san-down-" });
  const tgt = await Tgtd.start();
  let s: IscsiSession | undefined;
  try {
    const lunPath = await backingFile(dir, "lun.img", 1 << 20);
    await tgt.addTarget({
      tid: 1,
      name: TARGET,
      luns: [{ lun: 1, path: lunPath }],
      initiators: [VM],
    });
    s = await IscsiSession.connect({
      host: "127.0.0.1",
      port: tgt.port,
      initiatorName: VM,
      targetName: TARGET,
      keepaliveMs: 0,
      reconnectTimeoutMs: 500,
    });
    await s.testUnitReady(1);
    await tgt.kill();
    const started = Date.now();
    const err = await s.write16(1, 0, 1, new Uint8Array(512)).then(
      () => undefined,
      (e: unknown) => e,
    );
    assert.ok(err instanceof IscsiConnectionError, `expected IscsiConnectionError, got ${err}`);
    assert.match(err.message, /could not log in again within 500 ms/);
    assert.ok(Date.now() - started < 10_000, "the failure took far longer than the timeout");
    await assert.rejects(() => s?.testUnitReady(1) ?? Promise.resolve(), /closed/);
  } finally {
    await s?.close();
    await tgt.stop();
    await Deno.remove(dir, { recursive: true });
  }
});
