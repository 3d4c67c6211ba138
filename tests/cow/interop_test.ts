import assert from "node:assert/strict";
import { createImage, openImage } from "../../cow/chain.ts";
import { checkImage } from "../../cow/check.ts";
import { Qcow2Image } from "../../cow/qcow2.ts";
import { UnsupportedFeatureError } from "../../cow/errors.ts";
import {
  assertBytes,
  assertQemuCheck,
  dropBackingFormat,
  pattern,
  qemuImg,
  qemuIo,
  tempDir,
} from "./helpers.ts";

const MiB = 1 << 20;

async function readAll(path: string): Promise<Uint8Array> {
  const img = openImage(path, { readOnly: true });
  try {
    const buf = new Uint8Array(img.size);
    await img.read(0, buf);
    return buf;
  } finally {
    await img.close();
  }
}

async function qemuRaw(dir: string, image: string): Promise<Uint8Array> {
  const out = `${dir}/ref_${crypto.randomUUID()}.raw`;
  await qemuImg("convert", "-O", "raw", image, out);
  const data = await Deno.readFile(out);
  await Deno.remove(out);
  return data;
}

for (const cs of [4096, 65536, 2 * MiB]) {
  Deno.test(`images qemu-img writes with ${cs / 1024} KiB clusters (data, zero clusters, discards) read correctly in vmkit`, async () => {
    await using dir = await tempDir();
    const img = `${dir.path}/q.qcow2`;
    await qemuImg("create", "-q", "-f", "qcow2", "-o", `cluster_size=${cs}`, img, "8M");
    await qemuIo(
      img,
      "qcow2",
      "write -P 0xaa 0 100k",
      "write -P 0xbb 3000k 1100k",
      "write -z 3M 64k",
      "write -z 0 32k",
      "discard 4M 64k",
      "write -P 0xcc 7M 1M",
      "write -P 0xdd 12345 777",
    );
    const want = await qemuRaw(dir.path, img);
    assertBytes(await readAll(img), want, `cluster size ${cs}`);
  });
}

Deno.test("vmkit-written images pass qemu-img check and match a reference with qemu-img compare", async () => {
  await using dir = await tempDir();
  for (const cs of [4096, 65536, 1 << 21]) {
    const img = `${dir.path}/v${cs}.qcow2`;
    const ref = `${dir.path}/ref${cs}.raw`;
    const size = 6 * MiB + 512;
    const model = new Uint8Array(size);
    const d = createImage(img, { size, clusterSize: cs });
    const writes: Array<[number, number]> = [[0, 100], [4000, 70000], [size - 9000, 9000], [
      2 * MiB - 1,
      3 * MiB,
    ]];
    for (const [i, [off, len]] of writes.entries()) {
      const p = pattern(len, i + cs);
      await d.write(off, p);
      model.set(p, off);
    }
    await d.discard(MiB, 2 * MiB);
    model.fill(0, MiB, 3 * MiB);
    await d.close();
    await Deno.writeFile(ref, model);
    await assertQemuCheck(img);
    assert.equal(checkImage(img).errors.length, 0);
    assert.match(await qemuImg("compare", "-f", "qcow2", "-F", "raw", img, ref), /identical/);
  }
});

Deno.test("qemu-img info --backing-chain shows a chain vmkit created, with relative and absolute names", async () => {
  await using dir = await tempDir();
  createImage(`${dir.path}/base.raw`, { size: 4 * MiB, format: "raw" }).closeSync();
  createImage(`${dir.path}/mid.qcow2`, { backingFile: "base.raw" }).closeSync();
  createImage(`${dir.path}/top.qcow2`, { backingFile: `${dir.path}/mid.qcow2`, clusterSize: 4096 })
    .closeSync();
  const out = JSON.parse(
    await qemuImg("info", "--backing-chain", "--output=json", `${dir.path}/top.qcow2`),
  ) as Array<
    { filename: string; format: string; "backing-filename"?: string; "virtual-size": number }
  >;
  assert.deepEqual(out.map((l) => l.format), ["qcow2", "qcow2", "raw"]);
  assert.equal(out[0]?.["backing-filename"], `${dir.path}/mid.qcow2`);
  assert.equal(out[1]?.["backing-filename"], "base.raw");
  assert.ok(out.every((l) => l["virtual-size"] === 4 * MiB));
});

Deno.test("a backing chain qemu-img builds (relative and absolute names, no format extension) reads like qemu-img convert", async () => {
  await using dir = await tempDir();
  const base = `${dir.path}/base.raw`;
  await Deno.writeFile(base, pattern(3 * MiB, 5));
  await qemuImg(
    "create",
    "-q",
    "-f",
    "qcow2",
    "-b",
    "base.raw",
    "-F",
    "raw",
    `${dir.path}/l1.qcow2`,
    "4M",
  );
  await qemuIo(`${dir.path}/l1.qcow2`, "qcow2", "write -P 1 64k 300k", "write -z 1M 128k");
  await Deno.mkdir(`${dir.path}/sub`);
  await qemuImg(
    "create",
    "-q",
    "-f",
    "qcow2",
    "-o",
    "cluster_size=4096",
    "-b",
    `${dir.path}/l1.qcow2`,
    "-F",
    "qcow2",
    `${dir.path}/sub/l2.qcow2`,
    "5M",
  );
  await qemuIo(
    `${dir.path}/sub/l2.qcow2`,
    "qcow2",
    "write -P 2 100k 10k",
    "discard 1M 64k",
    "write -P 3 4500k 100k",
  );
  // an image whose header has no backing-format extension (format is probed)
  Qcow2Image.create(`${dir.path}/sub/l3.qcow2`, {
    size: 5 * MiB,
    backingFile: "l2.qcow2",
    backingFormat: "qcow2",
  });
  await dropBackingFormat(`${dir.path}/sub/l3.qcow2`);
  const want = await qemuRaw(dir.path, `${dir.path}/sub/l3.qcow2`);
  assertBytes(await readAll(`${dir.path}/sub/l3.qcow2`), want, "3-deep qemu chain");
});

Deno.test("compressed clusters written by qemu-img convert -c read correctly, and writes over them copy them out", async () => {
  await using dir = await tempDir();
  const raw = `${dir.path}/src.raw`;
  const data = new Uint8Array(2 * MiB);
  for (let i = 0; i < data.length; i++) data[i] = (i >> 9) & 0xff; // compressible
  await Deno.writeFile(raw, data);
  const img = `${dir.path}/c.qcow2`;
  await qemuImg("convert", "-c", "-f", "raw", "-O", "qcow2", raw, img);
  assertBytes(await readAll(img), data, "compressed image");
  const d = openImage(img);
  const p = pattern(1000, 9);
  await d.write(70000, p);
  await d.discard(1 << 20, 65536);
  await d.close();
  data.set(p, 70000);
  data.fill(0, 1 << 20, (1 << 20) + 65536);
  assertBytes(await readAll(img), data, "after writes over compressed clusters");
  await assertQemuCheck(img);
});

for (const bits of [1, 8, 64]) {
  Deno.test(`vmkit writes into a qemu-img image with ${bits}-bit refcounts and qemu-img check stays clean`, async () => {
    await using dir = await tempDir();
    const img = `${dir.path}/r.qcow2`;
    await qemuImg(
      "create",
      "-q",
      "-f",
      "qcow2",
      "-o",
      `refcount_bits=${bits},cluster_size=4096`,
      img,
      "4M",
    );
    const d = openImage(img);
    const p = pattern(300000, bits);
    await d.write(5000, p);
    await d.discard(100000, 50000);
    await d.close();
    await assertQemuCheck(img);
    const want = new Uint8Array(4 * MiB);
    want.set(p, 5000);
    want.fill(0, 100000, 150000);
    assertBytes(await readAll(img), want, `${bits}-bit refcounts`);
  });
}

Deno.test("qcow2 version 2 images open read-only and refuse writable opens with a fix", async () => {
  await using dir = await tempDir();
  const img = `${dir.path}/v2.qcow2`;
  await qemuImg("create", "-q", "-f", "qcow2", "-o", "compat=0.10", img, "1M");
  await qemuIo(img, "qcow2", "write -P 0x42 4096 8192");
  const want = new Uint8Array(1 << 20);
  want.fill(0x42, 4096, 4096 + 8192);
  assertBytes(await readAll(img), want, "v2 image");
  assert.throws(
    () => Qcow2Image.open(img),
    (e: unknown) => e instanceof UnsupportedFeatureError && /amend -o compat=1.1/.test(e.message),
  );
});

Deno.test("growing an image past its L1 table keeps data and passes qemu-img check", async () => {
  await using dir = await tempDir();
  const img = `${dir.path}/g.qcow2`;
  const d = createImage(img, { size: MiB, clusterSize: 4096 }) as Qcow2Image;
  const p = pattern(9000, 1);
  d.writeSync(1000, p);
  d.grow(64 * MiB);
  const q = pattern(5000, 2);
  d.writeSync(60 * MiB, q);
  d.closeSync();
  await assertQemuCheck(img);
  const info = JSON.parse(await qemuImg("info", "--output=json", img)) as {
    "virtual-size": number;
  };
  assert.equal(info["virtual-size"], 64 * MiB);
  const got = await readAll(img);
  assertBytes(got.subarray(1000, 10000), p, "data before the grow");
  assertBytes(got.subarray(60 * MiB, 60 * MiB + 5000), q, "data after the grow");
});

Deno.test("an image needing more refcount blocks than its table holds grows the refcount table", async () => {
  await using dir = await tempDir();
  const img = `${dir.path}/rt.qcow2`;
  // 512 B clusters: one refcount block covers 256 clusters, a 1-cluster table 64 blocks.
  const size = 16 * MiB;
  const d = createImage(img, { size, clusterSize: 512 });
  const chunk = pattern(256 * 1024, 3);
  for (let off = 0; off < 12 * MiB; off += chunk.length) await d.write(off, chunk);
  await d.close();
  await assertQemuCheck(img);
  const got = await readAll(img);
  for (let off = 0; off < 12 * MiB; off += chunk.length) {
    assertBytes(got.subarray(off, off + chunk.length), chunk, `chunk at ${off}`);
  }
});
