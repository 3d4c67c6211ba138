import assert from "node:assert/strict";
import { loadShim } from "../../native/ffi.ts";
import { HostMemory } from "../../vmm/memory.ts";
import { DiskHandle } from "../../vmm/disk_handle.ts";
import type { VirtioDeviceHost } from "../../vmm/devices/virtio/host.ts";
import type { DriveConfig } from "../../vmm/io_config.ts";
import { type Buf, HostDriver, queueLayout, S, startBlk } from "./virtio_driver.ts";
import { ioShim, URING_REQ_BYTES, UringOp, UringReq } from "../../native/io_ffi.ts";

await loadShim();

const MEM = 16 << 20;
const QUEUE_AT = 0x10000;
const BUF_AT = 0x100000;
const F_VERSION_1 = 1n << 32n;
const F_EVENT_IDX = 1n << 29n;
const F_INDIRECT = 1n << 28n;
const T_IN = 0, T_OUT = 1, T_FLUSH = 4, T_GET_ID = 8, T_DISCARD = 11, T_WRITE_ZEROES = 13;

interface Rig {
  mem: HostMemory;
  host: VirtioDeviceHost;
  drv: HostDriver;
  dir: string;
  path: string;
  disk: DiskHandle;
}

async function rig(
  opts: {
    readOnly?: boolean;
    features?: bigint;
    bytes?: number;
    format?: "raw" | "qcow2";
    path?: string;
    rateLimiter?: DriveConfig["rateLimiter"];
    syncWriteStallMs?: number;
  } = {},
): Promise<Rig> {
  const dir = await Deno.makeTempDir({ prefix: "vmkit-blk-" });
  let path = opts.path;
  if (path === undefined) {
    path = `${dir}/disk.raw`;
    const data = new Uint8Array(opts.bytes ?? 1 << 20);
    for (let i = 0; i < data.length; i += 512) data.fill((i / 512) & 0xff, i, i + 512);
    await Deno.writeFile(path, data);
  }
  const mem = HostMemory.create(MEM);
  const drive: DriveConfig = {
    id: "vda",
    backend: { kind: "file", path, ...(opts.format === undefined ? {} : { format: opts.format }) },
    readOnly: opts.readOnly ?? false,
    serial: "vmkit-serial-1",
    ...(opts.rateLimiter === undefined ? {} : { rateLimiter: opts.rateLimiter }),
  };
  const host = await startBlk(mem, drive, undefined, opts.syncWriteStallMs);
  const drv = new HostDriver(mem, host);
  return { mem, host, drv, dir, path, disk: new DiskHandle(host, drive) };
}

async function teardown(r: Rig): Promise<void> {
  await r.host.close();
  r.mem.close();
  await Deno.remove(r.dir, { recursive: true });
}

function start(r: Rig, features = F_VERSION_1 | F_EVENT_IDX | F_INDIRECT, size = 64): void {
  const st = r.drv.negotiate(features);
  assert.ok((st & S.FEATURES_OK) !== 0, `FEATURES_OK refused (status ${st})`);
  r.drv.setupQueue(0, queueLayout(QUEUE_AT, size));
  r.drv.driverOk();
}

/** Builds a request at `at`: header, data buffer(s), status; returns the chain and status address. */
function request(
  r: Rig,
  at: number,
  type: number,
  sector: number,
  dataLen: number,
  dataWrite: boolean,
) {
  const hdr = new DataView(new ArrayBuffer(16));
  hdr.setUint32(0, type, true);
  hdr.setBigUint64(8, BigInt(sector), true);
  r.mem.write(at, new Uint8Array(hdr.buffer));
  const bufs: Buf[] = [{ addr: at, len: 16, write: false }];
  if (dataLen > 0) bufs.push({ addr: at + 0x1000, len: dataLen, write: dataWrite });
  const status = at + 0x1000 + Math.max(dataLen, 0) + 0x10;
  r.mem.write(status, new Uint8Array([0xee]));
  bufs.push({ addr: status, len: 1, write: true });
  return { bufs, data: at + 0x1000, status };
}

for (
  const [how, syncWriteStallMs] of [["writes on the I/O Worker", undefined], [
    "writes through io_uring",
    0,
  ]] as const
) {
  Deno.test(`virtio-blk on a raw file (${how}): write, flush, read back, GET_ID, through ioeventfd-style kicks`, () =>
    rawRoundTrip(syncWriteStallMs));
}

async function rawRoundTrip(syncWriteStallMs: number | undefined): Promise<void> {
  const r = await rig(syncWriteStallMs === undefined ? {} : { syncWriteStallMs });
  try {
    assert.equal(r.drv.read(0x00), 0x74726976);
    assert.equal(r.drv.read(0x04), 2);
    assert.equal(r.drv.read(0x08), 2);
    const feats = r.drv.deviceFeatures();
    assert.ok(
      (feats & F_VERSION_1) !== 0n && (feats & F_EVENT_IDX) !== 0n && (feats & F_INDIRECT) !== 0n,
    );
    assert.equal(r.drv.config(0, 4), (1 << 20) / 512); // capacity low word
    start(r);
    // Write 4 KiB of 0x5a at sector 8.
    const w = request(r, BUF_AT, T_OUT, 8, 4096, false);
    r.mem.write(w.data, new Uint8Array(4096).fill(0x5a));
    r.drv.addChain(w.bufs);
    r.drv.kick();
    let used = await r.drv.collect(1);
    assert.deepEqual(used.map((u) => u.len), [1]);
    assert.equal(r.mem.read(w.status, 1)[0], 0);
    const f = request(r, BUF_AT + 0x10000, T_FLUSH, 0, 0, false);
    r.drv.addChain(f.bufs);
    r.drv.kick();
    await r.drv.collect(1);
    assert.equal(r.mem.read(f.status, 1)[0], 0);
    const file = await Deno.readFile(r.path);
    assert.ok(
      file.subarray(8 * 512, 8 * 512 + 4096).every((b) => b === 0x5a),
      "write reached the file",
    );
    assert.equal(file[7 * 512], 7, "the sector before is untouched");
    // Read sectors 7..15 back.
    const rd = request(r, BUF_AT + 0x20000, T_IN, 7, 4608, true);
    r.drv.addChain(rd.bufs);
    r.drv.kick();
    used = await r.drv.collect(1);
    assert.equal(used[0]?.len, 4608 + 1);
    const back = r.mem.read(rd.data, 4608);
    assert.equal(back[0], 7);
    assert.ok(back.subarray(512).every((b) => b === 0x5a));
    const id = request(r, BUF_AT + 0x30000, T_GET_ID, 0, 20, true);
    r.drv.addChain(id.bufs);
    r.drv.kick();
    used = await r.drv.collect(1);
    assert.equal(new TextDecoder().decode(r.mem.read(id.data, 14)), "vmkit-serial-1");
    assert.equal(used[0]?.len, 21);
  } finally {
    await teardown(r);
  }
}

for (
  const [how, syncWriteStallMs] of [["through io_uring", 0], [
    "switching to io_uring after a stalled one",
    1e-9,
  ]] as const
) {
  Deno.test(`virtio-blk with writes ${how} keeps many in flight and they all land`, () =>
    writesInFlight(syncWriteStallMs));
}

async function writesInFlight(syncWriteStallMs: number): Promise<void> {
  const r = await rig({ bytes: 4 << 20, syncWriteStallMs });
  try {
    start(r, F_VERSION_1 | F_EVENT_IDX, 256);
    const n = 80;
    const reqs: ReturnType<typeof request>[] = [];
    for (let i = 0; i < n; i++) {
      const q = request(r, BUF_AT + i * 0x3000, T_OUT, i * 8, 4096, false);
      r.mem.write(q.data, new Uint8Array(4096).fill(0x80 + (i & 0x3f)));
      reqs.push(q);
      r.drv.addChain(q.bufs);
    }
    r.drv.kick();
    assert.equal((await r.drv.collect(n)).length, n);
    reqs.forEach((q, i) => assert.equal(r.mem.read(q.status, 1)[0], 0, `write ${i} status`));
    const file = await Deno.readFile(r.path);
    for (let i = 0; i < n; i++) {
      const at = i * 8 * 512;
      assert.ok(file.subarray(at, at + 4096).every((b) => b === 0x80 + (i & 0x3f)), `write ${i}`);
    }
  } finally {
    await teardown(r);
  }
}

Deno.test("virtio-blk keeps many requests in flight and completes every one", async () => {
  const r = await rig({ bytes: 4 << 20 });
  try {
    start(r, F_VERSION_1 | F_EVENT_IDX, 256);
    const n = 80; // 240 descriptors in flight at once
    const reqs: ReturnType<typeof request>[] = [];
    for (let i = 0; i < n; i++) {
      const q = request(r, BUF_AT + i * 0x3000, T_IN, i * 8, 4096, true);
      reqs.push(q);
      r.drv.addChain(q.bufs);
    }
    r.drv.kick();
    const used = await r.drv.collect(n);
    assert.equal(used.length, n);
    for (let i = 0; i < n; i++) {
      const q = reqs[i];
      if (q === undefined) continue;
      assert.equal(r.mem.read(q.status, 1)[0], 0, `request ${i} status`);
      assert.equal(r.mem.read(q.data, 1)[0], (i * 8) & 0xff, `request ${i} data`);
    }
    assert.deepEqual(r.host.guestErrors, []);
  } finally {
    await teardown(r);
  }
});

const EAGAIN = 11, EINVAL = 22;
const libc = Deno.dlopen("libc.so.6", {
  open: { parameters: ["buffer", "i32"], result: "i32" },
  fdatasync: { parameters: ["i32"], result: "i32" },
  posix_fadvise: { parameters: ["i32", "i64", "i64", "i32"], result: "i32" },
  close: { parameters: ["i32"], result: "i32" },
}).symbols;

/** An fd of `path` (O_RDWR). */
function openFd(path: string): number {
  const fd = libc.open(new TextEncoder().encode(path + "\0"), 2);
  assert.ok(fd >= 0, `open ${path}`);
  return fd;
}

/** Writes `path` back and drops its pages from the page cache (POSIX_FADV_DONTNEED). */
function evict(path: string): void {
  const fd = openFd(path);
  try {
    assert.equal(libc.fdatasync(fd), 0);
    assert.equal(libc.posix_fadvise(fd, 0n, 0n, 4), 0);
  } finally {
    libc.close(fd);
  }
}

/** vkio_uring_read_nowait on one READ record: `len` bytes of `fd` at `off` into `buf`. */
function readNowait(fd: number, buf: Uint8Array, off: number, op: number = UringOp.READ): number {
  const rec = new Uint8Array(URING_REQ_BYTES);
  const v = new DataView(rec.buffer);
  v.setUint8(UringReq.OPCODE, op);
  v.setInt32(UringReq.FD, fd, true);
  v.setBigUint64(UringReq.ADDR, Deno.UnsafePointer.value(Deno.UnsafePointer.of(buf)), true);
  v.setUint32(UringReq.LEN, buf.length, true);
  v.setBigUint64(UringReq.OFF, BigInt(off), true);
  return ioShim().vkio_uring_read_nowait(rec, rec.length);
}

Deno.test("a read record run now (RWF_NOWAIT) reads cached bytes, refuses to wait for the disk, stops at end of file", async () => {
  const dir = await Deno.makeTempDir({ prefix: "vmkit-nowait-" });
  try {
    const path = `${dir}/f`;
    const data = new Uint8Array(64 << 10).map((_, i) => (i * 7) & 0xff);
    await Deno.writeFile(path, data);
    const fd = openFd(path);
    try {
      const buf = new Uint8Array(4096);
      // POSIX_FADV_DONTNEED may leave pages still on a per-CPU LRU list: evict until it takes.
      let r = 0;
      for (let i = 0; i < 20 && r !== -EAGAIN; i++) {
        evict(path);
        r = readNowait(fd, buf, 8192);
        if (r !== -EAGAIN) await new Promise((ok) => setTimeout(ok, 25));
      }
      assert.equal(r, -EAGAIN, "not cached: no read, no wait");
      await Deno.readFile(path); // now cached
      assert.equal(readNowait(fd, buf, 8192), 4096);
      assert.deepEqual(buf, data.subarray(8192, 12288));
      assert.equal(readNowait(fd, buf, data.length - 1000), 1000, "short at end of file");
      assert.equal(readNowait(fd, buf, data.length), 0);
      assert.equal(readNowait(fd, buf, 0, UringOp.WRITE), -EINVAL, "only reads run now");
    } finally {
      libc.close(fd);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("virtio-blk lone reads, one and two buffers, from a cold and a warm page cache return the file's bytes", async () => {
  const r = await rig({ bytes: 4 << 20 });
  try {
    start(r, F_VERSION_1 | F_EVENT_IDX, 64);
    const seed = Math.floor(Math.random() * 2 ** 31);
    console.log(`seed ${seed}`);
    let x = seed;
    const nextSector = () => {
      x = (Math.imul(x, 1103515245) + 12345) >>> 0;
      return (x >>> 8) % ((4 << 20) / 512 - 8);
    };
    const expect = (sector: number, at: number, len: number) =>
      Uint8Array.from({ length: len }, (_, j) => (sector + Math.floor((at + j) / 512)) & 0xff);
    for (let round = 0; round < 6; round++) {
      const cold = round % 2 === 0;
      if (cold) evict(r.path);
      else await Deno.readFile(r.path); // all of it in the page cache
      // One buffer: READ.
      let sector = nextSector();
      const q = request(r, BUF_AT, T_IN, sector, 4096, true);
      r.mem.write(q.data, new Uint8Array(4096).fill(0xee));
      r.drv.addChain(q.bufs);
      r.drv.kick();
      assert.equal((await r.drv.collect(1)).length, 1);
      assert.equal(r.mem.read(q.status, 1)[0], 0, `round ${round} status`);
      assert.deepEqual(r.mem.read(q.data, 4096), expect(sector, 0, 4096), `round ${round} data`);
      // Two buffers: READV.
      sector = nextSector();
      const hdr = new DataView(new ArrayBuffer(16));
      hdr.setUint32(0, T_IN, true);
      hdr.setBigUint64(8, BigInt(sector), true);
      const at = BUF_AT + 0x10000;
      r.mem.write(at, new Uint8Array(hdr.buffer));
      r.mem.write(at + 0x1000, new Uint8Array(0x2000).fill(0xee));
      r.mem.write(at + 0x3000, new Uint8Array([0xee]));
      r.drv.addChain([
        { addr: at, len: 16, write: false },
        { addr: at + 0x1000, len: 1024, write: true },
        { addr: at + 0x2000, len: 3072, write: true },
        { addr: at + 0x3000, len: 1, write: true },
      ]);
      r.drv.kick();
      assert.equal((await r.drv.collect(1)).length, 1);
      assert.equal(r.mem.read(at + 0x3000, 1)[0], 0, `round ${round} two-buffer status`);
      assert.deepEqual(r.mem.read(at + 0x1000, 1024), expect(sector, 0, 1024));
      assert.deepEqual(r.mem.read(at + 0x2000, 3072), expect(sector, 1024, 3072));
    }
    assert.deepEqual(r.host.guestErrors, []);
  } finally {
    await teardown(r);
  }
});

Deno.test("a read-only virtio-blk drive fails writes and discards with IOERR and still reads", async () => {
  const r = await rig({ readOnly: true });
  try {
    assert.ok((r.drv.deviceFeatures() & (1n << 5n)) !== 0n, "VIRTIO_BLK_F_RO offered");
    start(r);
    const w = request(r, BUF_AT, T_OUT, 0, 512, false);
    r.drv.addChain(w.bufs);
    const d = request(r, BUF_AT + 0x10000, T_DISCARD, 0, 16, false);
    r.drv.addChain(d.bufs);
    const rd = request(r, BUF_AT + 0x20000, T_IN, 3, 512, true);
    r.drv.addChain(rd.bufs);
    r.drv.kick();
    await r.drv.collect(3);
    assert.equal(r.mem.read(w.status, 1)[0], 1);
    assert.equal(r.mem.read(d.status, 1)[0], 1);
    assert.equal(r.mem.read(rd.status, 1)[0], 0);
    assert.equal(r.mem.read(rd.data, 1)[0], 3);
    const file = await Deno.readFile(r.path);
    assert.equal(file[0], 0, "file untouched");
  } finally {
    await teardown(r);
  }
});

Deno.test("virtio-blk answers UNSUPP to a DISCARD with the unmap flag, a segment with an unknown flag and an unknown request type, and changes nothing (§5.2.6.1)", async () => {
  const r = await rig();
  try {
    start(r);
    const before = await Deno.readFile(r.path);
    for (
      const [type, flags] of [[T_DISCARD, 1], [T_WRITE_ZEROES, 2], [
        T_DISCARD,
        0x8000_0000,
      ]] as const
    ) {
      const q = request(r, BUF_AT, type, 0, 16, false);
      const seg = new DataView(new ArrayBuffer(16));
      seg.setBigUint64(0, 16n, true);
      seg.setUint32(8, 8, true);
      seg.setUint32(12, flags, true);
      r.mem.write(q.data, new Uint8Array(seg.buffer));
      r.drv.addChain(q.bufs);
      r.drv.kick();
      await r.drv.collect(1);
      assert.equal(r.mem.read(q.status, 1)[0], 2, `type ${type} flags ${flags}: UNSUPP`);
    }
    const odd = request(r, BUF_AT, 99, 0, 512, false);
    r.drv.addChain(odd.bufs);
    r.drv.kick();
    await r.drv.collect(1);
    assert.equal(r.mem.read(odd.status, 1)[0], 2, "unknown type: UNSUPP");
    assert.deepEqual(await Deno.readFile(r.path), before);
  } finally {
    await teardown(r);
  }
});

Deno.test("virtio-blk DISCARD and WRITE_ZEROES ranges read back as zeros", async () => {
  const r = await rig();
  try {
    start(r);
    for (const [type, sector] of [[T_DISCARD, 16], [T_WRITE_ZEROES, 64]] as const) {
      const q = request(r, BUF_AT, type, 0, 16, false);
      const seg = new DataView(new ArrayBuffer(16));
      seg.setBigUint64(0, BigInt(sector), true);
      seg.setUint32(8, 8, true);
      seg.setUint32(12, type === T_WRITE_ZEROES ? 1 : 0, true);
      r.mem.write(q.data, new Uint8Array(seg.buffer));
      r.drv.addChain(q.bufs);
      r.drv.kick();
      await r.drv.collect(1);
      assert.equal(r.mem.read(q.status, 1)[0], 0);
    }
    const file = await Deno.readFile(r.path);
    assert.ok(file.subarray(16 * 512, 24 * 512).every((b) => b === 0));
    assert.ok(file.subarray(64 * 512, 72 * 512).every((b) => b === 0));
    assert.equal(file[24 * 512], 24);
  } finally {
    await teardown(r);
  }
});

Deno.test("a drive's ops rate limiter holds requests in order; PATCH-style updates lift it; counters count", async () => {
  const r = await rig({ bytes: 4 << 20, rateLimiter: { ops: { size: 5, refillTimeMs: 100 } } });
  try {
    start(r, F_VERSION_1 | F_EVENT_IDX, 256);
    const n = 20;
    const t0 = performance.now();
    for (let i = 0; i < n; i++) {
      r.drv.addChain(request(r, BUF_AT + i * 0x3000, T_IN, i * 8, 4096, true).bufs);
    }
    r.drv.kick();
    const used = await r.drv.collect(n, 10_000);
    const ms = performance.now() - t0;
    // 5 at once, then 5 per 100 ms: the last 15 need at least ~300 ms of refill.
    assert.ok(
      ms >= 250,
      `20 requests through a 5-per-100-ms limiter took only ${ms.toFixed(0)} ms`,
    );
    assert.deepEqual(
      used.map((u) => u.id),
      used.map((u) => u.id).slice().sort((a, b) => a - b),
      "in order",
    );
    assert.equal(r.disk.stats.get("reads"), n);
    assert.equal(r.disk.stats.get("read_bytes"), n * 4096);
    assert.ok(r.disk.stats.get("throttled") > 0);
    await r.disk.setRateLimiter({ ops: { size: 0, refillTimeMs: 0 } }); // 0-sized: no limit
    const t1 = performance.now();
    for (let i = 0; i < n; i++) {
      r.drv.addChain(request(r, BUF_AT + i * 0x3000, T_OUT, i * 8, 4096, false).bufs);
    }
    r.drv.kick();
    await r.drv.collect(n, 10_000);
    assert.ok(performance.now() - t1 < 1000, "unlimited after the update");
    assert.equal(r.disk.stats.get("writes"), n);
    assert.equal(r.disk.stats.get("io_errors"), 0);
  } finally {
    await teardown(r);
  }
});

/** A qcow2 v3 header (magic, version) naming `backing` as its backing file, in one sector. */
function qcow2Sector(backing: string): Uint8Array {
  const s = new Uint8Array(512);
  const v = new DataView(s.buffer);
  v.setUint32(0, 0x514649fb, false); // "QFI\xfb"
  v.setUint32(4, 3, false);
  v.setBigUint64(8, 512n, false); // backing_file_offset
  v.setUint32(16, backing.length, false);
  s.set(new TextEncoder().encode(backing), 512 - 64);
  return s;
}

Deno.test("a probed raw drive refuses a guest write that would make it probe as qcow2; other writes to sector 0 pass", async () => {
  const r = await rig();
  try {
    start(r);
    const evil = request(r, BUF_AT, T_OUT, 0, 512, false);
    r.mem.write(evil.data, qcow2Sector("/etc/shadow"));
    r.drv.addChain(evil.bufs);
    const fine = request(r, BUF_AT + 0x10000, T_OUT, 1, 512, false);
    r.mem.write(fine.data, new Uint8Array(512).fill(0x77));
    r.drv.addChain(fine.bufs);
    r.drv.kick();
    await r.drv.collect(2);
    assert.equal(r.mem.read(evil.status, 1)[0], 1, "IOERR for the qcow2 header");
    assert.equal(r.mem.read(fine.status, 1)[0], 0);
    // Zeros into sector 0 still probe as raw: allowed.
    const zeros = request(r, BUF_AT + 0x20000, T_OUT, 0, 1024, false);
    r.mem.write(zeros.data, new Uint8Array(1024).fill(0));
    r.drv.addChain(zeros.bufs);
    r.drv.kick();
    await r.drv.collect(1);
    assert.equal(r.mem.read(zeros.status, 1)[0], 0);
    const file = await Deno.readFile(r.path);
    assert.ok(file.subarray(0, 1024).every((b) => b === 0), "the zeros were written");
    assert.ok(file.subarray(1024, 1536).every((b) => b === 2), "sector 2 untouched");
  } finally {
    await teardown(r);
  }
});

Deno.test("a drive whose format is given as raw takes any write to sector 0", async () => {
  const r = await rig({ format: "raw" });
  try {
    start(r);
    const w = request(r, BUF_AT, T_OUT, 0, 512, false);
    const sector = qcow2Sector("base.img");
    r.mem.write(w.data, sector);
    r.drv.addChain(w.bufs);
    r.drv.kick();
    await r.drv.collect(1);
    assert.equal(r.mem.read(w.status, 1)[0], 0);
    assert.deepEqual((await Deno.readFile(r.path)).subarray(0, 512), sector);
  } finally {
    await teardown(r);
  }
});

async function sh(cmd: string, ...args: string[]): Promise<void> {
  const out = await new Deno.Command(cmd, { args, stdout: "piped", stderr: "piped" }).output();
  if (!out.success) {
    throw new Error(`${cmd} ${args.join(" ")}: ${new TextDecoder().decode(out.stderr)}`);
  }
}

Deno.test("virtio-blk reads of a qcow2 overlay (data, zero, compressed, copied-on-write, past the base, straddling it, two buffers) match qemu-img's view", async () => {
  const dir = await Deno.makeTempDir({ prefix: "vmkit-blk-q-" });
  const base = `${dir}/base.raw`;
  const top = `${dir}/top.qcow2`;
  await sh("qemu-img", "create", "-q", "-f", "raw", base, "2M");
  await sh("qemu-io", "-f", "raw", "-c", "write -P 0x11 0 2M", base);
  await sh("qemu-img", "create", "-q", "-f", "qcow2", "-b", base, "-F", "raw", top, "4M");
  for (
    const c of [
      "write -P 0x22 64k 64k",
      "write -z 256k 64k",
      "write -c -P 0x33 512k 64k",
      "write -P 0x44 2M 64k",
      "write -P 0x55 1020k 8k",
    ]
  ) await sh("qemu-io", "-f", "qcow2", "-c", c, top);
  await sh("qemu-img", "convert", "-O", "raw", top, `${dir}/want.raw`);
  const want = await Deno.readFile(`${dir}/want.raw`);
  const r = await rig({ path: top });
  try {
    start(r, F_VERSION_1 | F_EVENT_IDX, 64);
    const K = 1024;
    const probes = [64, 100, 256, 512, 1020, 1022, 0, 1500, 2044, 2048, 3000, 4092].map((k) =>
      k * K
    );
    const reqs = probes.map((off, i) => {
      const q = request(r, BUF_AT + i * 0x3000, T_IN, off / 512, 4096, true);
      r.mem.write(q.data, new Uint8Array(4096).fill(0xee));
      r.drv.addChain(q.bufs);
      return q;
    });
    // A read in two buffers (the image's own read path).
    const at = BUF_AT + 0x40000;
    const hdr = new DataView(new ArrayBuffer(16));
    hdr.setUint32(0, T_IN, true);
    hdr.setBigUint64(8, BigInt((1020 * K) / 512), true);
    r.mem.write(at, new Uint8Array(hdr.buffer));
    r.drv.addChain([
      { addr: at, len: 16, write: false },
      { addr: at + 0x1000, len: 2048, write: true },
      { addr: at + 0x2000, len: 2048, write: true },
      { addr: at + 0x3000, len: 1, write: true },
    ]);
    r.drv.kick();
    await r.drv.collect(probes.length + 1);
    probes.forEach((off, i) => {
      const q = reqs[i];
      if (q === undefined) return;
      assert.equal(r.mem.read(q.status, 1)[0], 0, `read at ${off} status`);
      assert.deepEqual(r.mem.read(q.data, 4096), want.subarray(off, off + 4096), `read at ${off}`);
    });
    assert.equal(r.mem.read(at + 0x3000, 1)[0], 0);
    assert.deepEqual(r.mem.read(at + 0x1000, 2048), want.subarray(1020 * K, 1020 * K + 2048));
    assert.deepEqual(r.mem.read(at + 0x2000, 2048), want.subarray(1022 * K, 1022 * K + 2048));
  } finally {
    await teardown(r);
    await Deno.remove(dir, { recursive: true });
  }
});
