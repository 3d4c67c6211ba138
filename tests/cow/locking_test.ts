/**
 * Image locking as QEMU does it (issue 11.1): vmkit and a running qemu-io
 * refuse to write one image at once, in both directions; read-only opens
 * and force-share behave as in QEMU; vmkit's own openers exclude each other.
 */
import assert from "node:assert/strict";
import { createImage, openImage } from "../../cow/chain.ts";
import {
  assertQemuCheck,
  disk,
  pattern,
  qemuImg,
  QemuIoSession,
  run,
  spawnDisk,
  tempDir,
} from "./helpers.ts";

const MiB = 1 << 20;

/** `size` bytes of the image read through qemu-img convert (no locks taken: -U). */
async function qemuRead(dir: string, image: string): Promise<Uint8Array> {
  const out = `${dir}/read_${crypto.randomUUID()}.raw`;
  await qemuImg("convert", "-U", "-O", "raw", image, out);
  const data = await Deno.readFile(out);
  await Deno.remove(out);
  return data;
}

function assertFilled(data: Uint8Array, from: number, to: number, byte: number, what: string) {
  for (let i = from; i < to; i++) {
    if (data[i] !== byte) assert.fail(`${what}: byte ${i} is ${data[i]}, want ${byte}`);
  }
}

Deno.test("vmkit disk commit into a parent that qemu-io is writing is refused, naming qemu-io, and touches nothing", async () => {
  await using dir = await tempDir();
  const d = dir.path;
  await qemuImg("create", "-q", "-f", "qcow2", `${d}/parent.qcow2`, "32M");
  await qemuImg(
    "create",
    "-q",
    "-f",
    "qcow2",
    "-b",
    "parent.qcow2",
    "-F",
    "qcow2",
    `${d}/top.qcow2`,
  );
  const top = openImage(`${d}/top.qcow2`);
  top.writeSync(0, new Uint8Array(31 * MiB).fill(0x22));
  top.closeSync();
  await using q = await QemuIoSession.open(`${d}/parent.qcow2`, "-f", "qcow2");
  await q.cmd("write -P 0x11 0 13M");
  const r = await disk(d, "commit", "top.qcow2");
  assert.notEqual(r.code, 0, `commit exited 0 while qemu-io wrote the parent: ${r.stdout}`);
  const lines = r.stderr.trim().split("\n");
  assert.equal(lines.length, 1, `one line on stderr, got:\n${r.stderr}`);
  assert.match(r.stderr, /Failed to get (shared )?"write" lock/);
  assert.match(r.stderr, new RegExp(`qemu-io.*pid ${q.pid}|pid ${q.pid}.*qemu-io`));
  await q.cmd("write -P 0x33 18M 13M");
  await q.cmd("flush");
  await q.close();
  const data = await qemuRead(d, `${d}/parent.qcow2`);
  assertFilled(data, 0, 13 * MiB, 0x11, "parent after the refused commit");
  assertFilled(data, 18 * MiB, 31 * MiB, 0x33, "parent after the refused commit");
  await assertQemuCheck(`${d}/parent.qcow2`);
  await assertQemuCheck(`${d}/top.qcow2`);
  assert.ok(
    !(await Deno.stat(`${d}/top.qcow2.commit.json`).then(() => true, () => false)),
    "no commit state was written",
  );
});

for (const format of ["qcow2", "raw"] as const) {
  Deno.test(`vmkit refuses to open a ${format} image qemu-io is writing, and opens it with forceShare read-only`, async () => {
    await using dir = await tempDir();
    const img = `${dir.path}/img.${format}`;
    await qemuImg("create", "-q", "-f", format, img, "4M");
    await using q = await QemuIoSession.open(img, "-f", format);
    await q.cmd("write -P 0x5a 0 64k");
    await q.cmd("flush");
    assert.throws(
      () => openImage(img, { format }),
      new RegExp(`Failed to get (shared )?"write" lock.*qemu-io.*pid ${q.pid}`),
    );
    // A plain reader needs the image not to change under it, like qemu-img info.
    assert.throws(() => openImage(img, { format, readOnly: true }), /shared "write" lock/);
    const ro = openImage(img, { format, readOnly: true, forceShare: true });
    const buf = new Uint8Array(4096);
    ro.readSync(0, buf);
    assert.equal(buf[100], 0x5a);
    ro.closeSync();
    assert.throws(() => openImage(img, { format, forceShare: true }), /force-?share.*read-only/i);
  });

  Deno.test(`qemu-io cannot write a ${format} image vmkit has open for writing, and can read it with -U`, async () => {
    await using dir = await tempDir();
    const img = `${dir.path}/img.${format}`;
    const v = createImage(img, { size: 4 * MiB, format });
    v.writeSync(0, new Uint8Array(65536).fill(0x42));
    v.flushSync();
    try {
      let r = await run("qemu-io", "-f", format, "-c", "write -P 1 0 4k", img);
      assert.notEqual(r.code, 0, r.stdout);
      assert.match(r.stderr, /Failed to get "write" lock/);
      r = await run("qemu-img", "info", "-f", format, img);
      if (format === "qcow2") {
        // qemu-img info needs a qcow2 image's metadata to hold still; a raw one it reads anyway.
        assert.notEqual(r.code, 0, r.stdout);
        assert.match(r.stderr, /Failed to get shared "write" lock/);
      } else {
        assert.equal(r.code, 0, r.stderr);
      }
      r = await run("qemu-io", "-r", "-U", "-f", format, "-c", "read -P 0x42 0 64k", img);
      assert.equal(r.code, 0, r.stderr);
      assert.doesNotMatch(r.stdout, /fail/i);
    } finally {
      v.closeSync();
    }
    // Closing releases every lock.
    await qemuImg("info", img);
    const r = await run("qemu-io", "-f", format, "-c", "write -P 1 0 4k", img);
    assert.equal(r.code, 0, r.stderr);
  });
}

Deno.test("a backing file vmkit reads through an open overlay cannot be written by qemu-io, only read", async () => {
  await using dir = await tempDir();
  const base = `${dir.path}/base.raw`;
  await Deno.writeFile(base, pattern(MiB, 3));
  const top = createImage(`${dir.path}/top.qcow2`, { backingFile: "base.raw" });
  try {
    let r = await run("qemu-io", "-f", "raw", "-c", "write 0 4k", base);
    assert.notEqual(r.code, 0, r.stdout);
    assert.match(r.stderr, /Failed to get "write" lock/);
    r = await run("qemu-io", "-r", "-f", "raw", "-c", "read 0 4k", base);
    assert.equal(r.code, 0, r.stderr);
  } finally {
    top.closeSync();
  }
});

Deno.test("vmkit's own openers exclude each other: two writers, and a writer and a reader", async () => {
  await using dir = await tempDir();
  const p = `${dir.path}/a.qcow2`;
  const w = createImage(p, { size: MiB });
  try {
    assert.throws(
      () => openImage(p),
      new RegExp(`Failed to get (shared )?"write" lock.*pid ${Deno.pid}`),
    );
    assert.throws(() => openImage(p, { readOnly: true }), /shared "write" lock/);
    openImage(p, { readOnly: true, forceShare: true }).closeSync();
  } finally {
    w.closeSync();
  }
  const r1 = openImage(p, { readOnly: true });
  const r2 = openImage(p, { readOnly: true });
  assert.throws(() => openImage(p), /Failed to get "write" lock/);
  r1.closeSync();
  r2.closeSync();
  openImage(p).closeSync();
});

Deno.test("vmkit disk commit, stream, copy and info refuse an image another vmkit process is writing", async () => {
  await using dir = await tempDir();
  const d = dir.path;
  createImage(`${d}/base.qcow2`, { size: 8 * MiB }).closeSync();
  const top = createImage(`${d}/top.qcow2`, { backingFile: "base.qcow2" });
  top.writeSync(0, pattern(MiB, 9));
  top.flushSync();
  createImage(`${d}/other.qcow2`, { size: 8 * MiB }).closeSync();
  try {
    for (
      const args of [
        ["commit", "top.qcow2"],
        ["stream", "top.qcow2"],
        ["copy", "other.qcow2", "top.qcow2"],
        ["copy", "top.qcow2", "copy.qcow2"],
        ["info", "top.qcow2"],
        ["check", "top.qcow2"],
      ]
    ) {
      const r = await disk(d, ...args);
      assert.equal(r.code, 1, `disk ${args.join(" ")}: ${r.stdout}${r.stderr}`);
      assert.match(r.stderr, /lock/, `disk ${args.join(" ")}`);
      assert.equal(r.stderr.trim().split("\n").length, 1, r.stderr);
    }
    const r = await disk(d, "info", "--force-share", "top.qcow2");
    assert.equal(r.code, 0, r.stderr);
  } finally {
    top.closeSync();
  }
  // A long-running vmkit commit holds the parent for writing: qemu-io is kept off it.
  // qemu-io is tried only once the commit holds the parent's write byte: tried earlier, it could
  // hold the parent itself at the moment the commit opens it and make the commit fail instead.
  const child = spawnDisk(d, "commit", "top.qcow2", "--bandwidth", "64K");
  try {
    if (!await waitForWriteLock(`${d}/base.qcow2`, child)) {
      const out = await child.output();
      assert.fail(`vmkit disk commit ended before it locked the parent: ${dec(out.stderr)}`);
    }
    const r = await run("qemu-io", "-f", "qcow2", "-c", "write 0 4k", `${d}/base.qcow2`);
    assert.notEqual(r.code, 0, "qemu-io wrote the parent while vmkit disk commit ran");
    assert.match(r.stderr, /Failed to get "write" lock/);
  } finally {
    try {
      child.kill("SIGKILL");
    } catch {
      // already ended (its status is not what this test checks)
    }
    await child.output();
  }
});

const dec = (b: Uint8Array): string => new TextDecoder().decode(b);

/**
 * Waits (up to 20 s) until /proc/locks shows the write byte (101) of `image`'s inode held;
 * false if `owner` ends first.
 */
async function waitForWriteLock(image: string, owner: Deno.ChildProcess): Promise<boolean> {
  const ino = (await Deno.stat(image)).ino;
  let ended = false;
  owner.status.then(() => ended = true);
  for (let i = 0; i < 400 && !ended; i++) {
    const locks = await Deno.readTextFile("/proc/locks");
    if (new RegExp(`:${ino} 10[01] 101\\b`).test(locks)) return true;
    await new Promise((r) => setTimeout(r, 50));
  }
  return false;
}

/** Starts a paused qemu-system (no kernel runs: -S) with `image` as a virtio-blk disk. */
async function qemuSystem(image: string, format: string): Promise<Deno.ChildProcess> {
  const child = new Deno.Command("qemu-system-x86_64", {
    args: [
      ...["-S", "-nodefaults", "-display", "none", "-accel", "tcg", "-machine", "microvm"],
      ...["-monitor", "none", "-serial", "none"],
      ...["-drive", `file=${image},format=${format},if=none,id=d0`],
      ...["-device", "virtio-blk-device,drive=d0"],
    ],
    stdin: "null",
    stdout: "null",
    stderr: "piped",
  }).spawn();
  // Its locks are up once /proc/locks shows the write byte (101) on the image's inode.
  if (await waitForWriteLock(image, child)) return child;
  try {
    child.kill("SIGKILL");
  } catch {
    // it ended by itself: its stderr says why
  }
  const out = await child.output();
  throw new Error(`qemu-system did not take its locks: ${dec(out.stderr)}`);
}

for (const format of ["qcow2", "raw"] as const) {
  Deno.test(`vmkit and a running qemu-system keep off each other's ${format} disk, in both directions`, async () => {
    await using dir = await tempDir();
    const img = `${dir.path}/vm.${format}`;
    await qemuImg("create", "-q", "-f", format, img, "16M");
    const vm = await qemuSystem(img, format);
    try {
      assert.throws(
        () => openImage(img, { format }),
        new RegExp(`Failed to get (shared )?"write" lock.*qemu-system.*pid ${vm.pid}`),
      );
      const r = await disk(dir.path, "info", `vm.${format}`);
      assert.equal(r.code, 1, r.stdout);
      assert.match(r.stderr, /shared "write" lock.*qemu-system/);
      const u = await disk(dir.path, "info", "-U", `vm.${format}`);
      assert.equal(u.code, 0, u.stderr);
    } finally {
      vm.kill("SIGKILL");
      await vm.output();
    }
    const v = openImage(img, { format });
    try {
      const child = new Deno.Command("qemu-system-x86_64", {
        args: [
          ...["-S", "-nodefaults", "-display", "none", "-accel", "tcg", "-machine", "microvm"],
          ...["-drive", `file=${img},format=${format},if=none,id=d0`],
          ...["-device", "virtio-blk-device,drive=d0"],
        ],
        stdin: "null",
        stdout: "piped",
        stderr: "piped",
        signal: AbortSignal.timeout(20_000),
      });
      const out = await child.output();
      assert.notEqual(out.code, 0, "qemu-system started on an image vmkit writes");
      assert.match(dec(out.stderr), /Failed to get "write" lock/);
    } finally {
      v.closeSync();
    }
  });
}
