/**
 * A resumed commit is correct (issue 11.7): writes made to the overlay after
 * a commit was killed and before it is resumed reach the parent.
 */
import assert from "node:assert/strict";
import { createImage, openImage } from "../../cow/chain.ts";
import { assertBytes, disk, pattern, qemuImg, qemuIo, run, spawnDisk, tempDir } from "./helpers.ts";

const MiB = 1 << 20;
const SIZE = 64 * MiB;
/** The commit saves its cursor every 16 chunks of 1 MiB. */
const SAVE_EVERY = 16 * MiB;

/** Starts a slow `vmkit disk commit` and kills it (SIGKILL) once its saved cursor passes `past`. */
async function killedCommit(dir: string, past: number): Promise<number> {
  const child = spawnDisk(dir, "commit", "top.qcow2", "--bandwidth", "16M");
  let cursor = 0;
  try {
    for (let i = 0; i < 600 && cursor < past; i++) {
      await new Promise((r) => setTimeout(r, 50));
      try {
        const s = JSON.parse(await Deno.readTextFile(`${dir}/top.qcow2.commit.json`)) as {
          cursor: number;
        };
        cursor = s.cursor;
      } catch (err) {
        if (!(err instanceof Deno.errors.NotFound) && !(err instanceof SyntaxError)) throw err;
      }
    }
  } finally {
    child.kill("SIGKILL");
    await child.output();
  }
  assert.ok(
    cursor >= past && cursor < SIZE,
    `the commit saved a cursor past ${past} and was killed before the end (got ${cursor})`,
  );
  return cursor;
}

async function chain(dir: string): Promise<void> {
  await Deno.writeFile(`${dir}/base.raw`, pattern(SIZE, 1));
  const top = createImage(`${dir}/top.qcow2`, { backingFile: "base.raw" });
  top.writeSync(0, pattern(SIZE, 2));
  top.closeSync();
}

Deno.test("writes made by qemu-io and vmkit to the overlay of a killed commit reach the parent when it resumes", async () => {
  await using dir = await tempDir();
  const d = dir.path;
  await chain(d);
  const cursor = await killedCommit(d, SAVE_EVERY);
  // Below the saved cursor: one write through qemu-io, one through vmkit.
  await qemuIo(`${d}/top.qcow2`, "qcow2", "write -P 0x77 1M 64k");
  const v = openImage(`${d}/top.qcow2`);
  v.writeSync(2 * MiB + 512, pattern(10000, 3));
  v.closeSync();
  await qemuImg("convert", "-O", "raw", `${d}/top.qcow2`, `${d}/want.raw`);
  const r = await disk(d, "commit", "top.qcow2");
  assert.equal(r.code, 0, r.stderr);
  assert.doesNotMatch(r.stdout, /resumed at/, `resumed past changed clusters (cursor ${cursor})`);
  assertBytes(
    await Deno.readFile(`${d}/base.raw`),
    await Deno.readFile(`${d}/want.raw`),
    "the parent after the resumed commit",
  );
});

Deno.test("a killed commit with no writes since resumes from its saved cursor, even after read-only opens", async () => {
  await using dir = await tempDir();
  const d = dir.path;
  await chain(d);
  const cursor = await killedCommit(d, SAVE_EVERY);
  await qemuImg("info", `${d}/top.qcow2`);
  const ro = await run("qemu-io", "-r", "-f", "qcow2", "-c", "read 0 64k", `${d}/top.qcow2`);
  assert.equal(ro.code, 0, ro.stderr);
  openImage(`${d}/top.qcow2`, { readOnly: true }).closeSync();
  await qemuImg("convert", "-O", "raw", `${d}/top.qcow2`, `${d}/want.raw`);
  const r = await disk(d, "commit", "top.qcow2");
  assert.equal(r.code, 0, r.stderr);
  const m = /resumed at (\d+)/.exec(r.stdout);
  assert.ok(m !== null, `the commit resumed: ${r.stdout}`);
  assert.ok(Number(m[1]) >= cursor, `resumed at ${m[1]}, saved cursor ${cursor}`);
  assertBytes(
    await Deno.readFile(`${d}/base.raw`),
    await Deno.readFile(`${d}/want.raw`),
    "the parent after the resumed commit",
  );
});
