import assert from "node:assert/strict";
import { assertQemuCheck, disk, pattern, qemuImg, qemuIo, run, tempDir } from "./helpers.ts";

Deno.test("vmkit disk create, info --json, check, copy, commit and stream work on a chain", async () => {
  await using dir = await tempDir();
  const d = dir.path;
  await Deno.writeFile(`${d}/base.raw`, pattern(2 << 20, 1));
  let r = await disk(d, "create", "mid.qcow2", "--backing", "base.raw", "--backing-format", "raw");
  assert.equal(r.code, 0, r.stderr);
  r = await disk(
    d,
    "create",
    "top.qcow2",
    "--backing",
    "mid.qcow2",
    "--cluster-size",
    "4K",
    "--size",
    "3M",
  );
  assert.equal(r.code, 0, r.stderr);
  await qemuIo(`${d}/mid.qcow2`, "qcow2", "write -P 0x11 0 300k");
  await qemuIo(`${d}/top.qcow2`, "qcow2", "write -P 0x22 1M 64k", "write -P 0x33 2500k 10k");
  await qemuImg("convert", "-O", "raw", `${d}/top.qcow2`, `${d}/want.raw`);

  r = await disk(d, "info", "top.qcow2", "--backing-chain", "--output", "json");
  assert.equal(r.code, 0, r.stderr);
  const info = JSON.parse(r.stdout) as Array<
    Record<"format" | "virtual-size" | "allocated-bytes" | "backing-filename", unknown>
  >;
  assert.deepEqual(info.map((l) => l.format), ["qcow2", "qcow2", "raw"]);
  assert.equal(info[0]?.["virtual-size"], 3 << 20);
  assert.equal(info[0]?.["allocated-bytes"], 64 * 1024 + 12 * 1024);
  assert.equal(info[0]?.["backing-filename"], "mid.qcow2");
  r = await disk(d, "info", "top.qcow2");
  assert.match(r.stdout, /backing file: mid\.qcow2/);

  r = await disk(d, "check", "top.qcow2");
  assert.equal(r.code, 0, r.stdout);
  assert.match(r.stdout, /No errors were found/);

  r = await disk(d, "copy", "-p", "top.qcow2", "copy.qcow2");
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stderr, /copy \[#+\] 100%/);
  assert.match(
    await qemuImg("compare", "-F", "raw", `${d}/copy.qcow2`, `${d}/want.raw`),
    /identical/,
  );

  r = await disk(d, "commit", "top.qcow2", "--progress");
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stderr, /commit \[#+\] 100%/);
  await assertQemuCheck(`${d}/mid.qcow2`);
  assert.match(
    await qemuImg("compare", "-F", "raw", `${d}/mid.qcow2`, `${d}/want.raw`),
    /identical/,
  );

  r = await disk(d, "stream", "top.qcow2");
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /backing file now \(none\)/);
  assert.match(
    await qemuImg("compare", "-F", "raw", `${d}/top.qcow2`, `${d}/want.raw`),
    /identical/,
  );
  const q = await run("qemu-img", "info", `${d}/top.qcow2`);
  assert.doesNotMatch(q.stdout, /backing file/);
});

Deno.test("vmkit disk gives clear errors and non-zero exits on bad input", async () => {
  await using dir = await tempDir();
  const d = dir.path;
  await Deno.writeTextFile(`${d}/notes.txt`, "not an image at all, just some words ".repeat(3));
  let r = await disk(d, "check", "notes.txt");
  assert.equal(r.code, 63);
  assert.match(r.stderr, /not a qcow2 image/);

  r = await disk(d, "create", "a.qcow2", "--size", "1M");
  assert.equal(r.code, 0, r.stderr);
  r = await disk(d, "create", "b.qcow2", "--backing", "a.qcow2");
  assert.equal(r.code, 0, r.stderr);
  await qemuImg("rebase", "-u", "-b", "b.qcow2", "-F", "qcow2", `${d}/a.qcow2`);
  r = await disk(d, "info", "b.qcow2");
  assert.equal(r.code, 1);
  assert.match(r.stderr, /backing chain loop/);

  r = await disk(d, "create", "c.qcow2", "--backing", "missing.qcow2");
  assert.equal(r.code, 1);
  assert.match(r.stderr, /backing file 'missing\.qcow2'.*does not exist/);

  r = await disk(d, "create", "x.qcow2", "--size", "2M");
  assert.equal(r.code, 0, r.stderr);
  r = await disk(d, "create", "y.qcow2", "--backing", "x.qcow2", "--size", "1M");
  assert.equal(r.code, 1);
  assert.match(r.stderr, /size mismatch/);

  r = await disk(d, "create", "z.qcow2");
  assert.equal(r.code, 64);
  assert.match(r.stderr, /--size BYTES or --backing PARENT/);
  r = await disk(d, "create", "z.qcow2", "--size", "lots");
  assert.equal(r.code, 64);
  r = await disk(d, "commit", "x.qcow2");
  assert.equal(r.code, 1);
  assert.match(r.stderr, /no backing file/);
  r = await disk(d, "frobnicate");
  assert.equal(r.code, 64);
  r = await disk(d, "--help");
  assert.equal(r.code, 0);
  assert.match(r.stdout, /create FILE/);
});
