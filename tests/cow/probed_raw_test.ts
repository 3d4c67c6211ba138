/**
 * A probed raw image never gains an image header (issue 11.6): writes to
 * sector 0 of a raw image whose format was probed are refused when they
 * would make it probe as another format, as QEMU's raw driver does; overlays
 * vmkit creates always record their backing format.
 */
import assert from "node:assert/strict";
import { createImage, openImage } from "../../cow/chain.ts";
import { createOverlay } from "../../cow/overlay.ts";
import { Qcow2Image } from "../../cow/qcow2.ts";
import { stream } from "../../cow/stream.ts";
import { disk, dropBackingFormat, pattern, qemuImg, run, tempDir } from "./helpers.ts";

const MiB = 1 << 20;

/** A qcow2 header (what a hostile guest writes to its disk) naming a host file as backing. */
async function hostileHeader(dir: string): Promise<Uint8Array> {
  const p = `${dir}/evil.qcow2`;
  await qemuImg("create", "-q", "-f", "qcow2", "-b", "/etc/hostname", "-F", "raw", p, "1M");
  return (await Deno.readFile(p)).slice(0, 4096);
}

async function backingFormatOf(path: string): Promise<string | undefined> {
  const info = JSON.parse(await qemuImg("info", "--output=json", path)) as Record<string, unknown>;
  return info["backing-filename-format"] as string | undefined;
}

Deno.test("a probed raw image refuses a write that would give sector 0 an image header; an explicit raw accepts it", async () => {
  await using dir = await tempDir();
  const base = `${dir.path}/base.raw`;
  await Deno.writeFile(base, pattern(MiB, 1));
  const header = await hostileHeader(dir.path);
  const probed = openImage(base);
  assert.throws(() => probed.writeSync(0, header), /probed.*raw|raw.*probed/);
  assert.throws(() => probed.writeSync(0, header.subarray(0, 512)), /probed/);
  // An ordinary boot sector, and a header-like write elsewhere, are fine.
  probed.writeSync(0, pattern(512, 2));
  probed.writeSync(4096, header);
  probed.closeSync();
  assert.equal((await Deno.readFile(base))[0], pattern(512, 2)[0]);
  // QEMU's own raw driver refuses the same write on a probed image.
  await Deno.writeFile(`${dir.path}/hdr.bin`, header.subarray(0, 512));
  const q = await run("qemu-io", "-c", `write -s ${dir.path}/hdr.bin 0 512`, base);
  assert.match(q.stdout + q.stderr, /Operation not permitted/);
  const explicit = openImage(base, { format: "raw" });
  explicit.writeSync(0, header);
  explicit.closeSync();
});

Deno.test("vmkit disk commit does not turn a probed raw base into a qcow2 image naming a host file", async () => {
  await using dir = await tempDir();
  const d = dir.path;
  await Deno.writeFile(`${d}/base.raw`, pattern(2 * MiB, 3));
  await qemuImg("create", "-q", "-f", "qcow2", "-b", "base.raw", "-F", "raw", `${d}/top.qcow2`);
  await dropBackingFormat(`${d}/top.qcow2`);
  assert.equal(await backingFormatOf(`${d}/top.qcow2`), undefined);
  // The guest writes a qcow2 header to its own disk.
  const top = openImage(`${d}/top.qcow2`);
  top.writeSync(0, await hostileHeader(d));
  top.closeSync();
  const before = await Deno.readFile(`${d}/base.raw`);
  const r = await disk(d, "commit", "top.qcow2");
  assert.equal(r.code, 1, `commit exited ${r.code}: ${r.stdout}${r.stderr}`);
  assert.match(r.stderr, /base\.raw.*probed/);
  assert.equal(r.stderr.trim().split("\n").length, 1, r.stderr);
  const after = await Deno.readFile(`${d}/base.raw`);
  assert.deepEqual(after.subarray(0, 4096), before.subarray(0, 4096));
  const info = JSON.parse(await qemuImg("info", "--output=json", `${d}/base.raw`)) as {
    format: string;
  };
  assert.equal(info.format, "raw");
});

Deno.test("overlays vmkit creates always record their backing format", async () => {
  await using dir = await tempDir();
  const d = dir.path;
  await Deno.writeFile(`${d}/base.raw`, pattern(MiB, 4));
  createImage(`${d}/a.qcow2`, { backingFile: "base.raw" }).closeSync();
  assert.equal(await backingFormatOf(`${d}/a.qcow2`), "raw");
  const r = await disk(d, "create", "b.qcow2", "--backing", "a.qcow2");
  assert.equal(r.code, 0, r.stderr);
  assert.equal(await backingFormatOf(`${d}/b.qcow2`), "qcow2");
  const parent = openImage(`${d}/base.raw`, { format: "raw" });
  createOverlay(parent, `${d}/c.qcow2`).closeSync();
  parent.closeSync();
  assert.equal(await backingFormatOf(`${d}/c.qcow2`), "raw");
  await stream(`${d}/b.qcow2`, { base: `${d}/base.raw` });
  assert.equal(await backingFormatOf(`${d}/b.qcow2`), "raw");
  assert.throws(
    () => Qcow2Image.create(`${d}/x.qcow2`, { size: MiB, backingFile: "base.raw" }),
    /backing format/,
  );
});
