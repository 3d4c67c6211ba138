/**
 * virtio 1.2 device requirements checked one by one against the device
 * side, with the host-side driver (`virtio_driver.ts`) playing a guest
 * written from the spec. Each test names the statement it checks; the
 * conformance table is in `vmm/devices/virtio/README.md`.
 */

import assert from "node:assert/strict";
import { loadShim } from "../../native/ffi.ts";
import { HostMemory } from "../../vmm/memory.ts";
import { configOffset, Feature, W } from "../../vmm/devices/virtio/layout.ts";
import { BlkFeature } from "../../vmm/devices/virtio/blk_format.ts";
import { NetStat } from "../../vmm/devices/virtio/net_format.ts";
import { BUFS as NET_BUFS, F as NET_F, netRig, startDriver } from "./virtio_net_rig.ts";
import { VirtioDeviceHost } from "../../vmm/devices/virtio/host.ts";
import { MmioAllocator } from "../../vmm/devices/mmio_allocator.ts";
import { type Buf, HostDriver, queueLayout, R, S, startBlk } from "./virtio_driver.ts";

await loadShim();

const MEM = 16 << 20;
const QUEUE_AT = 0x10000;
const BUF_AT = 0x100000;
const F_VERSION_1 = 1n << BigInt(Feature.VERSION_1);
const F_EVENT_IDX = 1n << BigInt(Feature.EVENT_IDX);
const F_INDIRECT = 1n << BigInt(Feature.INDIRECT_DESC);
const F_FLUSH = 1n << BigInt(BlkFeature.FLUSH);
const T_OUT = 1;

/** Page-cache state of a whole file (`cachestat(2)`, Linux 6.5+): pages cached and dirty. */
function cachestat(path: string): { cached: number; dirty: number } {
  const libc = Deno.dlopen("libc.so.6", {
    syscall: { parameters: ["i64", "i64", "pointer", "pointer", "i64"], result: "i64" },
  });
  const f = Deno.openSync(path, { read: true });
  try {
    let fd = -1;
    for (const e of Deno.readDirSync("/proc/self/fd")) {
      let target = "";
      try {
        target = Deno.readLinkSync(`/proc/self/fd/${e.name}`);
      } catch (_err) {
        continue; // the directory's own fd is gone by now
      }
      if (target === path) fd = Math.max(fd, Number(e.name));
    }
    const range = new BigUint64Array([0n, 0n]); // offset 0, length 0 = to the end
    const out = new BigUint64Array(5);
    const SYS_CACHESTAT = 451n;
    const r = libc.symbols.syscall(
      SYS_CACHESTAT,
      BigInt(fd),
      Deno.UnsafePointer.of(range),
      Deno.UnsafePointer.of(out),
      0n,
    );
    assert.equal(r, 0n, "cachestat(2) failed");
    return { cached: Number(out[0]), dirty: Number(out[1]) };
  } finally {
    f.close();
    libc.close();
  }
}

interface Rig {
  mem: HostMemory;
  host: VirtioDeviceHost;
  drv: HostDriver;
  dir: string;
  path: string;
}

async function rig(format: "raw" | "qcow2" = "raw"): Promise<Rig> {
  // On the disk's own file system (not tmpfs), so that page-cache dirtiness means something.
  const dir = await Deno.makeTempDir({ dir: "/var/tmp", prefix: "vmkit-conf-" });
  const path = `${dir}/disk.${format}`;
  if (format === "raw") {
    const f = await Deno.open(path, { create: true, write: true });
    await f.write(new Uint8Array(4 << 20).fill(0x11));
    f.syncSync();
    f.close();
  } else {
    const p = await new Deno.Command("qemu-img", {
      args: ["create", "-q", "-f", "qcow2", path, "4M"],
    }).output();
    assert.equal(p.code, 0, new TextDecoder().decode(p.stderr));
    const f = await Deno.open(path, { read: true, write: true });
    f.syncSync();
    f.close();
  }
  const mem = HostMemory.create(MEM);
  const host = await startBlk(mem, { id: "vda", backend: { kind: "file", path, format } });
  return { mem, host, drv: new HostDriver(mem, host), dir, path };
}

async function teardown(r: Rig): Promise<void> {
  await r.host.close();
  r.mem.close();
  await Deno.remove(r.dir, { recursive: true });
}

function start(r: Rig, features: bigint): void {
  const st = r.drv.negotiate(features);
  assert.ok((st & S.FEATURES_OK) !== 0, `FEATURES_OK refused (status ${st})`);
  r.drv.setupQueue(0, queueLayout(QUEUE_AT, 64));
  r.drv.driverOk();
}

/** An OUT request of `bytes` of `fill` at `sector`, placed at `at`; returns its status address. */
function write(r: Rig, at: number, sector: number, bytes: number, fill: number): number {
  const hdr = new DataView(new ArrayBuffer(16));
  hdr.setUint32(0, T_OUT, true);
  hdr.setBigUint64(8, BigInt(sector), true);
  r.mem.write(at, new Uint8Array(hdr.buffer));
  r.mem.write(at + 0x1000, new Uint8Array(bytes).fill(fill));
  const status = at + 0x1000 + bytes;
  r.mem.write(status, new Uint8Array([0xee]));
  const bufs: Buf[] = [
    { addr: at, len: 16, write: false },
    { addr: at + 0x1000, len: bytes, write: false },
    { addr: status, len: 1, write: true },
  ];
  r.drv.addChain(bufs);
  r.drv.kick();
  return status;
}

for (const format of ["raw", "qcow2"] as const) {
  Deno.test(`virtio-blk (${format}) without a negotiated FLUSH completes a write only once it is stable (§5.2.6.2)`, async () => {
    const r = await rig(format);
    try {
      assert.ok((r.drv.deviceFeatures() & F_FLUSH) !== 0n, "FLUSH is offered");
      start(r, F_VERSION_1 | F_EVENT_IDX | F_INDIRECT); // FLUSH offered, not accepted
      const status = write(r, BUF_AT, 64, 64 << 10, 0x5a);
      await r.drv.collect(1);
      assert.equal(r.mem.read(status, 1)[0], 0);
      assert.equal(cachestat(r.path).dirty, 0, "the completed write left dirty page cache");
    } finally {
      await teardown(r);
    }
  });
}

Deno.test("virtio-blk with FLUSH negotiated leaves completed writes volatile until a flush (the control of the test above)", async () => {
  const r = await rig("raw");
  try {
    start(r, F_VERSION_1 | F_EVENT_IDX | F_INDIRECT | F_FLUSH);
    const status = write(r, BUF_AT, 64, 64 << 10, 0x5a);
    await r.drv.collect(1);
    assert.equal(r.mem.read(status, 1)[0], 0);
    // Writeback of a fresh 64 KiB would take 30 s (dirty_expire) on this idle file.
    assert.ok(cachestat(r.path).dirty > 0, "cachestat sees the write's dirty pages");
  } finally {
    await teardown(r);
  }
});

Deno.test("the device sets used.flags to 0 at activation, whatever the driver left there (§2.7.10.1)", async () => {
  const r = await rig("raw");
  try {
    r.drv.negotiate(F_VERSION_1 | F_EVENT_IDX);
    const l = queueLayout(QUEUE_AT, 64);
    r.drv.setupQueue(0, l);
    r.mem.write(l.used, new Uint8Array([0x01, 0x00])); // a stale NO_NOTIFY
    r.drv.driverOk();
    write(r, BUF_AT, 0, 512, 1);
    await r.drv.collect(1);
    assert.deepEqual([...r.mem.read(l.used, 2)], [0, 0]);
    assert.equal(r.drv.read(R.STATUS) & S.NEEDS_RESET, 0);
  } finally {
    await teardown(r);
  }
});

Deno.test("a device whose back end dies under a running driver sets DEVICE_NEEDS_RESET and sends a configuration-change interrupt (§2.1.2)", async () => {
  using mem = HostMemory.create(MEM);
  const host = await VirtioDeviceHost.start(
    {
      name: "crash",
      deviceId: 42,
      features: [],
      queueSizes: [16],
      configBytes: 0,
      backendModule: new URL("./fixtures/crashing_backend.ts", import.meta.url).href,
      backendConfig: {},
      pollUs: 0,
    },
    mem.regions,
    new MmioAllocator().allocate("crash"),
  );
  try {
    const drv = new HostDriver(mem, host);
    assert.ok((drv.negotiate(F_VERSION_1) & S.FEATURES_OK) !== 0);
    drv.setupQueue(0, queueLayout(QUEUE_AT, 16));
    drv.driverOk();
    drv.addChain([{ addr: BUF_AT, len: 16, write: false }]);
    drv.kick();
    let isr = 0;
    for (let i = 0; i < 50 && (isr & 2) === 0; i++) isr |= await drv.waitIrq(100);
    assert.ok((isr & 2) !== 0, "configuration-change interrupt");
    assert.ok((drv.read(R.STATUS) & S.NEEDS_RESET) !== 0, "DEVICE_NEEDS_RESET");
    assert.match(host.guestErrors.join("\n"), /crashed on a notify/);
  } finally {
    await host.close();
  }
});

Deno.test("a ConfigGeneration read made while the device rewrites its configuration returns the generation after the rewrite (§4.2.2.1)", async () => {
  const r = await rig("raw");
  try {
    const w = new Int32Array(r.host.spec.state);
    const gen = r.drv.read(R.CONFIG_GENERATION);
    const capLo = r.drv.config(0, 4);
    // A writer on another thread, as the I/O Worker is: marks the update, takes 10 ms (well within CONFIG_WAIT_MS) over
    // the capacity, bumps the generation, clears the mark (what updateConfig does).
    const src = `self.onmessage = (e) => {
      const w = new Int32Array(e.data.state);
      const cfg = new Uint8Array(e.data.state, e.data.cfgOff, 8);
      Atomics.store(w, ${W.CONFIG_BUSY}, 1);
      cfg[0] = cfg[0] ^ 0xff;
      Atomics.wait(w, 31, 0, 10);
      cfg[3] = cfg[3] ^ 0xff;
      Atomics.add(w, ${W.CONFIG_GENERATION}, 1);
      Atomics.store(w, ${W.CONFIG_BUSY}, 0);
      Atomics.notify(w, ${W.CONFIG_BUSY});
      self.postMessage("done");
    };`;
    const worker = new Worker(URL.createObjectURL(new Blob([src])), { type: "module" });
    const done = new Promise((res) => worker.onmessage = res);
    worker.postMessage({ state: r.host.spec.state, cfgOff: configOffset() });
    while (Atomics.load(w, W.CONFIG_BUSY) === 0) await new Promise((res) => setTimeout(res, 1));
    // The driver's bracket: generation, the field, generation. The first read falls inside
    // the update; it must not return the old generation, or the bracket below would pass
    // with a torn capacity.
    const before = r.drv.read(R.CONFIG_GENERATION);
    const cap = r.drv.config(0, 4);
    const after = r.drv.read(R.CONFIG_GENERATION);
    await done;
    worker.terminate();
    assert.equal(before, gen + 1, "the read waited for the update");
    assert.equal(after, before);
    assert.equal(cap, (capLo ^ 0xff0000ff) >>> 0, "the bracketed read saw the whole update");
  } finally {
    await teardown(r);
  }
});

Deno.test("virtio-net with an MTU offers VIRTIO_NET_F_MTU, shows it at config offset 10, and keeps larger unsegmented frames from the guest (§5.1.4.1) (root, netns)", async () => {
  const net = await netRig({ mtu: 1000 });
  try {
    const F_MTU = 1n << 3n;
    assert.ok((net.drv.deviceFeatures() & F_MTU) !== 0n, "VIRTIO_NET_F_MTU offered");
    assert.equal(net.drv.config(10, 2), 1000, "mtu (le16 at 10)");
    startDriver(net, NET_F.VERSION_1 | NET_F.MAC | NET_F.STATUS | F_MTU);
    net.drv.use(0);
    for (let i = 0; i < 8; i++) {
      net.drv.addChain([{ addr: NET_BUFS + i * 2048, len: 2048, write: true }]);
    }
    net.drv.kick(0);
    // 1200 bytes of ICMP payload: a 1228-byte IP packet over the TAP's 1500, above the 1000.
    await net.ns.exec(["ping", "-c", "1", "-W", "1", "-s", "1200", "10.95.0.2"], true);
    await new Promise((res) => setTimeout(res, 100));
    assert.equal(net.drv.takeUsed().length, 0, "no frame above the MTU reached the guest");
    assert.equal(net.stats.get(NetStat.RX_TOO_BIG), 1);
    // 972 bytes of payload: a 1000-byte IP packet, exactly the MTU: it passes.
    await net.ns.exec(["ping", "-c", "1", "-W", "1", "-s", "972", "10.95.0.2"], true);
    const used = await net.drv.collect(1);
    assert.equal(used[0]?.len, 12 + 14 + 1000);
  } finally {
    await net.close();
  }
});

Deno.test("without VIRTIO_NET_F_MTU negotiated the same frame passes (the control of the test above) (root, netns)", async () => {
  const net = await netRig({ mtu: 1000 });
  try {
    startDriver(net, NET_F.VERSION_1 | NET_F.MAC | NET_F.STATUS);
    net.drv.use(0);
    net.drv.addChain([{ addr: NET_BUFS, len: 2048, write: true }]);
    net.drv.kick(0);
    await net.ns.exec(["ping", "-c", "1", "-W", "1", "-s", "1200", "10.95.0.2"], true);
    const used = await net.drv.collect(1);
    assert.equal(used[0]?.len, 12 + 14 + 1228);
  } finally {
    await net.close();
  }
});

Deno.test("a driver that sets DRIVER_OK though FEATURES_OK was refused gets DEVICE_NEEDS_RESET and its requests are not run (§3.1.1, §2.1.2)", async () => {
  const r = await rig();
  try {
    const st = r.drv.negotiate(F_VERSION_1 | (1n << 63n)); // bit 63: never offered
    assert.equal(st & S.FEATURES_OK, 0, "FEATURES_OK refused");
    r.drv.setupQueue(0, queueLayout(QUEUE_AT, 64));
    r.drv.driverOk();
    const status = write(r, BUF_AT, 0, 4096, 0x77);
    const deadline = Date.now() + 5000;
    while ((r.drv.read(R.STATUS) & S.NEEDS_RESET) === 0 && Date.now() < deadline) {
      await new Promise((res) => setTimeout(res, 10));
    }
    assert.ok((r.drv.read(R.STATUS) & S.NEEDS_RESET) !== 0, "DEVICE_NEEDS_RESET");
    await new Promise((res) => setTimeout(res, 100));
    assert.equal(r.drv.takeUsed().length, 0, "no request was used");
    assert.equal(r.mem.read(status, 1)[0], 0xee, "no status written");
    const disk = await Deno.readFile(r.path);
    assert.ok(disk.subarray(0, 4096).every((b) => b === 0x11), "the disk is untouched");
  } finally {
    await teardown(r);
  }
});
