import assert from "node:assert/strict";
import { createImage, openImage } from "../../cow/chain.ts";
import type { DiskImage } from "../../cow/disk_image.ts";
import {
  assertBytes,
  assertQemuCheck,
  pattern,
  prng,
  qemuImg,
  qemuIo,
  randInt,
  tempDir,
} from "./helpers.ts";

const KiB = 1024;
const MiB = 1 << 20;

/**
 * raw base (2 MiB) <- mid.qcow2 written by qemu-io (data, zero clusters,
 * discards) <- top.qcow2 created and driven by vmkit (3 MiB: reads past the
 * parents' end are zeros). Random write/read/discard/flush/reopen against a
 * plain in-memory model.
 */
async function randomChain(seed: number, clusterSize: number, ops: number): Promise<void> {
  await using dir = await tempDir();
  const base = `${dir.path}/base.raw`;
  await Deno.writeFile(base, pattern(2 * MiB, seed));
  await qemuImg(
    "create",
    "-q",
    "-f",
    "qcow2",
    "-o",
    "cluster_size=65536",
    "-b",
    "base.raw",
    "-F",
    "raw",
    `${dir.path}/mid.qcow2`,
    "2M",
  );
  await qemuIo(
    `${dir.path}/mid.qcow2`,
    "qcow2",
    "write -P 0x3c 100k 200k",
    "write -z 512k 256k",
    "discard 1024k 128k",
    "write -P 0x71 1500k 3k",
  );
  const midRaw = `${dir.path}/mid.raw`;
  await qemuImg("convert", "-f", "qcow2", "-O", "raw", `${dir.path}/mid.qcow2`, midRaw);
  const size = 3 * MiB;
  const model = new Uint8Array(size);
  model.set(await Deno.readFile(midRaw));
  const top = `${dir.path}/top.qcow2`;
  createImage(top, { backingFile: "mid.qcow2", size, clusterSize }).closeSync();

  const rand = prng(seed);
  let img: DiskImage = openImage(top);
  try {
    for (let i = 0; i < ops; i++) {
      const r = rand();
      const maxLen = Math.min(size, clusterSize * 3);
      const len = 1 + randInt(rand, maxLen);
      const off = randInt(rand, size - len + 1);
      const what = `seed ${seed}, cluster ${clusterSize}, op ${i}`;
      if (r < 0.4) {
        const d = pattern(len, seed * 1000 + i);
        await img.write(off, d);
        model.set(d, off);
      } else if (r < 0.75) {
        const got = new Uint8Array(len);
        await img.read(off, got);
        assertBytes(got, model.subarray(off, off + len), `read ${off}+${len} (${what})`);
      } else if (r < 0.88) {
        await img.discard(off, len);
        model.fill(0, off, off + len);
      } else if (r < 0.96) {
        await img.flush();
      } else {
        await img.close();
        img = openImage(top);
      }
    }
    const all = new Uint8Array(size);
    await img.read(0, all);
    assertBytes(all, model, `whole image (seed ${seed}, cluster ${clusterSize})`);
  } finally {
    await img.close();
  }
  await assertQemuCheck(top);
  const ref = `${dir.path}/ref.raw`;
  await Deno.writeFile(ref, model);
  const cmp = await qemuImg("compare", "-f", "qcow2", "-F", "raw", top, ref);
  assert.match(cmp, /identical/, `seed ${seed}: ${cmp}`);
}

for (const [seed, cs] of [[1, 4 * KiB], [2, 64 * KiB], [3, 512 * KiB], [4, 2 * MiB]] as const) {
  Deno.test(`random write/read/discard/flush over a 3-level chain matches a memory model (seed ${seed}, ${cs / KiB} KiB clusters)`, async () => {
    try {
      await randomChain(seed, cs, 400);
    } catch (err) {
      console.error(`random chain test failed with seed ${seed}, cluster size ${cs}`);
      throw err;
    }
  });
}
