import assert from "node:assert/strict";
import type { BlockDevice } from "../../cow/block_device.ts";
import { IscsiBlockDevice, SanDeviceError } from "../../san/mod.ts";
import { backingFile, Tgtd } from "./tgt.ts";
import { prng } from "../prng.ts";

const TARGET = "iqn.2026-01.dev.vmkit.test:blockdev";
const VM = "iqn.2026-01.dev.vmkit.test:vm-blockdev";
const SIZE = 4 << 20;

async function withDevice(
  fn: (dev: IscsiBlockDevice, lunPath: string, tgt: Tgtd) => Promise<void>,
): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "vmkit-san-bdev-" });
  const tgt = await Tgtd.start();
  try {
    const lunPath = await backingFile(dir, "lun.img", SIZE);
    await tgt.addTarget({
      tid: 1,
      name: TARGET,
      luns: [{ lun: 1, path: lunPath }],
      initiators: [VM],
    });
    const dev = await IscsiBlockDevice.open({
      host: "127.0.0.1",
      port: tgt.port,
      initiatorName: VM,
      targetName: TARGET,
      lun: 1,
      keepaliveMs: 0,
    });
    try {
      await fn(dev, lunPath, tgt);
    } finally {
      await dev.close();
    }
  } finally {
    await tgt.stop();
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test("an iSCSI LUN block device matches a byte model under random unaligned reads and writes", async () => {
  const seed = 4242;
  await withDevice(async (dev: BlockDevice, lunPath) => {
    assert.equal(dev.size, SIZE);
    const model = new Uint8Array(SIZE);
    const rand = prng(seed);
    try {
      for (let i = 0; i < 60; i++) {
        const len = 1 + Math.floor(rand() * 70_000);
        const off = Math.floor(rand() * (SIZE - len));
        if (rand() < 0.6) {
          const data = new Uint8Array(len);
          for (let j = 0; j < len; j++) data[j] = Math.floor(rand() * 256);
          await dev.write(off, data);
          model.set(data, off);
        } else {
          const buf = new Uint8Array(len);
          await dev.read(off, buf);
          assert.ok(buf.every((b, j) => b === model[off + j]), `read [${off}, +${len}) differs`);
        }
      }
      // A large aligned write spans several commands issued concurrently.
      const big = new Uint8Array(1536 * 1024).map((_, j) => (j * 31) & 0xff);
      await dev.write(1 << 20, big);
      model.set(big, 1 << 20);
      await dev.flush();
      const file = await Deno.readFile(lunPath);
      assert.ok(file.every((b, j) => b === model[j]), "backing file differs from the model");
    } catch (err) {
      console.error(`failing seed: ${seed}`);
      throw err;
    }
  });
});

Deno.test("discard makes the range read as zeros, including unaligned edges", async () => {
  await withDevice(async (dev) => {
    const data = new Uint8Array(20_000).fill(0xee);
    await dev.write(1000, data);
    await dev.discard(1500, 10_000);
    const buf = new Uint8Array(20_000);
    await dev.read(1000, buf);
    for (let i = 0; i < buf.length; i++) {
      const inHole = i >= 500 && i < 10_500;
      assert.equal(buf[i], inHole ? 0 : 0xee, `byte ${1000 + i}`);
    }
  });
});

Deno.test("out-of-range and negative requests fail with SanDeviceError and the device keeps working", async () => {
  await withDevice(async (dev) => {
    await assert.rejects(() => dev.read(SIZE - 10, new Uint8Array(11)), SanDeviceError);
    await assert.rejects(() => dev.write(-1, new Uint8Array(1)), SanDeviceError);
    await assert.rejects(() => dev.discard(0, SIZE + 1), SanDeviceError);
    await assert.rejects(() => dev.read(0.5, new Uint8Array(1)), SanDeviceError);
    const buf = new Uint8Array(10);
    await dev.read(SIZE - 10, buf);
    assert.ok(buf.every((b) => b === 0));
  });
});

Deno.test("a read-only LUN device refuses writes and a closed one refuses everything", async () => {
  await withDevice(async (dev, _path, tgt) => {
    const ro = await IscsiBlockDevice.fromSession(dev.session, 1, true);
    await assert.rejects(() => ro.write(0, new Uint8Array(512)), /read-only/);
    await assert.rejects(() => ro.discard(0, 512), /read-only/);
    await ro.close();
    await assert.rejects(() => ro.read(0, new Uint8Array(512)), /closed/);
    // The shared session stays usable after the read-only view closed.
    await dev.read(0, new Uint8Array(512));
    assert.ok(tgt.port > 0);
  });
});
