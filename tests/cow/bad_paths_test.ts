/**
 * Bad paths and hostile sizes get one line on stderr and a non-zero exit,
 * never a stack trace, a hang or unbounded memory (issue 11.10, disk parts).
 */
import assert from "node:assert/strict";
import { openImage } from "../../cow/chain.ts";
import { checkImage } from "../../cow/check.ts";
import { CowError } from "../../cow/errors.ts";
import { imageInfo } from "../../cow/info.ts";
import { Qcow2Image } from "../../cow/qcow2.ts";
import { buildHeader } from "../../cow/qcow2_format.ts";
import { pattern, qemuImg, tempDir, type ToolResult } from "./helpers.ts";

const MAIN = new URL("../../cli/main.ts", import.meta.url).pathname;
const TiB = 2 ** 40;

/** Runs `vmkit disk ARGS` (through bash, so names may hold any bytes), killed after 30 s. */
async function diskSh(cwd: string, args: string): Promise<ToolResult & { timedOut: boolean }> {
  const child = new Deno.Command("bash", {
    args: ["-c", `exec "$0" run -A "$1" disk ${args}`, Deno.execPath(), MAIN],
    cwd,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    child.kill("SIGKILL");
  }, 30_000);
  const o = await child.output();
  clearTimeout(timer);
  const dec = new TextDecoder();
  return { code: o.code, stdout: dec.decode(o.stdout), stderr: dec.decode(o.stderr), timedOut };
}

/** Asserts a clean refusal: no hang, non-zero exit, exactly one line on stderr, no stack. */
function assertOneLineError(r: ToolResult & { timedOut: boolean }, what: string, re?: RegExp) {
  assert.ok(!r.timedOut, `${what}: hung (killed after 30 s)`);
  assert.notEqual(r.code, 0, `${what}: exited 0: ${r.stdout}`);
  const lines = r.stderr.trimEnd().split("\n");
  assert.equal(lines.length, 1, `${what}: ${lines.length} lines on stderr:\n${r.stderr}`);
  assert.doesNotMatch(r.stderr, /^\s+at |Uncaught|panicked/m, `${what}: ${r.stderr}`);
  if (re) assert.match(r.stderr, re, what);
}

Deno.test("a directory, a FIFO and a device file where an image is expected each get one line and a non-zero exit", async () => {
  await using dir = await tempDir();
  const d = dir.path;
  await Deno.mkdir(`${d}/folder`);
  const mk = await new Deno.Command("mkfifo", { args: [`${d}/pipe`] }).output();
  assert.equal(mk.code, 0);
  await qemuImg("create", "-q", "-f", "qcow2", `${d}/ok.qcow2`, "1M");
  const bad = [
    ["folder", /directory/],
    ["pipe", /FIFO|not a regular file/],
    ["/dev/zero", /character device|not a regular file/],
  ] as const;
  for (const [name, re] of bad) {
    for (const cmd of ["info", "check", "commit", "stream"]) {
      assertOneLineError(await diskSh(d, `${cmd} '${name}'`), `disk ${cmd} ${name}`, re);
    }
    assertOneLineError(await diskSh(d, `copy '${name}' out.qcow2`), `disk copy ${name} out`, re);
    assertOneLineError(await diskSh(d, `copy ok.qcow2 '${name}'`), `disk copy ok ${name}`, re);
    assertOneLineError(
      await diskSh(d, `create '${name}' --size 1M`),
      `disk create ${name}`,
      re,
    );
    assertOneLineError(
      await diskSh(d, `create new.qcow2 --backing '${name}'`),
      `disk create --backing ${name}`,
      re,
    );
  }
  // The FIFO was neither opened for good nor replaced.
  assert.ok((await Deno.lstat(`${d}/pipe`)).isFifo);
});

Deno.test("non-UTF-8 and NUL-bearing names, on the command line and in a backing file header, are refused cleanly", async () => {
  await using dir = await tempDir();
  const d = dir.path;
  // A real file whose name is not UTF-8.
  const mk = await new Deno.Command("bash", {
    args: ["-c", `qemu-img create -q -f qcow2 "$(printf '\\xff\\xfe.qcow2')" 1M`],
    cwd: d,
  }).output();
  assert.equal(mk.code, 0);
  assertOneLineError(
    await diskSh(d, `info "$(printf '\\xff\\xfe.qcow2')"`),
    "disk info <non-UTF-8 name>",
  );
  assert.throws(() => openImage(`${d}/a\0b.qcow2`), (e: unknown) => {
    return e instanceof CowError && /NUL/.test(e.message);
  });
  // A backing name with a NUL byte must not open the file named by its prefix.
  await Deno.writeFile(`${d}/base`, pattern(1 << 20, 1));
  for (
    const [name, bytes, re] of [
      ["nul", new TextEncoder().encode("base\0.raw"), /NUL/],
      ["utf8", new Uint8Array([0x62, 0x61, 0x73, 0x65, 0xff]), /UTF-8/],
    ] as const
  ) {
    const p = `${d}/${name}.qcow2`;
    Qcow2Image.create(p, { size: 1 << 20 });
    const head = buildHeader({
      clusterBits: 16,
      size: 1 << 20,
      l1Size: 1,
      l1TableOffset: 2 * 65536,
      refcountTableOffset: 65536,
      refcountTableClusters: 1,
      refcountOrder: 4,
      backingFile: "x".repeat(bytes.length),
      backingFormat: "raw",
    });
    const at = Number(new DataView(head.buffer).getBigUint64(8, false));
    head.set(bytes, at);
    const f = await Deno.open(p, { write: true });
    await f.write(head.subarray(0, 4096));
    f.close();
    assert.throws(() => openImage(p), (e: unknown) => e instanceof CowError && re.test(e.message));
    assertOneLineError(await diskSh(d, `info ${name}.qcow2`), `disk info ${name}.qcow2`, re);
  }
});

Deno.test("a 5000-deep backing chain is refused with one line, quickly", async () => {
  await using dir = await tempDir(true);
  const d = dir.path;
  Qcow2Image.create(`${d}/l0.qcow2`, { size: 1 << 20, clusterSize: 512 });
  for (let i = 1; i < 5000; i++) {
    Qcow2Image.create(`${d}/l${i}.qcow2`, {
      size: 1 << 20,
      clusterSize: 512,
      backingFile: `l${i - 1}.qcow2`,
      backingFormat: "qcow2",
    });
  }
  for (const cmd of ["info", "commit", "stream", "check"]) {
    const t0 = performance.now();
    const r = await diskSh(d, `${cmd} l4999.qcow2`);
    if (cmd === "check") {
      // check looks at one file only: the chain's depth does not matter.
      assert.equal(r.code, 0, r.stderr);
      continue;
    }
    assertOneLineError(r, `disk ${cmd} of a 5000-deep chain`, /deep/);
    assert.ok(performance.now() - t0 < 20_000, `disk ${cmd} took ${performance.now() - t0} ms`);
  }
});

Deno.test("disk info of a 1 PiB qcow2 image finishes well under a second without walking unallocated tables", async () => {
  await using dir = await tempDir();
  const p = `${dir.path}/huge.qcow2`;
  await qemuImg("create", "-q", "-f", "qcow2", p, "1P");
  const t0 = performance.now();
  const info = imageInfo(p);
  const ms = performance.now() - t0;
  assert.equal(info.chain[0]?.virtualSize, 2 ** 50);
  assert.equal(info.chain[0]?.allocatedBytes, 0);
  assert.ok(ms < 1000, `imageInfo of 1 PiB took ${ms.toFixed(0)} ms`);
  const r = await diskSh(dir.path, "info huge.qcow2");
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /virtual size: 1024\.0 TiB/);
});

Deno.test("disk check of an 8 TiB sparse file is quick and bounded: raw refused, sparse-tailed qcow2 checked", async () => {
  await using dir = await tempDir();
  const d = dir.path;
  const raw = await Deno.open(`${d}/big.raw`, { write: true, create: true });
  await raw.truncate(8 * TiB);
  raw.close();
  assertOneLineError(await diskSh(d, "check big.raw"), "disk check 8 TiB raw", /not a qcow2/);
  await qemuImg("create", "-q", "-f", "qcow2", `${d}/big.qcow2`, "16T");
  const f = await Deno.open(`${d}/big.qcow2`, { write: true });
  await f.truncate(8 * TiB);
  f.close();
  const rss0 = Deno.memoryUsage().rss;
  const t0 = performance.now();
  const r = checkImage(`${d}/big.qcow2`);
  const ms = performance.now() - t0;
  const grew = Deno.memoryUsage().rss - rss0;
  assert.deepEqual(r.errors, []);
  assert.ok(ms < 2000, `check of an 8 TiB file took ${ms.toFixed(0)} ms`);
  assert.ok(grew < 64 << 20, `check grew the RSS by ${(grew / 2 ** 20).toFixed(0)} MiB`);
});

Deno.test("negative and malformed numbers in disk options get a clear one-line usage error", async () => {
  await using dir = await tempDir();
  const d = dir.path;
  await qemuImg("create", "-q", "-f", "qcow2", `${d}/a.qcow2`, "1M");
  for (
    const args of [
      "create x.qcow2 --size -1",
      "create x.qcow2 --size=-1M",
      "create x.qcow2 --size 1M --cluster-size -4096",
      "copy a.qcow2 b.qcow2 --bandwidth -5",
      "commit a.qcow2 --bandwidth -1M",
      "stream a.qcow2 --bandwidth=-1",
    ]
  ) {
    const r = await diskSh(d, args);
    assertOneLineError(r, `disk ${args}`, /negative|must be|not a size|or more|in \d/);
    assert.equal(r.code, 64, `disk ${args}: exit ${r.code} (usage errors are 64)`);
    assert.doesNotMatch(r.stderr, /ambiguous/, `disk ${args}`);
  }
  await assert.rejects(Deno.stat(`${d}/x.qcow2`), Deno.errors.NotFound);
});
