import assert from "node:assert/strict";
import type { BlockDevice } from "../../cow/block_device.ts";
import { createImage, openImage } from "../../cow/chain.ts";
import { commit } from "../../cow/commit.ts";
import { copyParent } from "../../cow/copy_parent.ts";
import type { DiskImage } from "../../cow/disk_image.ts";
import { createOverlay, switchToOverlay } from "../../cow/overlay.ts";
import type { Progress } from "../../cow/progress.ts";
import type { Qcow2Image } from "../../cow/qcow2.ts";
import { stream } from "../../cow/stream.ts";
import { SwitchableDevice } from "../../cow/switchable_device.ts";
import {
  assertBytes,
  assertQemuCheck,
  pattern,
  prng,
  qemuImg,
  randInt,
  tempDir,
} from "./helpers.ts";

const MiB = 1 << 20;
const SIZE = 4 * MiB;

/** Delays every request by a timer tick, so requests are really in flight at a switch. */
class SlowDevice implements BlockDevice {
  constructor(readonly inner: BlockDevice) {}
  get size(): number {
    return this.inner.size;
  }
  async read(o: number, b: Uint8Array): Promise<void> {
    await new Promise((r) => setTimeout(r, 1));
    await this.inner.read(o, b);
  }
  async write(o: number, d: Uint8Array): Promise<void> {
    await new Promise((r) => setTimeout(r, 1));
    await this.inner.write(o, d);
  }
  flush(): Promise<void> {
    return this.inner.flush();
  }
  discard(o: number, l: number): Promise<void> {
    return this.inner.discard(o, l);
  }
  close(): Promise<void> {
    return this.inner.close();
  }
}

/** Four concurrent lanes of writes/discards, each in its own quarter, mirrored in a model. */
class Writer {
  readonly model: Uint8Array;
  writes = 0;
  #stop = false;
  #lanes: Promise<void>[] = [];
  constructor(readonly dev: BlockDevice, initial: Uint8Array, readonly seed: number) {
    this.model = initial.slice();
  }
  start(): void {
    for (let lane = 0; lane < 4; lane++) this.#lanes.push(this.#lane(lane));
  }
  async #lane(lane: number): Promise<void> {
    const rand = prng(this.seed * 10 + lane);
    const quarter = this.dev.size / 4;
    let i = 0;
    while (!this.#stop) {
      const len = 1 + randInt(rand, 20000);
      const off = lane * quarter + randInt(rand, quarter - len);
      if (rand() < 0.1) {
        await this.dev.discard(off, len);
        this.model.fill(0, off, off + len);
      } else {
        const d = pattern(len, this.seed * 100000 + lane * 10000 + i);
        await this.dev.write(off, d);
        this.model.set(d, off);
      }
      this.writes++;
      if (++i % 3 === 0) await new Promise((r) => setTimeout(r, 0));
    }
  }
  async stop(): Promise<void> {
    this.#stop = true;
    await Promise.all(this.#lanes);
  }
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function readAll(d: BlockDevice): Promise<Uint8Array> {
  const b = new Uint8Array(d.size);
  await d.read(0, b);
  return b;
}

/** A parent (raw or qcow2) with content, opened writable. */
function makeParent(
  dir: string,
  format: "raw" | "qcow2",
): { img: DiskImage; data: Uint8Array } {
  const data = pattern(SIZE, 77);
  data.fill(0, MiB, MiB + 300000);
  const path = `${dir}/parent.${format}`;
  const img = createImage(path, { size: SIZE, format, clusterSize: 65536 });
  img.writeSync(0, data);
  img.flushSync();
  return { img, data };
}

Deno.test("switching a live writer to a new overlay loses no write and sends none to the parent afterwards", async () => {
  await using dir = await tempDir();
  const { img: parent, data } = makeParent(dir.path, "raw");
  const dev = new SwitchableDevice(new SlowDevice(parent));
  const w = new Writer(dev, data, 1);
  w.start();
  await sleep(40);
  const overlay = createOverlay(parent, `${dir.path}/overlay.qcow2`);
  await dev.switchTo(overlay);
  const atSwitch = w.writes;
  const frozen = await Deno.readFile(parent.path);
  assert.notDeepEqual(frozen, data, "the writer wrote to the parent before the switch");
  await sleep(60);
  await w.stop();
  assert.ok(
    w.writes > atSwitch + 10,
    `writer kept writing after the switch (${atSwitch} -> ${w.writes})`,
  );
  await dev.flush();
  assertBytes(await readAll(dev), w.model, "everything the writer wrote");
  assertBytes(await Deno.readFile(parent.path), frozen, "parent after the switch");
  await dev.close();
  parent.closeSync();
  await assertQemuCheck(`${dir.path}/overlay.qcow2`);
  await Deno.writeFile(`${dir.path}/model.raw`, w.model);
  assert.match(
    await qemuImg("compare", `${dir.path}/overlay.qcow2`, `${dir.path}/model.raw`),
    /identical/,
  );
});

Deno.test("copyParent copies the frozen parent in the background with progress and a bandwidth limit", async () => {
  await using dir = await tempDir();
  const { img: parent, data } = makeParent(dir.path, "qcow2");
  const dev = new SwitchableDevice(parent);
  const w = new Writer(dev, data, 2);
  w.start();
  await sleep(20);
  const overlay = await switchToOverlay(dev, parent, `${dir.path}/overlay.qcow2`);
  assert.equal(dev.target, overlay);
  const before = w.writes;
  const seen: Progress[] = [];
  const t0 = performance.now();
  const r = await copyParent(parent, `${dir.path}/copy.qcow2`, {
    bandwidth: 16 * MiB,
    chunkSize: 256 * 1024,
    onProgress: (p) => seen.push(p),
  });
  const secs = (performance.now() - t0) / 1000;
  const during = w.writes - before;
  await w.stop();
  assert.ok(secs >= 0.8 * (SIZE / (16 * MiB)), `copy took ${secs}s, faster than the limit allows`);
  assert.ok(during > 10, `the writer kept writing during the copy (${during} writes)`);
  assert.equal(r.size, SIZE);
  assert.deepEqual(seen.at(-1), { done: SIZE, total: SIZE });
  assert.ok(
    seen.every((p, i) => i === 0 || p.done >= (seen[i - 1]?.done ?? 0)),
    "progress is monotone",
  );
  await dev.close();
  parent.closeSync();
  await assertQemuCheck(`${dir.path}/copy.qcow2`);
  assert.match(
    await qemuImg("compare", `${dir.path}/copy.qcow2`, `${dir.path}/parent.qcow2`),
    /identical/,
  );
});

for (const format of ["raw", "qcow2"] as const) {
  Deno.test(`active commit into a ${format} parent keeps a live writer running and pivots it to the parent`, async () => {
    await using dir = await tempDir();
    const { img: parent, data } = makeParent(dir.path, format);
    const dev = new SwitchableDevice(parent);
    const overlay = createOverlay(parent, `${dir.path}/overlay.qcow2`, { clusterSize: 4096 });
    await dev.switchTo(overlay);
    const w = new Writer(dev, data, 3);
    w.start();
    await sleep(50);
    const before = w.writes;
    const seen: Progress[] = [];
    const r = await commit(overlay, {
      switchable: dev,
      chunkSize: 128 * 1024,
      bandwidth: 32 * MiB,
      onProgress: (p) => seen.push(p),
    });
    assert.equal(dev.target, parent, "the writer now targets the parent");
    assert.ok(w.writes - before > 10, "the writer kept writing during the commit");
    await sleep(20);
    await w.stop();
    await dev.flush();
    assert.equal(r.resumedFrom, 0);
    assert.deepEqual(seen.at(-1), { done: SIZE, total: SIZE });
    assertBytes(await readAll(dev), w.model, "the parent after commit and pivot");
    await assert.rejects(Deno.stat(`${dir.path}/overlay.qcow2.commit.json`), Deno.errors.NotFound);
    await dev.close();
    if (format === "qcow2") await assertQemuCheck(parent.path);
    await Deno.writeFile(`${dir.path}/model.raw`, w.model);
    assert.match(
      await qemuImg("compare", "-F", "raw", parent.path, `${dir.path}/model.raw`),
      /identical/,
    );
  });
}

Deno.test("a commit interrupted by a crash resumes from its saved cursor and completes", async () => {
  await using dir = await tempDir();
  const parentPath = `${dir.path}/base.raw`;
  await Deno.writeFile(parentPath, pattern(SIZE, 5));
  const ovPath = `${dir.path}/top.qcow2`;
  const ov = createImage(ovPath, { backingFile: "base.raw", clusterSize: 4096 });
  const rand = prng(11);
  for (let i = 0; i < 200; i++) {
    const len = 1 + randInt(rand, 30000);
    const off = randInt(rand, SIZE - len);
    if (i % 7 === 0) ov.discardSync(off, len);
    else ov.writeSync(off, pattern(len, i));
  }
  const expected = await readAll(ov);
  ov.closeSync();
  const crash = new Error("simulated crash");
  await assert.rejects(
    commit(ovPath, {
      chunkSize: 65536,
      saveEvery: 3,
      onProgress: (p) => {
        if (p.done > SIZE / 2) throw crash;
      },
    }),
    (e: unknown) => e === crash,
  );
  const state = JSON.parse(await Deno.readTextFile(`${ovPath}.commit.json`)) as { cursor: number };
  assert.ok(state.cursor > 0 && state.cursor <= SIZE / 2 + 65536, `saved cursor ${state.cursor}`);
  const r = await commit(ovPath, { chunkSize: 65536 });
  assert.equal(r.resumedFrom, state.cursor);
  r.parent.closeSync();
  assertBytes(await Deno.readFile(parentPath), expected, "parent after the resumed commit");
  await assert.rejects(Deno.stat(`${ovPath}.commit.json`), Deno.errors.NotFound);
});

async function threeLevelChain(dir: string): Promise<{ top: Qcow2Image; data: Uint8Array }> {
  await Deno.writeFile(`${dir}/base.raw`, pattern(SIZE, 21));
  const mid = createImage(`${dir}/mid.qcow2`, { backingFile: "base.raw" });
  mid.writeSync(100000, pattern(500000, 22));
  mid.discardSync(2 * MiB, 256 * 1024);
  mid.closeSync();
  const top = createImage(`${dir}/top.qcow2`, { backingFile: "mid.qcow2", clusterSize: 16384 });
  top.writeSync(3 * MiB, pattern(100000, 23));
  const data = await readAll(top);
  return { top: top as Qcow2Image, data };
}

Deno.test("stream pulls the whole chain into a live overlay and drops its backing file", async () => {
  await using dir = await tempDir();
  const { top, data } = await threeLevelChain(dir.path);
  const dev = new SwitchableDevice(top);
  const w = new Writer(dev, data, 4);
  w.start();
  const before = w.writes;
  const r = await stream(top, { chunkSize: 65536 });
  assert.ok(w.writes > before, "the writer kept writing during the stream");
  assert.equal(r.backingFile, null);
  assert.equal(top.backing, null);
  await w.stop();
  await dev.flush();
  assertBytes(await readAll(dev), w.model, "overlay after stream");
  await dev.close();
  const info = JSON.parse(await qemuImg("info", "--output=json", top.path)) as Record<
    string,
    unknown
  >;
  assert.equal(info["backing-filename"], undefined);
  await assertQemuCheck(top.path);
  await Deno.writeFile(`${dir.path}/model.raw`, w.model);
  assert.match(await qemuImg("compare", top.path, `${dir.path}/model.raw`), /identical/);
});

Deno.test("stream with a base keeps that base as the new backing file and shortens the chain", async () => {
  await using dir = await tempDir();
  const { top, data } = await threeLevelChain(dir.path);
  const r = await stream(top, { base: `${dir.path}/base.raw` });
  assert.equal(r.backingFile, "base.raw");
  top.closeSync();
  const chain = JSON.parse(
    await qemuImg("info", "--backing-chain", "--output=json", `${dir.path}/top.qcow2`),
  ) as Array<{ filename: string; format: string }>;
  assert.deepEqual(chain.map((l) => l.format), ["qcow2", "raw"]);
  await Deno.remove(`${dir.path}/mid.qcow2`); // no longer needed
  const again = openImage(`${dir.path}/top.qcow2`, { readOnly: true });
  assertBytes(await readAll(again), data, "content after stream to base");
  await again.close();
  await assertQemuCheck(`${dir.path}/top.qcow2`);
});
