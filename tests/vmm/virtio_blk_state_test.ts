import assert from "node:assert/strict";
import { loadShim } from "../../native/ffi.ts";
import { HostMemory } from "../../vmm/memory.ts";
import type { VirtioDeviceHost } from "../../vmm/devices/virtio/host.ts";
import { W } from "../../vmm/devices/virtio/layout.ts";
import { VirtioMmioTransport } from "../../vmm/devices/virtio/mmio.ts";
import type { DriveConfig } from "../../vmm/io_config.ts";
import { type Buf, HostDriver, queueLayout, startBlk } from "./virtio_driver.ts";

await loadShim();

const MEM = 16 << 20;
const QUEUE_AT = 0x10000;
const BUF_AT = 0x100000;
const BIG_AT = 0x400000;
const F = (1n << 32n) | (1n << 29n) | (1n << 28n);

/** A 1 MiB read of `sector` into the one shared big buffer (slow enough to be caught in flight). */
function bigReq(d: HostDriver, slot: number, sector: number): { bufs: Buf[]; status: number } {
  const at = BUF_AT + slot * 0x40;
  const hdr = new DataView(new ArrayBuffer(16));
  hdr.setBigUint64(8, BigInt(sector), true);
  d.mem.write(at, new Uint8Array(hdr.buffer));
  d.mem.write(at + 0x20, new Uint8Array([0xee]));
  return {
    bufs: [
      { addr: at, len: 16, write: false },
      { addr: BIG_AT, len: 1 << 20, write: true },
      { addr: at + 0x20, len: 1, write: true },
    ],
    status: at + 0x20,
  };
}

function readReq(
  d: HostDriver,
  slot: number,
  sector: number,
): { bufs: Buf[]; status: number; data: number } {
  const at = BUF_AT + 0x10000 + slot * 0x2000;
  const hdr = new DataView(new ArrayBuffer(16));
  hdr.setBigUint64(8, BigInt(sector), true);
  d.mem.write(at, new Uint8Array(hdr.buffer));
  d.mem.write(at + 0x1800, new Uint8Array([0xee]));
  return {
    bufs: [
      { addr: at, len: 16, write: false },
      { addr: at + 0x800, len: 4096, write: true },
      { addr: at + 0x1800, len: 1, write: true },
    ],
    status: at + 0x1800,
    data: at + 0x800,
  };
}

async function startHost(mem: HostMemory, drive: DriveConfig): Promise<VirtioDeviceHost> {
  return await startBlk(mem, drive);
}

Deno.test("a virtio-blk device quiesced with requests in flight, saved and restored into a new device continues the queue exactly", async () => {
  const dir = await Deno.makeTempDir({ prefix: "vmkit-blk-state-" });
  const path = `${dir}/disk.raw`;
  const data = new Uint8Array(64 << 20);
  for (let i = 0; i < data.length; i += 512) data[i] = (i / 512) & 0xff;
  await Deno.writeFile(path, data);
  using mem = HostMemory.create(MEM);
  const drive: DriveConfig = { id: "vda", backend: { kind: "file", path } };
  let host = await startHost(mem, drive);
  try {
    const d = new HostDriver(mem, host);
    d.negotiate(F);
    d.setupQueue(0, queueLayout(QUEUE_AT, 256));
    d.driverOk();
    // 60 reads of 1 MiB: the device is still busy with them when quiesce() is called.
    const first = 60;
    const big: ReturnType<typeof bigReq>[] = [];
    for (let i = 0; i < first; i++) {
      const q = bigReq(d, i, i * 2048);
      big.push(q);
      d.addChain(q.bufs);
    }
    d.kick();
    const usedAtCall = d.usedIdx();
    await host.quiesce(); // requests in flight finish (or are not taken) before this resolves
    assert.ok(usedAtCall < first, "the quiesce began while requests were outstanding");
    assert.equal(Atomics.load(host.state, W.INFLIGHT), 0);
    const usedAtQuiesce = d.usedIdx();
    // Chains made available while quiesced wait in the ring.
    const later = 20;
    const reqs: ReturnType<typeof readReq>[] = [];
    for (let i = 0; i < later; i++) {
      const q = readReq(d, i, i * 8);
      reqs.push(q);
      d.addChain(q.bufs);
    }
    d.kick();
    await new Promise((r) => setTimeout(r, 100));
    assert.equal(d.usedIdx(), usedAtQuiesce, "nothing taken while quiesced");
    const saved = new VirtioMmioTransport(host.spec).save();
    await host.close();

    // A new device (as a restored VM would have), same RAM contents.
    host = await startHost(mem, drive);
    const t = new VirtioMmioTransport(host.spec);
    t.restore(saved);
    assert.ok(t.quiesced, "a restored device stays quiesced until resumed");
    d.rebind(host);
    await new Promise((r) => setTimeout(r, 50));
    assert.equal(d.usedIdx(), usedAtQuiesce, "still nothing taken before resume");
    host.resume();
    const used = await d.collect(first + later);
    assert.equal(used.length, first + later);
    assert.equal(d.usedIdx(), (first + later) & 0xffff);
    big.forEach((q, i) => assert.equal(mem.read(q.status, 1)[0], 0, `big request ${i} status`));
    reqs.forEach((q, i) => {
      assert.equal(mem.read(q.status, 1)[0], 0, `request ${i} status`);
      assert.equal(mem.read(q.data, 1)[0], (i * 8) & 0xff, `request ${i} data`);
    });
    assert.deepEqual(host.guestErrors, []);
  } finally {
    await host.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("restoring state of another device shape is refused", async () => {
  const dir = await Deno.makeTempDir({ prefix: "vmkit-blk-state-" });
  await Deno.writeFile(`${dir}/a.raw`, new Uint8Array(1 << 20));
  await Deno.writeFile(`${dir}/b.raw`, new Uint8Array(1 << 20));
  using mem = HostMemory.create(MEM);
  const ro = await startHost(mem, {
    id: "vda",
    backend: { kind: "file", path: `${dir}/a.raw` },
    readOnly: true,
  });
  // Another file: a writer and a reader of one image exclude each other (image locks).
  const rw = await startHost(mem, { id: "vda", backend: { kind: "file", path: `${dir}/b.raw` } });
  try {
    await ro.quiesce();
    const saved = new VirtioMmioTransport(ro.spec).save();
    assert.throws(
      () => new VirtioMmioTransport(rw.spec).restore(saved),
      /another id, features or queues/,
    );
    assert.throws(() => new VirtioMmioTransport(rw.spec).restore(saved.subarray(0, 100)), /bytes/);
  } finally {
    await ro.close();
    await rw.close();
    await Deno.remove(dir, { recursive: true });
  }
});
