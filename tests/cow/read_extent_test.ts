import assert from "node:assert/strict";
import { openImage } from "../../cow/chain.ts";
import {
  type DiskImage,
  EXTENT_BACKING,
  EXTENT_DATA,
  EXTENT_OTHER,
  EXTENT_ZERO,
  ReadExtent,
} from "../../cow/disk_image.ts";
import { Qcow2Image } from "../../cow/qcow2.ts";
import { RawImage } from "../../cow/raw.ts";
import { assertBytes, prng, qemuImg, qemuIo, tempDir } from "./helpers.ts";

const KiB = 1024;

/** A raw base of 2 MiB under a 4 MiB qcow2 overlay with every kind of cluster qemu-io makes. */
async function chain(dir: string): Promise<string> {
  const base = `${dir}/base.raw`;
  const top = `${dir}/top.qcow2`;
  await qemuImg("create", "-q", "-f", "raw", base, "2M");
  await qemuIo(base, "raw", "write -P 0x11 0 2M");
  await qemuImg("create", "-q", "-f", "qcow2", "-b", base, "-F", "raw", top, "4M");
  await qemuIo(
    top,
    "qcow2",
    "write -P 0x22 64k 64k", // allocated
    "write -z 256k 64k", // zero cluster
    "write -c -P 0x33 512k 64k", // compressed
    "write -P 0x44 2M 64k", // allocated past the end of the base
    "write -P 0x55 1020k 8k", // two clusters, copy-on-write from the base, contiguous on the host
  );
  return top;
}

/**
 * What a caller doing its own I/O gets for `[off, off + len)`: the bytes from
 * the data run the chain resolves to (read from the file by path), zeros, or
 * null when the range needs the image's own read.
 */
function viaExtents(top: DiskImage, off: number, len: number): Uint8Array | null {
  const ext = new ReadExtent();
  let img: DiskImage | null = top;
  for (;;) {
    if (!(img instanceof Qcow2Image) && !(img instanceof RawImage)) return null;
    img.readExtent(off, len, ext);
    assert.ok(ext.length >= 1 && ext.length <= len, `run length ${ext.length} of ${len}`);
    if (ext.length < len) return null;
    if (ext.kind === EXTENT_DATA) {
      assert.ok(ext.fd >= 0);
      const out = new Uint8Array(len);
      using f = Deno.openSync(img.path);
      f.seekSync(ext.hostOffset, Deno.SeekMode.Start);
      let got = 0;
      while (got < len) {
        const n = f.readSync(out.subarray(got));
        if (n === null) break;
        got += n;
      }
      return out;
    }
    if (ext.kind === EXTENT_ZERO) return new Uint8Array(len);
    if (ext.kind === EXTENT_OTHER) return null;
    assert.equal(ext.kind, EXTENT_BACKING);
    const b: DiskImage | null = img.backing;
    if (b === null || off >= b.size) return new Uint8Array(len);
    if (off + len > b.size) return null;
    img = b;
  }
}

Deno.test("read extents of a qcow2 chain lead to the same bytes readSync reads, run by run", async () => {
  await using dir = await tempDir();
  const top = openImage(await chain(dir.path), { readOnly: true });
  try {
    const seed = 0x5eed_0001;
    const rand = prng(seed);
    const probes: [number, number][] = [
      [64 * KiB, 4 * KiB],
      [256 * KiB, 64 * KiB],
      [512 * KiB, 4 * KiB],
      [1020 * KiB, 8 * KiB],
      [960 * KiB, 128 * KiB], // two allocated clusters, contiguous on the host
      [2 * 1024 * KiB - 2 * KiB, 4 * KiB], // straddles the end of the base
      [3 * 1024 * KiB, 4 * KiB], // unallocated past the base
    ];
    for (let i = 0; i < 300; i++) {
      const len = (1 + Math.floor(rand() * 64)) * 512;
      probes.push([Math.floor(rand() * ((top.size - len) / 512)) * 512, len]);
    }
    const kinds = new Set<string>();
    for (const [off, len] of probes) {
      const want = new Uint8Array(len);
      top.readSync(off, want);
      const got = viaExtents(top, off, len);
      kinds.add(got === null ? "image read" : "own I/O");
      if (got !== null) assertBytes(got, want, `[${off}, +${len}) (seed ${seed})`);
    }
    assert.deepEqual([...kinds].sort(), ["image read", "own I/O"]);
    // Each kind, where it is.
    const ext = new ReadExtent();
    const img = top as Qcow2Image;
    img.readExtent(64 * KiB, 4 * KiB, ext);
    assert.equal(ext.kind, EXTENT_DATA);
    img.readExtent(256 * KiB, 4 * KiB, ext);
    assert.equal(ext.kind, EXTENT_ZERO);
    img.readExtent(512 * KiB, 4 * KiB, ext);
    assert.equal(ext.kind, EXTENT_OTHER);
    img.readExtent(0, 4 * KiB, ext);
    assert.equal(ext.kind, EXTENT_BACKING);
    img.readExtent(960 * KiB, 128 * KiB, ext);
    assert.deepEqual([ext.kind, ext.length], [EXTENT_DATA, 128 * KiB]);
    assert.throws(() => img.readExtent(top.size - 512, 1024, ext), /range|past|beyond|outside/i);
  } finally {
    await top.close();
  }
});
