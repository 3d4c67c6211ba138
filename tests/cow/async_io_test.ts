/**
 * The promise methods of raw and qcow2 images with many requests in flight
 * through the thread's io_uring (cow/file_ring.ts): seeded random batches of
 * concurrent reads, writes, discards and flushes on disjoint byte ranges
 * that share clusters (so two writes in flight allocate one cluster),
 * against an in-memory model, with the page cache dropped between batches
 * so reads really wait for the disk; then the files reopened and checked.
 *
 * @module
 */

import assert from "node:assert/strict";
import { createImage, type DiskImage, ImageFile, openImage } from "../../cow/mod.ts";
import { fileRing } from "../../cow/file_ring.ts";
import { cachedPages } from "../../cow/libc.ts";
import { assertBytes, assertQemuCheck, pattern, prng, randInt, run, tempDir } from "./helpers.ts";

const KiB = 1024;
const MiB = 1 << 20;

const libc = Deno.dlopen("libc.so.6", {
  open: { parameters: ["buffer", "i32", "u32"], result: "i32" },
  close: { parameters: ["i32"], result: "i32" },
  fdatasync: { parameters: ["i32"], result: "i32" },
  posix_fadvise: { parameters: ["i32", "i64", "i64", "i32"], result: "i32" },
});

/**
 * Writes back and drops the page cache of `paths` (POSIX_FADV_DONTNEED),
 * again while cachestat(2) still sees pages (DONTNEED misses pages still on
 * another CPU's LRU batch).
 */
function dropCache(paths: string[]): void {
  for (const p of paths) {
    const fd = libc.symbols.open(new TextEncoder().encode(p + "\0"), 0, 0);
    assert.ok(fd >= 0, `open ${p}`);
    libc.symbols.fdatasync(fd);
    for (let i = 0; i < 50; i++) {
      libc.symbols.posix_fadvise(fd, 0n, 0n, 4);
      if ((cachedPages(fd, 0, Deno.statSync(p).size) ?? 0) === 0) break;
    }
    libc.symbols.close(fd);
  }
}

/**
 * Writes `data` to `path` with O_DIRECT (dd oflag=direct), so none of its
 * pages is in the page cache afterwards (DONTNEED can miss pages still on
 * another CPU's LRU batch).
 */
async function writeUncached(path: string, data: Uint8Array): Promise<void> {
  const src = `${path}.src`;
  await Deno.writeFile(src, data);
  const r = await run("dd", `if=${src}`, `of=${path}`, "bs=1M", "oflag=direct", "status=none");
  assert.equal(r.code, 0, `dd: ${r.stderr}`);
  await Deno.remove(src);
  const fd = libc.symbols.open(new TextEncoder().encode(path + "\0"), 0, 0);
  const cached = cachedPages(fd, 0, data.length);
  libc.symbols.close(fd);
  assert.ok(cached === null || cached === 0, `${cached} pages of ${path} cached after dd`);
}

/**
 * `n` random ranges inside `size`, pairwise disjoint, of 1 byte to `maxLen`;
 * half of them 4 KiB-aligned and at most 64 KiB (what a deep queue reads with
 * O_DIRECT when the page cache lacks it).
 */
function disjointRanges(
  rand: () => number,
  n: number,
  size: number,
  maxLen: number,
): Array<[number, number]> {
  const out: Array<[number, number]> = [];
  for (let tries = 0; out.length < n && tries < n * 20; tries++) {
    const aligned = rand() < 0.5;
    const len = aligned ? 4096 * (1 + randInt(rand, 16)) : 1 + randInt(rand, maxLen);
    const off = aligned
      ? 4096 * randInt(rand, (size - len) / 4096 + 1)
      : randInt(rand, size - len + 1);
    if (out.every(([o, l]) => off + len <= o || o + l <= off)) out.push([off, len]);
  }
  return out;
}

/**
 * Runs `batches` batches of up to 32 concurrent operations on `img` against
 * `model`; every read checks the bytes the model held before its batch
 * (no other operation of the batch touches them).
 */
async function randomBatches(
  img: DiskImage,
  model: Uint8Array,
  files: string[],
  seed: number,
  batches: number,
  clusterSize: number,
): Promise<void> {
  const rand = prng(seed);
  for (let b = 0; b < batches; b++) {
    if (b % 4 === 0) dropCache(files);
    const ops: Array<Promise<void>> = [];
    const after: Array<() => void> = [];
    // Ranges of up to a cluster and a half: many batches put two writes into one cluster.
    const ranges = disjointRanges(rand, 2 + randInt(rand, 31), model.length, clusterSize * 1.5);
    for (const [i, [off, len]] of ranges.entries()) {
      const r = rand();
      const what = `seed ${seed}, batch ${b}, op ${i}: ${off}+${len}`;
      if (r < 0.45) {
        const d = pattern(len, seed * 7919 + b * 97 + i);
        ops.push(img.write(off, d));
        after.push(() => model.set(d, off));
      } else if (r < 0.85) {
        const got = new Uint8Array(len);
        const want = model.slice(off, off + len);
        ops.push(img.read(off, got).then(() => assertBytes(got, want, `read (${what})`)));
      } else if (r < 0.95) {
        ops.push(img.discard(off, len));
        after.push(() => model.fill(0, off, off + len));
      } else {
        ops.push(img.flush());
      }
    }
    await Promise.all(ops);
    for (const f of after) f();
  }
  const all = new Uint8Array(model.length);
  dropCache(files);
  await img.read(0, all);
  assertBytes(all, model, `whole image after the batches (seed ${seed})`);
}

Deno.test("qcow2 overlay: concurrent random requests through io_uring match a model, cold and warm", async () => {
  const seed = Number(Deno.env.get("SEED") ?? Date.now() % 100000);
  console.log(`seed ${seed} (rerun with SEED=${seed})`);
  await using dir = await tempDir();
  const base = `${dir.path}/base.raw`;
  const size = 4 * MiB;
  await Deno.writeFile(base, pattern(size, seed));
  const top = `${dir.path}/top.qcow2`;
  for (const clusterSize of [4 * KiB, 64 * KiB]) {
    const model = pattern(size, seed);
    createImage(top, { backingFile: "base.raw", backingFormat: "raw", clusterSize }).closeSync();
    const img = openImage(top);
    try {
      await randomBatches(img, model, [top, base], seed + clusterSize, 40, clusterSize);
    } finally {
      await img.close();
    }
    await assertQemuCheck(top);
    // Everything the model holds is in the files.
    const again = openImage(top, { readOnly: true });
    const all = new Uint8Array(size);
    again.readSync(0, all);
    again.closeSync();
    assertBytes(all, model, `reopened top (seed ${seed}, cluster ${clusterSize})`);
  }
});

Deno.test("raw image: concurrent random requests through io_uring match a model", async () => {
  const seed = Number(Deno.env.get("SEED") ?? Date.now() % 100000);
  console.log(`seed ${seed} (rerun with SEED=${seed})`);
  await using dir = await tempDir();
  const path = `${dir.path}/disk.raw`;
  const size = 2 * MiB;
  const model = pattern(size, seed);
  await Deno.writeFile(path, model);
  const img = openImage(path, { format: "raw" });
  try {
    await randomBatches(img, model, [path], seed, 30, 64 * KiB);
  } finally {
    await img.close();
  }
  assertBytes(await Deno.readFile(path), model, `file after the batches (seed ${seed})`);
});

Deno.test("cold reads go to the ring: 32 issued together are all in flight at once, and close waits for them", async () => {
  await using dir = await tempDir();
  const path = `${dir.path}/disk.raw`;
  const data = pattern(32 * MiB, 5);
  await writeUncached(path, data);
  const ring = await fileRing();
  const img = openImage(path, { format: "raw", readOnly: true });
  const bufs = Array.from({ length: 32 }, () => new Uint8Array(4 * KiB));
  const reads = bufs.map((b, i) => img.read(i * MiB + 512, b));
  // Not in the page cache, so they went to the ring, several in flight at once (a read can
  // still finish on the JS thread: RWF_NOWAIT starts the readahead, which a fast disk may
  // complete before the call returns).
  assert.ok(ring.inflight >= 4, `${ring.inflight} of 32 cold reads in flight`);
  const closed = img.close();
  await Promise.all(reads);
  await closed;
  assert.equal(ring.inflight, 0);
  for (const [i, b] of bufs.entries()) {
    assertBytes(b, data.subarray(i * MiB + 512, i * MiB + 512 + 4 * KiB), `read ${i}`);
  }
  // Aligned small reads behind a deep queue go O_DIRECT (no readahead), the same bytes;
  // half of one range is dirty in the page cache (the kernel writes it back before an
  // O_DIRECT read), and one ends at the end of the file.
  const rw = openImage(path, { format: "raw" });
  const dirty = pattern(4 * KiB, 6);
  const dirtyAt = 5 * MiB + 512 * KiB;
  rw.writeSync(dirtyAt, dirty);
  const direct = ring.directReads;
  const bigger = new Uint8Array(32 * MiB + 8 * KiB);
  bigger.set(data);
  bigger.set(dirty, dirtyAt);
  const got = Array.from({ length: 32 }, () => new Uint8Array(8 * KiB));
  // Half a MiB from the reads above, whose readahead cached the pages around them.
  const at = (i: number) =>
    i === 31 ? 32 * MiB - 8 * KiB : i === 5 ? dirtyAt : i * MiB + 512 * KiB + 4 * KiB * (i % 3);
  await Promise.all(got.map((b, i) => rw.read(at(i), b)));
  assert.ok(ring.directReads - direct >= 16, `${ring.directReads - direct} of 32 read O_DIRECT`);
  for (const [i, b] of got.entries()) {
    const o = at(i);
    assertBytes(b, bigger.subarray(o, o + 8 * KiB), `aligned read ${i} at ${o}`);
  }
  await rw.close();
});

Deno.test("an image file refuses a synchronous close while its requests are in flight", async () => {
  await using dir = await tempDir();
  const path = `${dir.path}/f.raw`;
  await writeUncached(path, pattern(MiB, 9));
  await fileRing();
  const f = ImageFile.open(path, { readOnly: true });
  // Cold reads (a few may finish at once: see the test above); at least one is in flight.
  const bufs = Array.from({ length: 16 }, () => new Uint8Array(4 * KiB));
  const reads = bufs.map((b, i) => f.readAsync(b, 64 * KiB * i + 512));
  assert.ok(f.pending > 0, "no cold read in flight");
  assert.throws(() => f.close(), /asynchronous requests are in flight/);
  await Promise.all(reads);
  assert.equal(f.pending, 0);
  f.close();
  // Past the end of the file reads as zeros, as the synchronous path does.
  const g = ImageFile.open(path, { readOnly: true });
  const tail = new Uint8Array(8 * KiB).fill(0xee);
  await g.readAsync(tail, MiB - 4 * KiB);
  await g.drain();
  g.close();
  assert.ok(tail.subarray(4 * KiB).every((x) => x === 0), "bytes past EOF are zeros");
  assertBytes(tail.subarray(0, 4 * KiB), pattern(MiB, 9).subarray(MiB - 4 * KiB), "tail");
});
