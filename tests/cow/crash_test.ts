import assert from "node:assert/strict";
import { checkImage } from "../../cow/check.ts";
import { createImage, openImage } from "../../cow/chain.ts";
import type { DiskImage } from "../../cow/disk_image.ts";
import { InjectedFault } from "../../cow/errors.ts";
import { FaultInjector } from "../../cow/file_io.ts";
import { HDR } from "../../cow/qcow2_format.ts";
import type { Qcow2Image } from "../../cow/qcow2.ts";
import { assertBytes, pattern, prng, randInt, run, tempDir } from "./helpers.ts";

const MiB = 1 << 20;
const SEED = 20261124;

type Op =
  | { kind: "write"; offset: number; length: number; seed: number }
  | { kind: "discard"; offset: number; length: number }
  | { kind: "flush" }
  | { kind: "grow"; size: number };

/** A mixed sequence: partial-cluster COW writes, rewrites, discards, reuse, an L1 move. */
function sequence(size: number, cs: number): Op[] {
  const rand = prng(SEED);
  const ops: Op[] = [];
  for (let i = 0; i < 36; i++) {
    const r = rand();
    if (i % 6 === 5) ops.push({ kind: "flush" });
    else if (r < 0.65) {
      const length = 1 + randInt(rand, cs * 2);
      ops.push({ kind: "write", offset: randInt(rand, size - length), length, seed: i + 1 });
    } else {
      const length = cs * (1 + randInt(rand, 3)) + randInt(rand, 700);
      ops.push({ kind: "discard", offset: randInt(rand, size - length), length });
    }
  }
  ops.push({ kind: "grow", size: size * 10 });
  ops.push({ kind: "write", offset: size * 9 + 777, length: cs + 5, seed: 99 });
  ops.push({ kind: "flush" });
  return ops;
}

interface Outcome {
  /** Contents acknowledged by the last completed flush (or grow). */
  acked: Uint8Array;
  /** Bytes touched after that flush (their content may be old or new). */
  touched: Uint8Array;
  /** Size before and after the interrupted op. */
  sizes: number[];
  crashed: boolean;
}

function apply(img: DiskImage, ops: Op[], base: Uint8Array, finalSize: number): Outcome {
  const model = new Uint8Array(finalSize);
  model.set(base);
  let acked = model.slice();
  let touched = new Uint8Array(finalSize);
  let size = img.size;
  try {
    for (const op of ops) {
      if (op.kind === "write") {
        const d = pattern(op.length, op.seed);
        touched.fill(1, op.offset, op.offset + op.length);
        img.writeSync(op.offset, d);
        model.set(d, op.offset);
      } else if (op.kind === "discard") {
        touched.fill(1, op.offset, op.offset + op.length);
        img.discardSync(op.offset, op.length);
        model.fill(0, op.offset, op.offset + op.length);
      } else if (op.kind === "flush") {
        img.flushSync();
        acked = model.slice();
        touched = new Uint8Array(finalSize);
      } else {
        const old = size;
        size = op.size;
        try {
          img.grow(op.size);
        } catch (err) {
          return { acked, touched, sizes: [old, op.size], crashed: true, ...rethrow(err) };
        }
        acked = model.slice();
        touched = new Uint8Array(finalSize);
      }
    }
  } catch (err) {
    return { acked, touched, sizes: [size], crashed: true, ...rethrow(err) };
  }
  return { acked, touched, sizes: [size], crashed: false };
}

function rethrow(err: unknown): Record<never, never> {
  if (!(err instanceof InjectedFault)) throw err;
  return {};
}

/** Runs `ops` on a copy of `pristine`, crashing at each write point in `points`; checks each. */
async function crashAt(
  dir: string,
  pristine: string,
  ops: Op[],
  base: Uint8Array,
  finalSize: number,
  points: Iterable<number>,
  total: number,
): Promise<number> {
  const img = `${dir}/crash.qcow2`;
  let tried = 0;
  for (const k of points) {
    tried++;
    await Deno.copyFile(pristine, img);
    const dev = openImage(img, { faults: new FaultInjector(k) }) as Qcow2Image;
    let out = apply(dev, ops, base, finalSize);
    if (!out.crashed) {
      // the last op is a flush, so everything is acknowledged; close may still crash
      try {
        dev.closeSync();
      } catch (err) {
        rethrow(err);
        out = { ...out, crashed: true };
      }
    }
    assert.ok(out.crashed, `write point ${k} did not fail`);
    dev.abandon();

    const qc = await run("qemu-img", "check", "-f", "qcow2", img);
    assert.ok(
      qc.code === 0 || qc.code === 3,
      `crash at write ${k}/${total} (seed ${SEED}): qemu-img check exited ${qc.code}\n${qc.stdout}${qc.stderr}`,
    );
    assert.equal(checkImage(img).errors.length, 0, `vmkit check after crash at write ${k}`);

    const re = openImage(img, { readOnly: true });
    try {
      assert.ok(out.sizes.includes(re.size), `size ${re.size} after crash at ${k}: ${out.sizes}`);
      const n = Math.min(re.size, out.acked.length);
      const got = new Uint8Array(n);
      re.readSync(0, got);
      const want = out.acked.slice(0, n);
      for (let i = 0; i < n; i++) if (out.touched[i]) want[i] = got[i] ?? 0;
      assertBytes(got, want, `crash at write ${k}/${total} (seed ${SEED})`);
    } finally {
      re.closeSync();
    }
  }
  return tried;
}

/** Counts the write points of `ops` (including the final close); returns the trace of offsets. */
async function tracePoints(
  dir: string,
  pristine: string,
  ops: Op[],
  base: Uint8Array,
  finalSize: number,
): Promise<number[]> {
  const counter = new FaultInjector(0);
  counter.trace = [];
  const probe = `${dir}/probe.qcow2`;
  await Deno.copyFile(pristine, probe);
  const full = openImage(probe, { faults: counter }) as Qcow2Image;
  const clean = apply(full, ops, base, finalSize);
  assert.equal(clean.crashed, false);
  full.closeSync();
  return counter.trace;
}

Deno.test("a crash at every write point of a mixed sequence leaves qemu-img check clean and flushed data intact", async () => {
  await using dir = await tempDir(true);
  const cs = 4096;
  const size = 4 * MiB;
  const basePath = `${dir.path}/base.raw`;
  const base = pattern(3 * MiB, 7); // the parent is shorter than the overlay
  await Deno.writeFile(basePath, base);
  const ops = sequence(size, cs);
  const finalSize = size * 10;
  const pristine = `${dir.path}/pristine.qcow2`;
  createImage(pristine, { backingFile: "base.raw", clusterSize: cs, size }).closeSync();
  const total = (await tracePoints(dir.path, pristine, ops, base, finalSize)).length;
  assert.ok(total > 40, `expected many write points, got ${total}`);
  const all = Array.from({ length: total }, (_, i) => i + 1);
  assert.equal(await crashAt(dir.path, pristine, ops, base, finalSize, all, total), total);
});

Deno.test("a crash at every write point around a refcount table move leaves qemu-img check clean", async () => {
  await using dir = await tempDir(true);
  // 512 B clusters: a one-cluster refcount table covers 64 blocks x 256 clusters = 8 MiB of file.
  const cs = 512;
  const size = 16 * MiB;
  const pristine = `${dir.path}/pristine.qcow2`;
  const fill = 7800 * 1024;
  const base = new Uint8Array(size);
  base.set(pattern(fill, 3));
  const img = createImage(pristine, { size, clusterSize: cs });
  img.writeSync(0, base.subarray(0, fill));
  img.closeSync();
  const ops: Op[] = [
    { kind: "write", offset: fill, length: 250 * 1024, seed: 1 },
    { kind: "flush" },
    { kind: "discard", offset: 4096, length: 8192 },
    { kind: "write", offset: 10 * MiB, length: 3000, seed: 2 },
    { kind: "flush" },
  ];
  const trace = await tracePoints(dir.path, pristine, ops, base, size);
  const move = trace.indexOf(HDR.REFCOUNT_TABLE_OFFSET) + 1; // 1-based write point of the header update
  assert.ok(move > 0, "the sequence moves the refcount table");
  const points = [];
  for (let k = Math.max(1, move - 12); k <= trace.length; k++) points.push(k);
  await crashAt(dir.path, pristine, ops, base, size, points, trace.length);
});
