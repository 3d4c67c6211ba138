import assert from "node:assert/strict";
import { checkImage } from "../../cow/check.ts";
import { createImage, openImage } from "../../cow/chain.ts";
import { InjectedFault } from "../../cow/errors.ts";
import { FaultInjector } from "../../cow/file_io.ts";
import type { Qcow2Image } from "../../cow/qcow2.ts";
import { assertBytes, pattern, prng, randInt, run, tempDir } from "./helpers.ts";

const MiB = 1 << 20;
const CS = 4096; // an L2 table covers 2 MiB
const SIZE = 64 * MiB; // 32 L2 tables
const L2_CACHE = 16 * CS; // 16 tables: the cache is full after the first few writes
const WRITES = 900;
const FLUSH_EVERY = 300;
const SEED = Number(Deno.env.get("VMKIT_TEST_SEED") ?? Date.now() % 1_000_000);

interface Write {
  offset: number;
  data: Uint8Array;
}

function writes(): Write[] {
  const rand = prng(SEED);
  const out: Write[] = [];
  for (let i = 0; i < WRITES; i++) {
    const length = 1 + randInt(rand, 2 * CS);
    out.push({ offset: randInt(rand, SIZE - length), data: pattern(length, i + 1) });
  }
  return out;
}

/** Per write: the syncs and write points it made (a flush every FLUSH_EVERY writes apart). */
function apply(
  img: Qcow2Image,
  ws: Write[],
  f: FaultInjector,
): { syncs: number[]; points: number[] } {
  const syncs: number[] = [];
  const points: number[] = [];
  for (const [i, w] of ws.entries()) {
    const s = f.syncs;
    const p = f.count;
    img.writeSync(w.offset, w.data);
    syncs.push(f.syncs - s);
    points.push(f.count - p);
    if ((i + 1) % FLUSH_EVERY === 0) img.flushSync();
  }
  return { syncs, points };
}

function open(path: string, f: FaultInjector): Qcow2Image {
  return openImage(path, { faults: f, l2CacheSize: L2_CACHE }) as Qcow2Image;
}

Deno.test("a full metadata cache under random allocating writes writes back one table at a time, with at most one barrier per write", async () => {
  await using dir = await tempDir(true);
  const path = `${dir.path}/img.qcow2`;
  createImage(path, { size: SIZE, clusterSize: CS }).closeSync();
  const f = new FaultInjector(0);
  const img = open(path, f);
  const { syncs, points } = apply(img, writes(), f);
  img.closeSync();
  const maxSyncs = Math.max(...syncs);
  const maxPoints = Math.max(...points);
  const barrierWrites = syncs.filter((n) => n > 0).length;
  // A write of up to two clusters: its data (2), two L2 victims written back (2), and
  // at a barrier the dirty refcount blocks (at most the 4 cached) and a table entry.
  // A flush of the whole cache on insert (16 tables, two syncs) breaks both bounds.
  assert.ok(maxSyncs <= 2, `a write made ${maxSyncs} syncs (seed ${SEED})`);
  assert.ok(maxPoints <= 10, `a write made ${maxPoints} write points (seed ${SEED})`);
  // One barrier makes every table dirtied before it writable: most writes need none.
  assert.ok(
    barrierWrites * 4 <= WRITES,
    `${barrierWrites} of ${WRITES} writes synced (seed ${SEED})`,
  );
  const qc = await run("qemu-img", "check", "-f", "qcow2", path);
  assert.equal(qc.code, 0, `qemu-img check (seed ${SEED}): ${qc.stdout}${qc.stderr}`);
  const model = new Uint8Array(SIZE);
  for (const w of writes()) model.set(w.data, w.offset);
  const re = openImage(path, { readOnly: true });
  const got = new Uint8Array(SIZE);
  re.readSync(0, got);
  re.closeSync();
  assertBytes(got, model, `the image after ${WRITES} writes (seed ${SEED})`);
});

Deno.test("a crash at random points under a full metadata cache keeps qemu-img check clean and flushed data intact", async () => {
  await using dir = await tempDir(true);
  const pristine = `${dir.path}/pristine.qcow2`;
  createImage(pristine, { size: SIZE, clusterSize: CS }).closeSync();
  const ws = writes();
  const counter = new FaultInjector(0);
  {
    await Deno.copyFile(pristine, `${dir.path}/probe.qcow2`);
    const img = open(`${dir.path}/probe.qcow2`, counter);
    apply(img, ws, counter);
    img.closeSync();
  }
  const rand = prng(SEED + 1);
  const img = `${dir.path}/crash.qcow2`;
  for (let round = 0; round < 3; round++) {
    const k = 1 + randInt(rand, counter.count);
    await Deno.copyFile(pristine, img);
    const f = new FaultInjector(k);
    const dev = open(img, f);
    // What the last completed flush acknowledged, and the bytes written since.
    const model = new Uint8Array(SIZE);
    let acked = model.slice();
    let touched = new Uint8Array(SIZE);
    try {
      for (const [i, w] of ws.entries()) {
        touched.fill(1, w.offset, w.offset + w.data.length);
        dev.writeSync(w.offset, w.data);
        model.set(w.data, w.offset);
        if ((i + 1) % FLUSH_EVERY === 0) {
          dev.flushSync();
          acked = model.slice();
          touched = new Uint8Array(SIZE);
        }
      }
      dev.closeSync();
      assert.fail(`write point ${k} of ${counter.count} was not reached (seed ${SEED})`);
    } catch (err) {
      if (!(err instanceof InjectedFault)) throw err;
    }
    dev.abandon();
    const what = `crash at write point ${k}/${counter.count} (seed ${SEED})`;
    const qc = await run("qemu-img", "check", "-f", "qcow2", img);
    assert.ok(qc.code === 0 || qc.code === 3, `${what}: qemu-img check ${qc.code}\n${qc.stdout}`);
    assert.deepEqual(checkImage(img).errors, [], what);
    const re = openImage(img, { readOnly: true });
    const got = new Uint8Array(SIZE);
    re.readSync(0, got);
    re.closeSync();
    for (let i = 0; i < SIZE; i++) if (touched[i]) acked[i] = got[i] ?? 0;
    assertBytes(got, acked, what);
  }
});
