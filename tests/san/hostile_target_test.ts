import assert from "node:assert/strict";
import { IscsiConnectionError, IscsiProtocolError, IscsiSession } from "../../san/mod.ts";

/** Reads exactly one PDU (header and padded data) from a fake target's connection. */
async function readPdu(conn: Deno.Conn): Promise<{ h: DataView; data: Uint8Array } | undefined> {
  const h = new Uint8Array(48);
  if (!(await readFull(conn, h))) return undefined;
  const v = new DataView(h.buffer);
  const len = (h[5] ?? 0) << 16 | v.getUint16(6);
  const data = new Uint8Array((len + 3) & ~3);
  if (!(await readFull(conn, data))) return undefined;
  return { h: v, data: data.subarray(0, len) };
}

async function readFull(conn: Deno.Conn, buf: Uint8Array): Promise<boolean> {
  let got = 0;
  while (got < buf.length) {
    const n = await conn.read(buf.subarray(got));
    if (n === null) return false;
    got += n;
  }
  return true;
}

/**
 * A fake target that accepts any login, then answers SCSI commands with the
 * hostile PDUs `misbehave` builds.
 */
async function fakeTarget(
  misbehave: (
    cmd: DataView,
    cmdSN: number,
  ) => Uint8Array | Uint8Array[] | Promise<Uint8Array>,
  run: (port: number) => Promise<void>,
  window = 16,
): Promise<void> {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  const serve = (async () => {
    const conn = await listener.accept();
    const pending: Promise<number>[] = [];
    let statSN = 1;
    for (;;) {
      const pdu = await readPdu(conn).catch((err) => {
        if (err instanceof Deno.errors.ConnectionReset) return undefined;
        throw err;
      });
      if (pdu === undefined) break;
      const op = pdu.h.getUint8(0) & 0x3f;
      const cmdSN = pdu.h.getUint32(24);
      const out = new Uint8Array(48);
      const o = new DataView(out.buffer);
      if (op === 0x03) {
        // Accept every login request and move to the stage it asks for.
        o.setUint8(0, 0x23);
        o.setUint8(1, pdu.h.getUint8(1) & 0x8f);
        out.set(new Uint8Array(pdu.h.buffer, 8, 6), 8);
        o.setUint16(14, 7);
        o.setUint32(16, pdu.h.getUint32(16));
        o.setUint32(24, statSN++);
        o.setUint32(28, cmdSN);
        o.setUint32(32, cmdSN + window - 1);
        await conn.write(out);
      } else if (op === 0x01) {
        const reply = misbehave(pdu.h, cmdSN);
        if (reply instanceof Promise) {
          // Answer later while this loop keeps reading, as a real target would.
          pending.push(reply.then((b) => conn.write(b)));
        } else if (Array.isArray(reply)) {
          // Pieces written one by one with pauses: the initiator sees partial PDUs.
          for (const piece of reply) {
            await conn.write(piece);
            await new Promise((r) => setTimeout(r, 2));
          }
        } else {
          await conn.write(reply);
        }
      }
    }
    await Promise.allSettled(pending);
    conn.close();
  })();
  try {
    await run(port);
  } finally {
    listener.close();
    await serve;
  }
}

function dataIn(cmd: DataView, cmdSN: number, offset: number, len: number): Uint8Array {
  const out = new Uint8Array(48 + ((len + 3) & ~3));
  const o = new DataView(out.buffer);
  o.setUint8(0, 0x25);
  o.setUint8(1, 0x81);
  o.setUint8(5, len >> 16);
  o.setUint16(6, len & 0xffff);
  o.setUint32(16, cmd.getUint32(16));
  o.setUint32(20, 0xffffffff);
  o.setUint32(24, 1);
  o.setUint32(28, cmdSN + 1);
  o.setUint32(32, cmdSN + 16);
  o.setUint32(40, offset);
  return out;
}

/** A session to the fake target on `port` as initiator `...:tag`, with no keepalive or reconnect. */
function connectFake(port: number, tag: string): Promise<IscsiSession> {
  return IscsiSession.connect({
    host: "127.0.0.1",
    port,
    initiatorName: `iqn.2026-01.dev.vmkit.test:${tag}`,
    targetName: "iqn.2026-01.dev.vmkit.test:fake",
    keepaliveMs: 0,
    reconnect: false,
  });
}

Deno.test("a hostile target's Data-In beyond the read buffer fails that command, not the host", async () => {
  await fakeTarget((cmd, sn) => dataIn(cmd, sn, 4096, 512), async (port) => {
    const s = await connectFake(port, "hostile");
    try {
      const buf = new Uint8Array(512);
      await assert.rejects(() => s.read16(0, 0, 1, buf), IscsiProtocolError);
      assert.ok(buf.every((b) => b === 0), "out-of-range data leaked into the buffer");
    } finally {
      await s.close();
    }
  });
});

Deno.test("a hostile target's unknown opcode drops the connection with a typed error", async () => {
  await fakeTarget((cmd) => {
    const out = new Uint8Array(48);
    out[0] = 0x3a;
    new DataView(out.buffer).setUint32(16, cmd.getUint32(16));
    return out;
  }, async (port) => {
    const s = await connectFake(port, "hostile");
    try {
      const err = await s.testUnitReady(0).then(() => undefined, (e: unknown) => e);
      assert.ok(err instanceof IscsiConnectionError, `expected IscsiConnectionError, got ${err}`);
      assert.match(String((err as Error).cause), /unknown opcode 0x3a/);
    } finally {
      await s.close();
    }
  });
});

Deno.test("a target's CmdSN window of one command is honoured with many commands queued", async () => {
  let outstanding = false;
  let violations = 0;
  let served = 0;
  await fakeTarget((cmd, sn) => {
    // A second command arriving before the first is answered broke the window.
    if (outstanding) violations++;
    outstanding = true;
    served++;
    const out = new Uint8Array(48);
    const o = new DataView(out.buffer);
    o.setUint8(0, 0x21);
    o.setUint8(1, 0x80);
    o.setUint32(16, cmd.getUint32(16));
    o.setUint32(24, 2 + served);
    o.setUint32(28, sn + 1);
    o.setUint32(32, sn + 1); // admits exactly the next command
    return new Promise<Uint8Array>((resolve) =>
      setTimeout(() => {
        outstanding = false;
        resolve(out);
      }, 3)
    );
  }, async (port) => {
    const s = await connectFake(port, "window");
    try {
      await Promise.all(Array.from({ length: 20 }, () => s.testUnitReady(0)));
      assert.equal(served, 20);
      assert.equal(violations, 0, "commands were sent beyond MaxCmdSN");
    } finally {
      await s.close();
    }
  }, 1);
});

/** Splits `bytes` into pieces of `size` bytes (the last may be shorter). */
function pieces(bytes: Uint8Array, size: number): Uint8Array[] {
  const out: Uint8Array[] = [];
  for (let o = 0; o < bytes.length; o += size) out.push(bytes.subarray(o, o + size));
  return out;
}

Deno.test("large Data-In arriving in small pieces lands intact in the read buffer", async () => {
  const seed = 20261125;
  const half = 32 << 10;
  const payload = new Uint8Array(2 * half);
  let x = seed;
  for (let i = 0; i < payload.length; i++) {
    x = (Math.imul(x, 1103515245) + 12345) >>> 0;
    payload[i] = x >>> 24;
  }
  await fakeTarget((cmd, sn) => {
    // Two Data-In PDUs of 32 KiB (the second carries the status), cut into
    // pieces that split headers and payloads at odd places.
    const first = dataIn(cmd, sn, 0, half);
    first[1] = 0x00; // neither Final nor Status
    first.set(payload.subarray(0, half), 48);
    const second = dataIn(cmd, sn, half, half);
    second.set(payload.subarray(half), 48);
    const wire = new Uint8Array(first.length + second.length);
    wire.set(first);
    wire.set(second, first.length);
    return [wire.subarray(0, 20), ...pieces(wire.subarray(20), 5000)];
  }, async (port) => {
    const s = await connectFake(port, "pieces");
    try {
      const buf = new Uint8Array(payload.length);
      await s.read16(0, 0, payload.length / 512, buf);
      const bad = buf.findIndex((b, i) => b !== payload[i]);
      assert.equal(bad, -1, `byte ${bad} differs (seed ${seed})`);
    } finally {
      await s.close();
    }
  });
});

Deno.test("a hostile target's large Data-In beyond the read buffer fails that command and writes nothing", async () => {
  await fakeTarget((cmd, sn) => {
    const pdu = dataIn(cmd, sn, 16 << 10, 32 << 10);
    pdu.fill(0xee, 48);
    return pieces(pdu, 4096);
  }, async (port) => {
    const s = await connectFake(port, "hostile");
    try {
      const buf = new Uint8Array(32 << 10);
      await assert.rejects(() => s.read16(0, 0, buf.length / 512, buf), IscsiProtocolError);
      assert.ok(buf.every((b) => b === 0), "out-of-range data leaked into the buffer");
    } finally {
      await s.close();
    }
  });
});

Deno.test("commands re-issued one by one while many are at the target all complete", async () => {
  let served = 0;
  let maxAtTarget = 0;
  let atTarget = 0;
  await fakeTarget((cmd, sn) => {
    served++;
    atTarget++;
    maxAtTarget = Math.max(maxAtTarget, atTarget);
    const out = new Uint8Array(48);
    const o = new DataView(out.buffer);
    o.setUint8(0, 0x21);
    o.setUint8(1, 0x80);
    o.setUint32(16, cmd.getUint32(16));
    o.setUint32(24, 2 + served);
    o.setUint32(28, sn + 1);
    o.setUint32(32, sn + 64);
    return new Promise<Uint8Array>((resolve) =>
      setTimeout(() => {
        atTarget--;
        resolve(out);
      }, 1 + (served % 3))
    );
  }, async (port) => {
    const s = await connectFake(port, "reissue");
    try {
      // 24 workers, each issuing its next command as soon as the previous completes.
      await Promise.all(
        Array.from({ length: 24 }, async () => {
          for (let i = 0; i < 10; i++) await s.testUnitReady(0);
        }),
      );
      assert.equal(served, 240);
      assert.equal(s.pending, 0);
      assert.ok(maxAtTarget >= 16, `only ${maxAtTarget} commands reached the target at once`);
    } finally {
      await s.close();
    }
  }, 64);
});

Deno.test("a command issued while the target is busy goes out when the target's queue drains", async () => {
  let served = 0;
  await fakeTarget((cmd, sn) => {
    served++;
    const out = new Uint8Array(48);
    const o = new DataView(out.buffer);
    o.setUint8(0, 0x21);
    o.setUint8(1, 0x80);
    o.setUint32(16, cmd.getUint32(16));
    o.setUint32(24, 2 + served);
    o.setUint32(28, sn + 1);
    o.setUint32(32, sn + 64);
    return new Promise<Uint8Array>((resolve) => setTimeout(() => resolve(out), 20));
  }, async (port) => {
    const s = await connectFake(port, "drain");
    let timer: ReturnType<typeof setTimeout> | undefined;
    try {
      // 20 commands keep the target busy; one more, issued alone a moment later,
      // may wait for company but must leave once the 20 complete.
      const busy = Array.from({ length: 20 }, () => s.testUnitReady(0));
      await new Promise((r) => setTimeout(r, 5));
      const late = s.testUnitReady(0);
      const stuck = new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error("the late command never completed")), 5000);
      });
      await Promise.race([Promise.all([...busy, late]), stuck]);
      assert.equal(served, 21);
    } finally {
      clearTimeout(timer);
      await s.close();
    }
  }, 64);
});
