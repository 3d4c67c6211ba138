/**
 * `disk copy` never destroys its source (issue 11.4): a destination that is
 * the source itself (same path, symlink, hard link) or any file of the
 * source's backing chain is refused before anything is opened for writing.
 */
import assert from "node:assert/strict";
import { createImage } from "../../cow/chain.ts";
import { copyParent } from "../../cow/copy_parent.ts";
import { disk, pattern, qemuImg, tempDir } from "./helpers.ts";

const MiB = 1 << 20;

async function digest(path: string): Promise<string> {
  const data = await Deno.readFile(path);
  const h = await crypto.subtle.digest("SHA-256", data);
  return Array.from(new Uint8Array(h), (b) => b.toString(16).padStart(2, "0")).join("");
}

Deno.test("vmkit disk copy onto its source (same path, ./path, symlink, hard link) is refused and the source is unchanged", async () => {
  await using dir = await tempDir();
  const d = dir.path;
  const a = createImage(`${d}/a.qcow2`, { size: 2 * MiB });
  a.writeSync(4096, pattern(MiB, 1));
  a.closeSync();
  await Deno.symlink(`${d}/a.qcow2`, `${d}/link.qcow2`);
  await Deno.link(`${d}/a.qcow2`, `${d}/hard.qcow2`);
  await Deno.mkdir(`${d}/sub`);
  const before = await digest(`${d}/a.qcow2`);
  for (const dst of ["a.qcow2", "./a.qcow2", "sub/../a.qcow2", "link.qcow2", "hard.qcow2"]) {
    for (const fmt of ["qcow2", "raw"]) {
      const r = await disk(d, "copy", "a.qcow2", dst, "--format", fmt);
      assert.equal(r.code, 1, `copy a.qcow2 ${dst}: ${r.stdout}${r.stderr}`);
      assert.match(r.stderr, /same file as the source/, `copy a.qcow2 ${dst}`);
      assert.equal(r.stderr.trim().split("\n").length, 1, r.stderr);
      assert.equal(await digest(`${d}/a.qcow2`), before, `a.qcow2 changed by copy onto ${dst}`);
    }
  }
  // The other way round: the source named through the link.
  const r = await disk(d, "copy", "link.qcow2", "a.qcow2");
  assert.equal(r.code, 1, r.stderr);
  assert.equal(await digest(`${d}/a.qcow2`), before);
  await qemuImg("check", `${d}/a.qcow2`);
});

Deno.test("vmkit disk copy onto any file of the source's backing chain is refused and the chain is unchanged", async () => {
  await using dir = await tempDir();
  const d = dir.path;
  await Deno.writeFile(`${d}/base.raw`, pattern(2 * MiB, 2));
  const mid = createImage(`${d}/mid.qcow2`, { backingFile: "base.raw" });
  mid.writeSync(0, pattern(65536, 3));
  mid.closeSync();
  const top = createImage(`${d}/top.qcow2`, { backingFile: "mid.qcow2" });
  top.writeSync(MiB, pattern(65536, 4));
  top.closeSync();
  await Deno.link(`${d}/base.raw`, `${d}/base-hard.raw`);
  const sums = {
    base: await digest(`${d}/base.raw`),
    mid: await digest(`${d}/mid.qcow2`),
    top: await digest(`${d}/top.qcow2`),
  };
  for (
    const [dst, fmt] of [
      ["base.raw", "raw"],
      ["base.raw", "qcow2"],
      ["base-hard.raw", "raw"],
      ["mid.qcow2", "qcow2"],
      [`${d}/mid.qcow2`, "raw"],
    ]
  ) {
    const r = await disk(d, "copy", "top.qcow2", dst as string, "--format", fmt as string);
    assert.equal(r.code, 1, `copy top.qcow2 ${dst}: ${r.stdout}${r.stderr}`);
    assert.match(r.stderr, /backing chain/, `copy top.qcow2 ${dst}`);
    assert.equal(await digest(`${d}/base.raw`), sums.base, `base.raw changed (dst ${dst})`);
    assert.equal(await digest(`${d}/mid.qcow2`), sums.mid, `mid.qcow2 changed (dst ${dst})`);
    assert.equal(await digest(`${d}/top.qcow2`), sums.top, `top.qcow2 changed (dst ${dst})`);
  }
  // The library refuses the same way, for a path and for an open image.
  await assert.rejects(copyParent(`${d}/top.qcow2`, `${d}/base.raw`), /backing chain/);
  assert.equal(await digest(`${d}/base.raw`), sums.base);
  // A real copy beside the chain still works.
  const r = await disk(d, "copy", "top.qcow2", "flat.qcow2");
  assert.equal(r.code, 0, r.stderr);
  assert.match(
    await qemuImg("compare", `${d}/top.qcow2`, `${d}/flat.qcow2`),
    /identical/,
  );
});
