/**
 * qcow2 overlays over an asynchronous backing device (what an iSCSI LUN is to
 * cow/): the chain opens through the caller's hook, unallocated reads and
 * copy-on-write await the device, concurrent requests on one cluster stay
 * ordered, QEMU reads the files. The device here is an in-memory one whose
 * reads complete after seeded random delays, so every interleaving the
 * ordering must survive happens; tests/checkpoint/iscsi_overlay_test.ts runs
 * the same path over a real LUN.
 *
 * @module
 */

import assert from "node:assert/strict";
import {
  BackingChainError,
  type BlockDevice,
  createImage,
  imageInfo,
  isRemoteName,
  openImage,
  openImageAsync,
  Qcow2Image,
  RemoteLayer,
} from "../../cow/mod.ts";
import { assertBytes, pattern, prng, qemuImg, randInt, run, tempDir } from "./helpers.ts";

const KiB = 1024;
const MiB = 1024 * KiB;
const URL = "iscsi://127.0.0.1:3260/iqn.2024-01.dev.vmkit.test:lun/1";

/** An in-memory device whose reads finish after a random delay (0-3 event-loop turns or a timer). */
class SlowDevice implements BlockDevice {
  readonly bytes: Uint8Array;
  readonly #rand: () => number;
  reads = 0;
  closed = false;
  constructor(bytes: Uint8Array, seed: number) {
    this.bytes = bytes;
    this.#rand = prng(seed);
  }
  get size(): number {
    return this.bytes.length;
  }
  async #delay(): Promise<void> {
    const r = this.#rand();
    if (r < 0.3) return;
    if (r < 0.8) {
      for (let i = 0; i < 1 + Math.floor(r * 6); i++) await Promise.resolve();
      return;
    }
    await new Promise((res) => setTimeout(res, Math.floor(this.#rand() * 3)));
  }
  async read(offset: number, buf: Uint8Array): Promise<void> {
    this.reads++;
    // Copy at the end, as a network read fills the buffer when its data arrives.
    await this.#delay();
    buf.set(this.bytes.subarray(offset, offset + buf.length));
  }
  write(): Promise<void> {
    return Promise.reject(new Error("the backing must never be written"));
  }
  flush(): Promise<void> {
    return Promise.resolve();
  }
  discard(): Promise<void> {
    return Promise.reject(new Error("the backing must never be discarded"));
  }
  close(): Promise<void> {
    this.closed = true;
    return Promise.resolve();
  }
}

/**
 * `qemu-img check` of an overlay whose backing is the (here unreachable) LUN:
 * QEMU's check opens the backing too unless told there is none.
 */
async function assertQemuCheck(path: string): Promise<void> {
  const spec = { driver: "qcow2", file: { driver: "file", filename: path }, backing: null };
  const r = await run("qemu-img", "check", `json:${JSON.stringify(spec)}`);
  assert.equal(r.code, 0, `qemu-img check ${path}: ${r.stdout}${r.stderr}`);
  assert.match(r.stdout, /No errors were found/);
}

function makeOverlay(dir: string, size: number, clusterSize = 64 * KiB): string {
  const path = `${dir}/overlay.qcow2`;
  Qcow2Image.create(path, { size, backingFile: URL, backingFormat: "raw", clusterSize });
  return path;
}

Deno.test("backing names with a protocol are URLs, by QEMU's rule (a colon before any slash)", () => {
  assert.ok(isRemoteName(URL));
  assert.ok(isRemoteName("nbd:localhost:10809"));
  assert.ok(!isRemoteName("base.raw"));
  assert.ok(!isRemoteName("/var/lib/a:b.raw"));
  assert.ok(!isRemoteName("sub/a:b.raw"));
  assert.ok(!isRemoteName(":x"));
});

Deno.test("an overlay naming an iscsi:// backing is refused without a hook, opens with one, and qemu-img reads the chain", async () => {
  await using dir = await tempDir();
  const base = pattern(4 * MiB, 7);
  const path = makeOverlay(dir.path, 4 * MiB);
  assert.throws(
    () => openImage(path),
    (e) =>
      e instanceof BackingChainError && /not a local file/.test(e.message) &&
      e.message.includes(URL),
  );
  await assert.rejects(openImageAsync(path), /not a local file/);
  // What qemu-img create -b iscsi://… -F raw writes: the URL and format raw, and QEMU agrees.
  const info = JSON.parse(await qemuImg("info", "--output", "json", path));
  assert.equal(info["backing-filename"], URL);
  assert.equal(info["backing-filename-format"], "raw");
  assert.equal(info["full-backing-filename"], URL);
  // vmkit's own info describes the file chain without touching the network.
  const chain = imageInfo(path).chain;
  assert.equal(chain.length, 1);
  assert.equal(chain[0]?.backingFile, URL);

  const dev = new SlowDevice(base, 1);
  const seen: Array<[string, string | null]> = [];
  const img = await openImageAsync(path, {
    openBacking: (name, format) => {
      seen.push([name, format]);
      return Promise.resolve(dev);
    },
  });
  assert.deepEqual(seen, [[URL, "raw"]]);
  assert.equal(img.synchronous, false);
  assert.ok(img.backing instanceof RemoteLayer);
  assert.equal(img.backing.path, URL);
  const got = new Uint8Array(300 * KiB);
  await img.read(100 * KiB + 3, got);
  assertBytes(got, base.subarray(100 * KiB + 3, 400 * KiB + 3), "read through the device");
  // The synchronous path refuses rather than read zeros or block.
  assert.throws(() => img.readSync(0, new Uint8Array(512)), /network device/);
  assert.throws(() => img.closeSync(), /close\(\)/);
  await img.close();
  assert.ok(dev.closed, "closing the overlay closes the device it owns");
  await assertQemuCheck(path);
});

Deno.test("a hostile backing format over a URL is refused (vmkit reads a network backing as raw only)", async () => {
  await using dir = await tempDir();
  const path = `${dir.path}/o.qcow2`;
  Qcow2Image.create(path, { size: MiB, backingFile: URL, backingFormat: "qcow2" });
  await assert.rejects(
    openImageAsync(path, { openBacking: () => new SlowDevice(new Uint8Array(MiB), 1) }),
    /as raw only/,
  );
});

Deno.test("partial writes over an asynchronous backing copy the rest of the cluster from it; qemu-img check is clean", async () => {
  await using dir = await tempDir();
  const size = 2 * MiB;
  const base = pattern(size, 3);
  const path = makeOverlay(dir.path, size);
  const dev = new SlowDevice(base, 2);
  const img = await openImageAsync(path, { openBacking: () => dev });
  const model = base.slice();
  const w = pattern(5000, 9);
  await img.write(70 * KiB + 11, w); // inside one cluster
  model.set(w, 70 * KiB + 11);
  const w2 = pattern(200 * KiB, 10); // partial, whole, partial
  await img.write(300 * KiB - 7, w2);
  model.set(w2, 300 * KiB - 7);
  await img.discard(600 * KiB + 100, 200 * KiB); // partial edges zero-written, whole clusters zero
  model.fill(0, 600 * KiB + 100, 800 * KiB + 100);
  const all = new Uint8Array(size);
  await img.read(0, all);
  assertBytes(all, model, "after copy-on-write");
  await img.flush();
  await img.close();
  await assertQemuCheck(path);
  // Reopened over the same device bytes, the overlay holds what was written.
  const again = await openImageAsync(path, { openBacking: () => new SlowDevice(base, 3) });
  await again.read(0, all);
  assertBytes(all, model, "reopened");
  await again.close();
});

Deno.test("two partial writes into one unallocated cluster both land, and a read racing the allocation sees old or new bytes, never a mix of clusters", async () => {
  await using dir = await tempDir();
  const size = MiB;
  const base = pattern(size, 4);
  const path = makeOverlay(dir.path, size);
  const img = await openImageAsync(path, { openBacking: () => new SlowDevice(base, 5) });
  const a = new Uint8Array(4 * KiB).fill(0xaa);
  const b = new Uint8Array(4 * KiB).fill(0xbb);
  const r1 = new Uint8Array(64 * KiB);
  // All at once on cluster 2: A, a read, B, a full write of cluster 3, a read of it.
  const c3 = pattern(64 * KiB, 11);
  const r3 = new Uint8Array(64 * KiB);
  // And on cluster 4: a partial write, then a whole-cluster one, which must land after it.
  const p4 = new Uint8Array(100).fill(0x44);
  const c4 = pattern(64 * KiB, 12);
  await Promise.all([
    img.write(128 * KiB + 4 * KiB, a),
    img.read(128 * KiB, r1),
    img.write(128 * KiB + 40 * KiB, b),
    img.write(192 * KiB, c3),
    img.read(192 * KiB, r3),
    img.write(256 * KiB + 10, p4),
    img.write(256 * KiB, c4),
  ]);
  const g4 = new Uint8Array(64 * KiB);
  await img.read(256 * KiB, g4);
  assertBytes(g4, c4, "cluster 4: the whole-cluster write came second and wins");
  const want = base.slice(128 * KiB, 192 * KiB);
  want.set(a, 4 * KiB);
  want.set(b, 40 * KiB);
  const got = new Uint8Array(64 * KiB);
  await img.read(128 * KiB, got);
  assertBytes(got, want, "cluster 2 after both writes");
  // The racing read was issued before either write finished: each of its bytes is the
  // backing's or the write's, and the part no write touched is the backing's.
  for (let i = 0; i < r1.length; i++) {
    const old = base[128 * KiB + i];
    const now = want[i];
    assert.ok(r1[i] === old || r1[i] === now, `racing read byte ${i}`);
  }
  assertBytes(
    r1.subarray(8 * KiB, 40 * KiB),
    base.subarray(136 * KiB, 168 * KiB),
    "untouched part",
  );
  // The full-cluster write needs no backing read and completes at once: the read after it sees it.
  assertBytes(r3, c3, "read after a full-cluster write");
  await img.close();
  await assertQemuCheck(path);
});

/** Random concurrent writes and discards, reads checked where nothing is in flight. */
async function randomConcurrent(seed: number, clusterSize: number): Promise<void> {
  await using dir = await tempDir();
  const size = 3 * MiB + 5 * KiB; // the last cluster is partial
  const base = pattern(size, seed);
  const path = makeOverlay(dir.path, size, clusterSize);
  const dev = new SlowDevice(base, seed * 7 + 1);
  const img = await openImageAsync(path, { openBacking: () => dev });
  const rand = prng(seed);
  const model = base.slice();
  const busy = new Int32Array(Math.ceil(size / clusterSize));
  const mark = (off: number, len: number, d: number): void => {
    for (
      let c = Math.floor(off / clusterSize);
      c <= Math.floor((off + len - 1) / clusterSize);
      c++
    ) {
      busy[c] = (busy[c] ?? 0) + d;
    }
  };
  const free = (off: number, len: number): boolean => {
    for (
      let c = Math.floor(off / clusterSize);
      c <= Math.floor((off + len - 1) / clusterSize);
      c++
    ) {
      if ((busy[c] ?? 0) !== 0) return false;
    }
    return true;
  };
  const inflight = new Set<Promise<void>>();
  for (let i = 0; i < 600; i++) {
    const what = `seed ${seed}, cluster ${clusterSize}, op ${i}`;
    // Mostly a window of 3 clusters that moves on every 12 requests, so requests pile up
    // on clusters not yet allocated; some cluster-aligned whole-cluster requests, which
    // need no backing read of their own and must still wait for a copy in flight.
    const clusters = Math.floor(size / clusterSize);
    const local = rand() < 0.8;
    const first = local ? (Math.floor(i / 12) * 3) % (clusters - 3) : 0;
    const span = local ? 3 : clusters;
    let len = 1 + randInt(rand, rand() < 0.2 ? 2 * clusterSize : clusterSize);
    let off = first * clusterSize + randInt(rand, span * clusterSize - len);
    if (rand() < 0.25) {
      len = clusterSize;
      off = (first + randInt(rand, span)) * clusterSize;
    }
    const kind = rand();
    let p: Promise<void>;
    if (kind < 0.55) {
      const d = pattern(len, seed * 1000 + i);
      model.set(d, off); // requests to one cluster take effect in the order they arrive
      mark(off, len, 1);
      p = img.write(off, d).then(() => mark(off, len, -1));
    } else if (kind < 0.7) {
      model.fill(0, off, off + len);
      mark(off, len, 1);
      p = img.discard(off, len).then(() => mark(off, len, -1));
    } else {
      const exact = free(off, len);
      const want = exact ? model.slice(off, off + len) : null;
      const buf = new Uint8Array(len);
      p = img.read(off, buf).then(() => {
        if (want !== null) assertBytes(buf, want, `${what}: read of quiet clusters`);
      });
    }
    inflight.add(p);
    p.then(() => inflight.delete(p), () => inflight.delete(p));
    if (inflight.size >= 24 || rand() < 0.05) await Promise.race(inflight);
    if (rand() < 0.02) {
      await Promise.all(inflight);
      await img.flush();
    }
  }
  await Promise.all(inflight);
  const all = new Uint8Array(size);
  await img.read(0, all);
  assertBytes(all, model, `whole image (seed ${seed}, cluster ${clusterSize})`);
  await img.close();
  await assertQemuCheck(path);
  assert.ok(dev.reads > 0);
}

for (const [seed, cs] of [[21, 4 * KiB], [22, 64 * KiB], [23, 512 * KiB]] as const) {
  Deno.test(`random concurrent writes, discards and reads over an asynchronous backing match a model applied in arrival order (seed ${seed}, ${cs / KiB} KiB clusters)`, async () => {
    try {
      await randomConcurrent(seed, cs);
    } catch (err) {
      console.error(`failing seed: ${seed} (cluster size ${cs})`);
      throw err;
    }
  });
}

Deno.test("an overlay over an overlay over an asynchronous backing reads through both (a second checkpoint's chain)", async () => {
  await using dir = await tempDir();
  const size = MiB;
  const base = pattern(size, 12);
  const mid = makeOverlay(dir.path, size);
  const dev = new SlowDevice(base, 13);
  const m = await openImageAsync(mid, { openBacking: () => dev });
  const w = new Uint8Array(10 * KiB).fill(1);
  await m.write(5 * KiB, w);
  await m.close();
  await createImage(`${dir.path}/top.qcow2`, {
    backingFile: "overlay.qcow2",
    backingFormat: "qcow2",
    size,
    openBacking: () => new SlowDevice(base, 14),
  }).close();
  const top = await openImageAsync(`${dir.path}/top.qcow2`, {
    openBacking: () => new SlowDevice(base, 15),
  });
  assert.equal(top.synchronous, false);
  assert.equal(top.backing?.synchronous, false);
  const w2 = new Uint8Array(3 * KiB).fill(2);
  await top.write(12 * KiB, w2);
  const model = base.slice();
  model.set(w, 5 * KiB);
  model.set(w2, 12 * KiB);
  const all = new Uint8Array(size);
  await top.read(0, all);
  assertBytes(all, model, "through two overlays");
  await top.close();
  await assertQemuCheck(`${dir.path}/top.qcow2`);
});
