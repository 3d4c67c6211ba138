import assert from "node:assert/strict";
import type { BlockDevice } from "../../cow/block_device.ts";
import { createImage, openImage } from "../../cow/chain.ts";
import { commit } from "../../cow/commit.ts";
import { RawImage } from "../../cow/raw.ts";
import { SwitchableDevice } from "../../cow/switchable_device.ts";
import { assertBytes, pattern, qemuImg, tempDir } from "./helpers.ts";

/** A device whose writes finish only when the test says so. */
class GatedDevice implements BlockDevice {
  readonly size = 1 << 20;
  readonly log: string[] = [];
  #release: Array<() => void> = [];
  constructor(readonly name: string) {}
  read(): Promise<void> {
    return Promise.resolve();
  }
  write(offset: number): Promise<void> {
    return new Promise((resolve) => {
      this.#release.push(() => {
        this.log.push(`${this.name}:write@${offset}`);
        resolve();
      });
    });
  }
  flush(): Promise<void> {
    this.log.push(`${this.name}:flush`);
    return Promise.resolve();
  }
  discard(): Promise<void> {
    return Promise.resolve();
  }
  close(): Promise<void> {
    this.log.push(`${this.name}:close`);
    return Promise.resolve();
  }
  releaseAll(): void {
    const r = this.#release;
    this.#release = [];
    for (const f of r) f();
  }
  get pending(): number {
    return this.#release.length;
  }
}

Deno.test("SwitchableDevice waits for in-flight writes, flushes the old target, then sends held writes to the new one", async () => {
  const a = new GatedDevice("a");
  const b = new GatedDevice("b");
  const dev = new SwitchableDevice(a);
  const w1 = dev.write(1, new Uint8Array(1));
  const w2 = dev.write(2, new Uint8Array(1));
  await Promise.resolve();
  assert.equal(a.pending, 2);
  let switched = false;
  const sw = dev.switchTo(b).then(() => (switched = true));
  const w3 = dev.write(3, new Uint8Array(1)); // issued during the switch: held
  await new Promise((r) => setTimeout(r, 5));
  assert.equal(switched, false, "the switch waits for in-flight writes");
  assert.equal(b.pending, 0);
  a.releaseAll();
  await Promise.all([w1, w2, sw]);
  assert.deepEqual(a.log, ["a:write@1", "a:write@2", "a:flush"]);
  await new Promise((r) => setTimeout(r, 0));
  assert.equal(b.pending, 1, "the held write went to the new target");
  b.releaseAll();
  await w3;
  assert.deepEqual(b.log, ["b:write@3"]);
  assert.equal(dev.target, b);
  await dev.close();
  assert.deepEqual(b.log, ["b:write@3", "b:close"]);
  await assert.rejects(dev.write(0, new Uint8Array(1)), /closed/);
});

Deno.test("raw images read zeros in holes, discard to zeros and grow", async () => {
  await using dir = await tempDir();
  const p = `${dir.path}/r.raw`;
  const img = RawImage.create(p, 1 << 20);
  const d = pattern(300000, 1);
  await img.write(1000, d);
  await img.discard(65536, 131072);
  const want = new Uint8Array(4 << 20);
  want.set(d, 1000);
  want.fill(0, 65536, 65536 + 131072);
  img.grow(4 << 20);
  const got = new Uint8Array(img.size);
  await img.read(0, got);
  assertBytes(got, want, "raw image");
  await img.close();
  assert.equal((await Deno.stat(p)).size, 4 << 20);
});

Deno.test("committing an overlay larger than its parent grows the parent first", async () => {
  await using dir = await tempDir();
  await Deno.writeFile(`${dir.path}/small.raw`, pattern(1 << 20, 3));
  const ov = createImage(`${dir.path}/big.qcow2`, { backingFile: "small.raw", size: 3 << 20 });
  const tail = pattern(5000, 4);
  await ov.write((3 << 20) - 5000, tail);
  const want = new Uint8Array(3 << 20);
  await ov.read(0, want);
  await ov.close();
  const r = await commit(`${dir.path}/big.qcow2`);
  assert.equal(r.parent.size, 3 << 20);
  await r.parent.close();
  assertBytes(await Deno.readFile(`${dir.path}/small.raw`), want, "grown parent");
  const again = openImage(`${dir.path}/big.qcow2`, { readOnly: true });
  assert.equal(again.size, 3 << 20);
  await again.close();
  assert.match(
    await qemuImg("compare", `${dir.path}/big.qcow2`, `${dir.path}/small.raw`),
    /identical/,
  );
});
