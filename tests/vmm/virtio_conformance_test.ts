/**
 * virtio 1.2 device requirements checked one by one against the device
 * side, with the host-side driver (`virtio_driver.ts`) playing a guest
 * written from the spec. Each test names the statement it checks; the
 * conformance table is in `vmm/devices/virtio/README.md`.
 */

import assert from "node:assert/strict";
import { loadShim } from "../../native/ffi.ts";
import { HostMemory } from "../../vmm/memory.ts";
import type { VirtioDeviceHost } from "../../vmm/devices/virtio/host.ts";
import { type Buf, HostDriver, queueLayout, R, S, startBlk } from "./virtio_driver.ts";

await loadShim();

const MEM = 16 << 20;
const QUEUE_AT = 0x10000;
const BUF_AT = 0x100000;
const F_VERSION_1 = 1n << 32n;
const F_EVENT_IDX = 1n << 29n;
const F_INDIRECT = 1n << 28n;
const F_FLUSH = 1n << 9n;
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
