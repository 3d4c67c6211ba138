/**
 * Metadata overlap checks on every write, as QEMU's `overlap-check` (issue
 * 11.5): a write that would land on qcow2 metadata is refused with an error
 * naming the image and the structure, and the image is marked corrupt.
 */
import assert from "node:assert/strict";
import { createImage, openImage } from "../../cow/chain.ts";
import { stream } from "../../cow/stream.ts";
import { disk, pattern, qemuImg, qemuIo, run, tempDir } from "./helpers.ts";

const KiB = 1024;
const MiB = 1 << 20;
const COPIED = 0x8000000000000000n;

interface Layout {
  cs: number;
  l1: number;
  refcountTable: number;
  refcountBlock: number;
  l2: number;
}

async function layout(path: string): Promise<Layout> {
  const d = await Deno.readFile(path);
  const v = new DataView(d.buffer);
  const cs = 2 ** v.getUint32(20, false);
  const l1 = Number(v.getBigUint64(40, false));
  const refcountTable = Number(v.getBigUint64(48, false));
  const refcountBlock = Number(v.getBigUint64(refcountTable, false));
  const l2 = Number(v.getBigUint64(l1, false) & 0x00fffffffffffe00n);
  return { cs, l1, refcountTable, refcountBlock, l2 };
}

async function patch64(path: string, at: number, value: bigint): Promise<void> {
  const f = await Deno.open(path, { read: true, write: true });
  try {
    const b = new Uint8Array(8);
    new DataView(b.buffer).setBigUint64(0, value, false);
    await f.seek(at, Deno.SeekMode.Start);
    await f.write(b);
  } finally {
    f.close();
  }
}

async function bytesAt(path: string, at: number, n: number): Promise<Uint8Array> {
  return (await Deno.readFile(path)).slice(at, at + n);
}

async function isCorrupt(path: string): Promise<boolean> {
  const info = JSON.parse(await qemuImg("info", "--output=json", path)) as {
    "format-specific": { data: { corrupt?: boolean } };
  };
  return info["format-specific"].data.corrupt === true;
}

const STRUCTURES = [
  { name: "refcount table", at: (l: Layout) => l.refcountTable },
  { name: "refcount block", at: (l: Layout) => l.refcountBlock },
  { name: "active L1 table", at: (l: Layout) => l.l1 },
  { name: "active L2 table", at: (l: Layout) => l.l2 },
] as const;

for (const s of STRUCTURES) {
  Deno.test(`a guest write whose L2 entry points at the ${s.name} is refused and marks the image corrupt`, async () => {
    await using dir = await tempDir();
    const img = `${dir.path}/img.qcow2`;
    await qemuImg("create", "-q", "-f", "qcow2", img, "8M");
    await qemuIo(img, "qcow2", "write -P 1 0 64k");
    const l = await layout(img);
    const target = s.at(l);
    // Guest cluster 1 now claims to live in the metadata cluster.
    await patch64(img, l.l2 + 8, COPIED | BigInt(target));
    // QEMU agrees this write overlaps metadata (the test builds the case it means to).
    await Deno.copyFile(img, `${img}.qemu`);
    const q = await run("qemu-io", "-f", "qcow2", "-c", "write -P 9 64k 4k", `${img}.qemu`);
    assert.match(q.stdout + q.stderr, new RegExp(`overlaps with ${s.name}`));
    const before = await bytesAt(img, target, l.cs);
    const v = openImage(img);
    assert.throws(
      () => v.writeSync(64 * KiB, pattern(4 * KiB, 2)),
      new RegExp(`${img.replaceAll("/", "\\/")}.*${s.name}|${s.name}.*${img}`),
    );
    // Further writes are refused too; the image is unusable for writing until repaired.
    assert.throws(() => v.writeSync(2 * MiB, pattern(4 * KiB, 3)), /corrupt/);
    v.closeSync();
    assert.deepEqual(await bytesAt(img, target, l.cs), before, `${s.name} was overwritten`);
    assert.ok(await isCorrupt(img), "the corrupt bit is set");
    assert.throws(() => openImage(img), /corrupt/);
    openImage(img, { readOnly: true }).closeSync();
  });
}

Deno.test("vmkit disk commit refuses to overwrite the parent's refcount table through a hostile L2 entry", async () => {
  await using dir = await tempDir();
  const d = dir.path;
  const parent = `${d}/parent.qcow2`;
  await qemuImg("create", "-q", "-f", "qcow2", parent, "8M");
  await qemuIo(parent, "qcow2", "write -P 1 0 64k");
  const l = await layout(parent);
  await patch64(parent, l.l2 + 8 * 16, COPIED | BigInt(l.refcountTable));
  const top = createImage(`${d}/top.qcow2`, { backingFile: "parent.qcow2" });
  top.writeSync(16 * 64 * KiB, pattern(64 * KiB, 5));
  top.closeSync();
  const before = await bytesAt(parent, l.refcountTable, l.cs);
  const r = await disk(d, "commit", "top.qcow2");
  assert.equal(r.code, 2, `commit exited ${r.code} (2: corrupt image): ${r.stdout}${r.stderr}`);
  assert.match(r.stderr, /parent\.qcow2.*refcount table/);
  assert.equal(r.stderr.trim().split("\n").length, 1, r.stderr);
  assert.deepEqual(await bytesAt(parent, l.refcountTable, l.cs), before);
  assert.ok(await isCorrupt(parent));
});

Deno.test("stream refuses to write an L2 table over the L1 table a hostile L1 entry points at", async () => {
  await using dir = await tempDir();
  const d = dir.path;
  await Deno.writeFile(`${d}/base.raw`, pattern(8 * MiB, 6));
  const top = `${d}/top.qcow2`;
  createImage(top, { backingFile: "base.raw", clusterSize: 4096 }).closeSync();
  await qemuIo(top, "qcow2", "write -P 7 0 4k");
  const l = await layout(top);
  // L1[1] (guest 2..4 MiB) points at the L1 table itself.
  await patch64(top, l.l1 + 8, COPIED | BigInt(l.l1));
  const before = await bytesAt(top, l.l1, l.cs);
  await assert.rejects(stream(top), /top\.qcow2.*active L1 table/);
  assert.deepEqual(await bytesAt(top, l.l1, l.cs), before, "the L1 table was overwritten");
  assert.ok(await isCorrupt(top));
});

Deno.test("a guest write through an L2 entry that is not cluster aligned is refused and marks the image corrupt", async () => {
  await using dir = await tempDir();
  const img = `${dir.path}/img.qcow2`;
  await qemuImg("create", "-q", "-f", "qcow2", img, "8M");
  await qemuIo(img, "qcow2", "write -P 1 0 128k");
  const l = await layout(img);
  // Guest cluster 1's data moves half a cluster down: it now straddles guest cluster 0's.
  const e = (await Deno.readFile(img)).slice(l.l2 + 8, l.l2 + 16);
  const data1 = new DataView(e.buffer).getBigUint64(0, false) & 0x00fffffffffffe00n;
  await patch64(img, l.l2 + 8, COPIED | (data1 - 32768n));
  const before = await Deno.readFile(img);
  const v = openImage(img);
  assert.throws(() => v.writeSync(64 * KiB, pattern(4 * KiB, 4)), /not cluster aligned/);
  v.closeSync();
  const after = await Deno.readFile(img);
  assert.deepEqual(after.subarray(4096), before.subarray(4096), "only the header changed");
  assert.ok(await isCorrupt(img));
});
