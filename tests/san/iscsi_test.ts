import assert from "node:assert/strict";
import {
  discoverTargets,
  FileSuiRegistry,
  IscsiLoginError,
  IscsiSession,
  ScsiStatusError,
  SENSE_ILLEGAL_REQUEST,
  STATUS_CHECK_CONDITION,
} from "../../san/mod.ts";
import { backingFile, qemuIo, type TargetSpec, Tgtd } from "./tgt.ts";
import { prng } from "../prng.ts";

const TARGET = "iqn.2026-01.dev.vmkit.test:disk1";
const VM_A = "iqn.2026-01.dev.vmkit.test:vm-a";
const LUN_BYTES = 16 << 20;

/** Starts a private tgtd with one target bound to `initiators`, runs `fn`, cleans up. */
async function withTarget(
  fn: (t: Tgtd, spec: TargetSpec, dir: string) => Promise<void>,
  initiators: string[] = [VM_A],
  chap?: { user: string; secret: string },
  params?: Record<string, string>,
): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "vmkit-san-iscsi-" });
  const tgt = await Tgtd.start();
  try {
    const spec: TargetSpec = {
      tid: 1,
      name: TARGET,
      luns: [{ lun: 1, path: await backingFile(dir, "lun1.img", LUN_BYTES) }],
      initiators,
      ...(chap === undefined ? {} : { chap }),
      ...(params === undefined ? {} : { params }),
    };
    await tgt.addTarget(spec);
    await fn(tgt, spec, dir);
  } finally {
    await tgt.stop();
    await Deno.remove(dir, { recursive: true });
  }
}

function connect(t: Tgtd, initiatorName: string): Promise<IscsiSession> {
  return IscsiSession.connect({
    host: "127.0.0.1",
    port: t.port,
    initiatorName,
    targetName: TARGET,
    keepaliveMs: 0,
  });
}

Deno.test("VM A's SUI from the registry sees its LUN and VM B's SUI is refused with a typed login error", async () => {
  const dir = await Deno.makeTempDir({ prefix: "vmkit-san-acl-" });
  const reg = await FileSuiRegistry.open(`${dir}/sui.journal`);
  try {
    const a = await reg.alloc("vm-a", "iqn");
    const b = await reg.alloc("vm-b", "iqn");
    await withTarget(async (t) => {
      const s = await connect(t, a.sui);
      try {
        assert.deepEqual(await s.reportLuns(), [0, 1]);
        const inq = await s.inquiry(1);
        assert.equal(inq.deviceType, 0);
      } finally {
        await s.logout();
      }
      const found = await discoverTargets({
        host: "127.0.0.1",
        port: t.port,
        initiatorName: a.sui,
      });
      assert.deepEqual(found.map((x) => x.name), [TARGET]);
      assert.match(found[0]?.addresses[0] ?? "", new RegExp(`^127\\.0\\.0\\.1:${t.port},`));
      const err = await connect(t, b.sui).then(
        () => undefined,
        (e: unknown) => e,
      );
      assert.ok(err instanceof IscsiLoginError, `expected IscsiLoginError, got ${err}`);
      assert.equal(err.statusClass, 2);
      assert.equal(err.initiatorName, b.sui);
      assert.match(err.message, /ACL/);
    }, [a.sui]);
  } finally {
    await reg.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("SCSI commands return inquiry, capacity and readiness, and a read past the end raises CHECK CONDITION with decoded sense", async () => {
  await withTarget(async (t) => {
    const s = await connect(t, VM_A);
    try {
      const inq = await s.inquiry(1);
      assert.equal(inq.vendor, "IET");
      assert.equal(inq.qualifier, 0);
      const cap = await s.readCapacity16(1);
      assert.equal(cap.blockSize, 512);
      assert.equal(cap.bytes, BigInt(LUN_BYTES));
      await s.testUnitReady(1);
      await s.synchronizeCache(1);
      await s.nop();
      const lastLba = Number(cap.blocks);
      const err = await s.read16(1, lastLba, 1, new Uint8Array(512)).then(
        () => undefined,
        (e: unknown) => e,
      );
      assert.ok(err instanceof ScsiStatusError, `expected ScsiStatusError, got ${err}`);
      assert.equal(err.status, STATUS_CHECK_CONDITION);
      assert.equal(err.sense?.key, SENSE_ILLEGAL_REQUEST);
      assert.equal(err.sense?.asc, 0x21);
      assert.match(err.message, /logical block address out of range/);
      // The session is still usable after the error.
      await s.testUnitReady(1);
    } finally {
      await s.logout();
    }
  });
});

Deno.test("data written through vmkit reads back through libiscsi (qemu-io) and the other way round", async () => {
  await withTarget(async (t) => {
    const s = await connect(t, VM_A);
    try {
      const data = new Uint8Array(64 * 1024).fill(0x5a);
      await s.write16(1, 2048, data.length / 512, data);
      await s.synchronizeCache(1);
      const out = await qemuIo(t.port, TARGET, 1, VM_A, [`read -P 0x5a ${2048 * 512} 64k`]);
      assert.match(out, /read 65536\/65536 bytes/);
      assert.doesNotMatch(out, /Pattern verification failed/);
      await qemuIo(t.port, TARGET, 1, VM_A, [`write -P 0xc3 ${4096 * 512} 128k`]);
      const back = new Uint8Array(128 * 1024);
      await s.read16(1, 4096, back.length / 512, back);
      assert.ok(back.every((b) => b === 0xc3), "vmkit did not read what qemu-io wrote");
    } finally {
      await s.logout();
    }
  });
});

async function inFlightRoundTrip(
  params: Record<string, string> | undefined,
  seed: number,
): Promise<void> {
  await withTarget(
    async (t) => {
      const s = await connect(t, VM_A);
      const model = new Uint8Array(LUN_BYTES);
      const rand = prng(seed);
      try {
        // Non-overlapping random extents (1..512 blocks) so the model is exact with 64 in flight.
        const writes: Array<{ lba: number; data: Uint8Array }> = [];
        for (let slot = 0; slot < 64; slot++) {
          const blocks = 1 + Math.floor(rand() * 512);
          const lba = slot * 512;
          const data = new Uint8Array(blocks * 512);
          for (let i = 0; i < data.length; i++) data[i] = Math.floor(rand() * 256);
          writes.push({ lba, data });
          model.set(data, lba * 512);
        }
        await Promise.all(writes.map((w) => s.write16(1, w.lba, w.data.length / 512, w.data)));
        const reads = await Promise.all(
          writes.map(async (w) => {
            const buf = new Uint8Array(512 * 512);
            await s.read16(1, w.lba, 512, buf);
            return { w, buf };
          }),
        );
        for (const { w, buf } of reads) {
          const want = model.subarray(w.lba * 512, w.lba * 512 + buf.length);
          assert.ok(buf.every((b, i) => b === want[i]), `mismatch at LBA ${w.lba} (seed ${seed})`);
        }
        assert.equal(s.pending, 0);
        assert.equal(s.params.initialR2T, params?.InitialR2T !== "No");
      } catch (err) {
        console.error(`failing seed: ${seed}`);
        throw err;
      } finally {
        await s.logout();
      }
    },
    [VM_A],
    undefined,
    params,
  );
}

Deno.test("many commands in flight with immediate data and R2T keep every byte", async () => {
  await inFlightRoundTrip(undefined, 20260101);
});

Deno.test("many commands in flight with unsolicited Data-Out (InitialR2T=No) keep every byte", async () => {
  await inFlightRoundTrip({ InitialR2T: "No", FirstBurstLength: "65536" }, 20260102);
});

Deno.test("CHAP login succeeds with the right secret and is refused with a wrong one", async () => {
  const chap = { user: "vmkituser", secret: "s3cret-secret-1" };
  await withTarget(
    async (t) => {
      const ok = await IscsiSession.connect({
        host: "127.0.0.1",
        port: t.port,
        initiatorName: VM_A,
        targetName: TARGET,
        keepaliveMs: 0,
        chap: { username: chap.user, secret: chap.secret },
      });
      try {
        assert.equal((await ok.readCapacity16(1)).blockSize, 512);
      } finally {
        await ok.logout();
      }
      const err = await IscsiSession.connect({
        host: "127.0.0.1",
        port: t.port,
        initiatorName: VM_A,
        targetName: TARGET,
        keepaliveMs: 0,
        reconnect: false,
        chap: { username: chap.user, secret: "wrong-secret-99" },
      }).then(() => undefined, (e: unknown) => e);
      assert.ok(err instanceof IscsiLoginError, `expected IscsiLoginError, got ${err}`);
      assert.equal(err.statusClass, 2);
      assert.equal(err.statusDetail, 1);
    },
    [VM_A],
    chap,
  );
});

Deno.test("the NOP-Out keepalive runs on an idle session and logout closes it cleanly", async () => {
  await withTarget(async (t) => {
    const s = await IscsiSession.connect({
      host: "127.0.0.1",
      port: t.port,
      initiatorName: VM_A,
      targetName: TARGET,
      keepaliveMs: 100,
      nopTimeoutMs: 2000,
    });
    try {
      await new Promise((r) => setTimeout(r, 600));
      await s.testUnitReady(1);
      assert.ok(s.keepalivesAnswered >= 1, "no keepalive NOP-Out was answered");
      assert.equal(s.reconnects, 0);
    } finally {
      await s.logout();
    }
    await assert.rejects(() => s.testUnitReady(1), /closed/);
  });
});

Deno.test("mutual CHAP verifies the target's secret and refuses a target that does not know it", async () => {
  const dir = await Deno.makeTempDir({ prefix: "vmkit-san-mchap-" });
  const tgt = await Tgtd.start();
  try {
    await tgt.addTarget({
      tid: 1,
      name: TARGET,
      luns: [{ lun: 1, path: await backingFile(dir, "lun1.img", LUN_BYTES) }],
      initiators: [VM_A],
      chap: { user: "vmkituser", secret: "s3cret-secret-1" },
      mutualChap: { user: "targetuser", secret: "target-secret-2" },
    });
    const base = {
      host: "127.0.0.1",
      port: tgt.port,
      initiatorName: VM_A,
      targetName: TARGET,
      keepaliveMs: 0,
      reconnect: false,
    };
    const ok = await IscsiSession.connect({
      ...base,
      chap: {
        username: "vmkituser",
        secret: "s3cret-secret-1",
        mutualUsername: "targetuser",
        mutualSecret: "target-secret-2",
      },
    });
    await ok.testUnitReady(1);
    await ok.logout();
    await assert.rejects(
      () =>
        IscsiSession.connect({
          ...base,
          chap: {
            username: "vmkituser",
            secret: "s3cret-secret-1",
            mutualSecret: "not-the-target-secret",
          },
        }),
      /mutual CHAP failed/,
    );
  } finally {
    await tgt.stop();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("target NOP-In pings are answered so the target keeps the idle session", async () => {
  await withTarget(
    async (t) => {
      const s = await connect(t, VM_A);
      try {
        await new Promise((r) => setTimeout(r, 2500));
        await s.testUnitReady(1);
        assert.ok(s.targetPingsAnswered >= 1, "the target never pinged or was never answered");
        assert.equal(s.reconnects, 0, "the target dropped the session for unanswered pings");
      } finally {
        await s.logout();
      }
    },
    [VM_A],
    undefined,
    { nop_interval: "1", nop_count: "2" },
  );
});
