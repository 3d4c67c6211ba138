import assert from "node:assert/strict";
import { createImage, openImage } from "../../cow/chain.ts";
import { checkImage } from "../../cow/check.ts";
import {
  BackingChainError,
  BlockRangeError,
  CowError,
  QcowError,
  UnsupportedFeatureError,
} from "../../cow/errors.ts";
import { Qcow2Image } from "../../cow/qcow2.ts";
import { HDR } from "../../cow/qcow2_format.ts";
import { pattern, prng, qemuImg, randInt, tempDir } from "./helpers.ts";

async function patch(path: string, at: number, bytes: number[]): Promise<void> {
  const f = await Deno.open(path, { read: true, write: true });
  try {
    await f.seek(at, Deno.SeekMode.Start);
    await f.write(new Uint8Array(bytes));
  } finally {
    f.close();
  }
}

function fresh(dir: string, name: string): string {
  const p = `${dir}/${name}`;
  createImage(p, { size: 1 << 20 }).closeSync();
  return p;
}

Deno.test("images with unsupported qcow2 features are refused with a clear error", async () => {
  await using dir = await tempDir();
  const cases: Array<
    { name: string; at: number; bytes: number[]; re: RegExp; cls: typeof QcowError }
  > = [
    {
      name: "dirty",
      at: HDR.INCOMPATIBLE_FEATURES + 7,
      bytes: [1],
      re: /dirty.*qemu-img check -r all/,
      cls: UnsupportedFeatureError,
    },
    {
      name: "corrupt",
      at: HDR.INCOMPATIBLE_FEATURES + 7,
      bytes: [2],
      re: /corrupt/,
      cls: QcowError,
    },
    {
      name: "datafile",
      at: HDR.INCOMPATIBLE_FEATURES + 7,
      bytes: [4],
      re: /external data file/,
      cls: UnsupportedFeatureError,
    },
    {
      name: "zstd",
      at: HDR.INCOMPATIBLE_FEATURES + 7,
      bytes: [8],
      re: /compression type/,
      cls: UnsupportedFeatureError,
    },
    {
      name: "extl2",
      at: HDR.INCOMPATIBLE_FEATURES + 7,
      bytes: [16],
      re: /extended L2/,
      cls: UnsupportedFeatureError,
    },
    {
      name: "unknown",
      at: HDR.INCOMPATIBLE_FEATURES + 2,
      bytes: [1],
      re: /unknown incompatible feature bits 0x10000000000/,
      cls: UnsupportedFeatureError,
    },
    {
      name: "encrypted",
      at: HDR.CRYPT_METHOD + 3,
      bytes: [2],
      re: /encrypted/,
      cls: UnsupportedFeatureError,
    },
    {
      name: "version4",
      at: HDR.VERSION + 3,
      bytes: [4],
      re: /version 4/,
      cls: UnsupportedFeatureError,
    },
    {
      name: "clusterbits",
      at: HDR.CLUSTER_BITS + 3,
      bytes: [30],
      re: /cluster_bits 30/,
      cls: QcowError,
    },
  ];
  for (const c of cases) {
    const p = fresh(dir.path, `${c.name}.qcow2`);
    await patch(p, c.at, c.bytes);
    assert.throws(
      () => openImage(p),
      (e: unknown) =>
        e instanceof c.cls && c.re.test((e as Error).message) && (e as Error).message.includes(p),
      c.name,
    );
  }
});

Deno.test("a file that is not an image is refused by check, and a qcow2 open of it names the problem", async () => {
  await using dir = await tempDir();
  const p = `${dir.path}/notes.txt`;
  await Deno.writeTextFile(p, "just some text, long enough to hold a header ".repeat(4));
  assert.throws(
    () => checkImage(p),
    (e: unknown) => e instanceof QcowError && /not a qcow2 image/.test((e as Error).message),
  );
  assert.throws(() => openImage(p, { format: "qcow2" }), /bad magic/);
  assert.equal(openImage(p, { readOnly: true }).format, "raw"); // probing falls back to raw, like QEMU
});

Deno.test("a backing loop is detected instead of recursing", async () => {
  await using dir = await tempDir();
  const a = fresh(dir.path, "a.qcow2");
  createImage(`${dir.path}/b.qcow2`, { backingFile: "a.qcow2" }).closeSync();
  await qemuImg("rebase", "-u", "-b", "b.qcow2", "-F", "qcow2", a);
  assert.throws(
    () => openImage(`${dir.path}/b.qcow2`),
    (e: unknown) => e instanceof BackingChainError && /loop/.test((e as Error).message),
  );
});

Deno.test("a missing parent is reported with the image that names it", async () => {
  await using dir = await tempDir();
  fresh(dir.path, "p.qcow2");
  createImage(`${dir.path}/c.qcow2`, { backingFile: "p.qcow2" }).closeSync();
  await Deno.remove(`${dir.path}/p.qcow2`);
  assert.throws(
    () => openImage(`${dir.path}/c.qcow2`),
    (e: unknown) =>
      e instanceof BackingChainError &&
      /backing file .*p\.qcow2' of '.*c\.qcow2' does not exist/.test((e as Error).message),
  );
});

Deno.test("reads and writes outside the disk, and writes to read-only images, are refused", async () => {
  await using dir = await tempDir();
  const p = fresh(dir.path, "r.qcow2");
  const img = openImage(p);
  try {
    await assert.rejects(img.read(-1, new Uint8Array(1)), BlockRangeError);
    await assert.rejects(img.read((1 << 20) - 1, new Uint8Array(2)), BlockRangeError);
    await assert.rejects(img.write(1.5, new Uint8Array(2)), BlockRangeError);
    await assert.rejects(img.discard(0, (1 << 20) + 1), BlockRangeError);
  } finally {
    await img.close();
  }
  const ro = openImage(p, { readOnly: true });
  await assert.rejects(ro.write(0, new Uint8Array(1)), /read-only/);
  await ro.close();
});

Deno.test("hostile metadata (L1 past the end of the file, unaligned L2 offsets) gives errors, not crashes", async () => {
  await using dir = await tempDir();
  const p = fresh(dir.path, "h.qcow2");
  // L1 table offset far beyond the file
  await patch(p, HDR.L1_TABLE_OFFSET, [0, 0, 0, 0x10, 0, 0, 0, 0]);
  assert.throws(() => openImage(p), QcowError);
  const big = fresh(dir.path, "h1.qcow2");
  // a refcount table of 16M clusters (1 TiB) must not be allocated
  await patch(big, HDR.REFCOUNT_TABLE_CLUSTERS, [0, 0xff, 0xff, 0xff]);
  assert.throws(() => openImage(big), /refcount table .* too large/);
  const q = fresh(dir.path, "h2.qcow2");
  const img = Qcow2Image.open(q);
  img.writeSync(0, new Uint8Array(10).fill(1));
  img.closeSync();
  // point L1[0] at an unaligned offset
  await patch(
    q,
    2 * 65536, // vmkit puts L1 right after the 1-cluster refcount table
    [0x80, 0, 0, 0, 0, 0, 0x12, 0x00],
  );
  assert.throws(() => openImage(q), /not cluster aligned/);
});

Deno.test("creating an image refuses bad cluster sizes and self-backing", async () => {
  await using dir = await tempDir();
  assert.throws(
    () => Qcow2Image.create(`${dir.path}/x.qcow2`, { size: 1 << 20, clusterSize: 3000 }),
    /cluster size 3000/,
  );
  assert.throws(
    () => Qcow2Image.create(`${dir.path}/x.qcow2`, { size: 1 << 20, clusterSize: 4 << 20 }),
    /cluster size/,
  );
  const p = fresh(dir.path, "self.qcow2");
  assert.throws(() => createImage(p, { backingFile: "self.qcow2" }), BackingChainError);
});

Deno.test("randomly corrupted metadata gives typed errors, never other exceptions (seed 4242)", async () => {
  await using dir = await tempDir();
  const seed = 4242;
  const rand = prng(seed);
  const good = `${dir.path}/good.qcow2`;
  const img = createImage(good, { size: 1 << 20, clusterSize: 4096 });
  img.writeSync(5000, pattern(300000, 1));
  img.discardSync(100000, 20000);
  img.closeSync();
  const original = await Deno.readFile(good);
  const metaBytes = 8 * 4096; // header, refcount table, L1, L2, refcount block
  const bad = `${dir.path}/bad.qcow2`;
  const buf = new Uint8Array(1 << 20);
  for (let i = 0; i < 300; i++) {
    const copy = original.slice();
    const flips = 1 + randInt(rand, 4);
    for (let f = 0; f < flips; f++) {
      copy[randInt(rand, metaBytes)] = randInt(rand, 256);
    }
    await Deno.writeFile(bad, copy);
    try {
      const d = openImage(bad, { readOnly: true });
      try {
        d.readSync(0, buf.subarray(0, d.size > buf.length ? buf.length : d.size));
      } finally {
        d.closeSync();
      }
      checkImage(bad);
    } catch (err) {
      assert.ok(
        err instanceof CowError,
        `iteration ${i} (seed ${seed}): ${(err as Error).name}: ${(err as Error).message}`,
      );
    }
  }
});
