import assert from "node:assert/strict";
import { loadShim } from "../../native/ffi.ts";
import { HostMemory } from "../../vmm/memory.ts";
import { MmioAllocator } from "../../vmm/devices/mmio_allocator.ts";
import type { VirtioDeviceHost } from "../../vmm/devices/virtio/host.ts";
import { W } from "../../vmm/devices/virtio/layout.ts";
import { HostDriver, queueLayout, R, S, startBlk } from "./virtio_driver.ts";

await loadShim();

const MEM = 16 << 20;
const QUEUE_AT = 0x10000;
const BUF_AT = 0x100000;
const F_VERSION_1 = 1n << 32n;
const F_INDIRECT = 1n << 28n;
const D_NEXT = 1, D_WRITE = 2, D_INDIRECT = 4;

interface Rig {
  mem: HostMemory;
  hosts: VirtioDeviceHost[];
  drv: HostDriver;
  other: HostDriver;
  dir: string;
}

/** Two drives on one memory: `drv` is attacked, `other` must keep working. */
async function rig(): Promise<Rig> {
  const dir = await Deno.makeTempDir({ prefix: "vmkit-hostile-" });
  const mem = HostMemory.create(MEM);
  const alloc = new MmioAllocator();
  const hosts: VirtioDeviceHost[] = [];
  for (const id of ["vda", "vdb"]) {
    const path = `${dir}/${id}.raw`;
    await Deno.writeFile(path, new Uint8Array(1 << 20).fill(0x11));
    hosts.push(
      await startBlk(mem, { id, backend: { kind: "file", path } }, alloc),
    );
  }
  const [a, b] = hosts;
  if (a === undefined || b === undefined) throw new Error("two hosts");
  return { mem, hosts, drv: new HostDriver(mem, a), other: new HostDriver(mem, b), dir };
}

async function teardown(r: Rig): Promise<void> {
  for (const h of r.hosts) await h.close();
  r.mem.close();
  await Deno.remove(r.dir, { recursive: true });
}

function start(
  d: HostDriver,
  queueAt: number,
  size = 16,
  features = F_VERSION_1 | F_INDIRECT,
): void {
  const st = d.negotiate(features);
  assert.ok((st & S.FEATURES_OK) !== 0);
  d.setupQueue(0, queueLayout(queueAt, size));
  d.driverOk();
}

/** Waits until `cond` holds (the device works on its own thread). */
async function until(what: string, cond: () => boolean, ms = 3000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

/** A well-formed 512-byte read of sector 0 at `at`; resolves with its status byte. */
async function goodRead(d: HostDriver, at: number): Promise<number> {
  const hdr = new DataView(new ArrayBuffer(16));
  d.mem.write(at, new Uint8Array(hdr.buffer));
  d.mem.write(at + 0x1200, new Uint8Array([0xee]));
  d.addChain([
    { addr: at, len: 16, write: false },
    { addr: at + 0x1000, len: 512, write: true },
    { addr: at + 0x1200, len: 1, write: true },
  ]);
  d.kick();
  await d.collect(1);
  return d.mem.read(at + 0x1200, 1)[0] ?? -1;
}

async function expectNeedsReset(r: Rig, why: RegExp): Promise<void> {
  await until("DEVICE_NEEDS_RESET", () => (r.drv.read(R.STATUS) & S.NEEDS_RESET) !== 0);
  await until("the reason", () => r.hosts[0]?.guestErrors.length !== 0);
  assert.match(
    r.hosts[0]?.guestErrors.join("; ") ?? "",
    why,
    JSON.stringify(r.hosts[0]?.guestErrors),
  );
  assert.ok((r.drv.read(R.INTERRUPT_STATUS) & 2) !== 0, "configuration-change interrupt raised");
  // The other device lives on.
  start(r.other, QUEUE_AT + 0x80000);
  assert.equal(await goodRead(r.other, BUF_AT + 0x80000), 0);
  // And the attacked one recovers after a reset.
  start(r.drv, QUEUE_AT);
  assert.equal(r.drv.read(R.STATUS) & S.NEEDS_RESET, 0, "reset clears DEVICE_NEEDS_RESET");
  assert.equal(await goodRead(r.drv, BUF_AT), 0);
}

const cases: Array<{ name: string; why: RegExp; attack: (d: HostDriver) => void }> = [
  {
    name: "a descriptor loop",
    why: /longer than the queue/,
    attack: (d) => {
      d.writeDesc(0, BUF_AT, 16, D_NEXT, 1);
      d.writeDesc(1, BUF_AT + 0x1000, 512, D_NEXT, 0);
      d.publish(0);
    },
  },
  {
    name: "a chain longer than the queue (through an indirect table)",
    why: /longer than the queue/,
    attack: (d) => {
      const n = 64; // queue size is 16
      for (let i = 0; i < n; i++) {
        const v = new DataView(new ArrayBuffer(16));
        v.setBigUint64(0, BigInt(BUF_AT + 0x2000), true);
        v.setUint32(8, 16, true);
        v.setUint16(12, i + 1 < n ? D_NEXT : D_WRITE, true);
        v.setUint16(14, i + 1, true);
        d.mem.write(BUF_AT + 0x4000 + 16 * i, new Uint8Array(v.buffer));
      }
      d.writeDesc(0, BUF_AT + 0x4000, 16 * n, D_INDIRECT, 0);
      d.publish(0);
    },
  },
  {
    name: "a buffer in the MMIO gap",
    why: /not inside guest RAM/,
    attack: (d) => {
      d.writeDesc(0, BUF_AT, 16, D_NEXT, 1);
      d.writeDesc(1, 0xd000_0000, 512, D_NEXT | D_WRITE, 2);
      d.writeDesc(2, BUF_AT + 0x1200, 1, D_WRITE, 0);
      d.publish(0);
    },
  },
  {
    name: "a buffer past the end of RAM",
    why: /not inside guest RAM/,
    attack: (d) => {
      d.writeDesc(0, BUF_AT, 16, D_NEXT, 1);
      d.writeDesc(1, MEM - 256, 512, D_NEXT | D_WRITE, 2);
      d.writeDesc(2, BUF_AT + 0x1200, 1, D_WRITE, 0);
      d.publish(0);
    },
  },
  {
    name: "an address beyond 2^53 and a length near 4 GiB",
    why: /not inside guest RAM/,
    attack: (d) => {
      d.writeDesc(0, BUF_AT, 16, D_NEXT, 1);
      d.writeDesc(1, 2 ** 60, 0xffff_ffff, D_NEXT | D_WRITE, 2);
      d.writeDesc(2, BUF_AT + 0x1200, 1, D_WRITE, 0);
      d.publish(0);
    },
  },
  {
    name: "a next index outside the table",
    why: /outside its table/,
    attack: (d) => {
      d.writeDesc(0, BUF_AT, 16, D_NEXT, 999);
      d.publish(0);
    },
  },
  {
    name: "a head index outside the queue",
    why: /outside the queue/,
    attack: (d) => d.publish(40),
  },
  {
    name: "nested indirect tables",
    why: /nested indirect/,
    attack: (d) => {
      const v = new DataView(new ArrayBuffer(16));
      v.setBigUint64(0, BigInt(BUF_AT + 0x4000), true);
      v.setUint32(8, 16, true);
      v.setUint16(12, D_INDIRECT, true);
      d.mem.write(BUF_AT + 0x4000, new Uint8Array(v.buffer));
      d.writeDesc(0, BUF_AT + 0x4000, 16, D_INDIRECT, 0);
      d.publish(0);
    },
  },
];

for (const c of cases) {
  Deno.test(`a guest sending ${c.name} gets DEVICE_NEEDS_RESET; the VMM and the other device live on`, async () => {
    const r = await rig();
    try {
      start(r.drv, QUEUE_AT);
      c.attack(r.drv);
      r.drv.kick();
      await expectNeedsReset(r, c.why);
    } finally {
      await teardown(r);
    }
  });
}

Deno.test("an indirect descriptor without VIRTIO_F_INDIRECT_DESC negotiated gets DEVICE_NEEDS_RESET", async () => {
  const r = await rig();
  try {
    start(r.drv, QUEUE_AT, 16, F_VERSION_1);
    r.drv.writeDesc(0, BUF_AT + 0x4000, 48, D_INDIRECT, 0);
    r.drv.publish(0);
    r.drv.kick();
    await expectNeedsReset(r, /without VIRTIO_F_INDIRECT_DESC/);
  } finally {
    await teardown(r);
  }
});

Deno.test("a queue size that is not a power of two, or rings outside RAM, fail at DRIVER_OK", async () => {
  const r = await rig();
  try {
    r.drv.negotiate(F_VERSION_1);
    r.drv.setupQueue(0, queueLayout(QUEUE_AT, 24));
    r.drv.driverOk();
    await until("NEEDS_RESET", () => (r.drv.read(R.STATUS) & S.NEEDS_RESET) !== 0);
    await until("the reason", () => r.hosts[0]?.guestErrors.length === 1);
    assert.match(r.hosts[0]?.guestErrors[0] ?? "", /size 24 is not a power of two/);
    r.drv.negotiate(F_VERSION_1);
    r.drv.setupQueue(0, {
      desc: 0xfee0_0000,
      avail: QUEUE_AT + 0x1000,
      used: QUEUE_AT + 0x2000,
      size: 16,
    });
    r.drv.driverOk();
    await until("NEEDS_RESET again", () => (r.drv.read(R.STATUS) & S.NEEDS_RESET) !== 0);
    await until("the second reason", () => r.hosts[0]?.guestErrors.length === 2);
    assert.match(r.hosts[0]?.guestErrors[1] ?? "", /descriptor table .* is not 16-aligned RAM/);
    start(r.drv, QUEUE_AT);
    assert.equal(await goodRead(r.drv, BUF_AT), 0);
  } finally {
    await teardown(r);
  }
});

Deno.test("a notify before DRIVER_OK takes nothing; config reads past the config space read 0; bad widths are ignored", async () => {
  const r = await rig();
  try {
    r.drv.negotiate(F_VERSION_1);
    r.drv.setupQueue(0, queueLayout(QUEUE_AT, 16));
    r.drv.writeDesc(0, BUF_AT, 16, D_NEXT, 1);
    r.drv.writeDesc(1, BUF_AT + 0x1200, 1, D_WRITE, 0);
    r.drv.publish(0);
    r.drv.kick();
    r.drv.write(R.QUEUE_NOTIFY, 0); // also through the register
    await new Promise((res) => setTimeout(res, 100));
    assert.equal(r.drv.usedIdx(), 0, "nothing used before DRIVER_OK");
    assert.equal(Atomics.load(r.hosts[0]?.state ?? new Int32Array(32), W.INFLIGHT), 0);
    assert.equal(r.drv.config(72, 4), 0, "first byte past virtio_blk_config");
    assert.equal(r.drv.config(0xefc, 4), 0, "last word of the window");
    assert.equal(r.drv.config(70, 4), 0, "a read straddling the end");
    assert.equal(r.drv.regs.read(r.drv.base + R.MAGIC, 2), 0, "16-bit register read");
    r.drv.regs.write(r.drv.base + R.STATUS, 1, 0); // 8-bit status write: ignored, no reset
    assert.ok((r.drv.read(R.STATUS) & S.FEATURES_OK) !== 0);
    r.drv.driverOk();
    // The chain made available before DRIVER_OK is taken now (it is a valid header-less chain: IOERR).
    await until("the early chain used", () => r.drv.usedIdx() === 1);
  } finally {
    await teardown(r);
  }
});

Deno.test("a driver asking for features the device did not offer does not get FEATURES_OK", async () => {
  const r = await rig();
  try {
    const st = r.drv.negotiate(F_VERSION_1 | (1n << 35n)); // VIRTIO_F_IN_ORDER, not offered
    assert.equal(st & S.FEATURES_OK, 0);
    const st2 = r.drv.negotiate(0n); // legacy driver: no VERSION_1
    assert.equal(st2 & S.FEATURES_OK, 0);
  } finally {
    await teardown(r);
  }
});
