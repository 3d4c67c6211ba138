/**
 * The vmkit side of `virtio_blk_bench.ts`: a real virtio-blk device (its I/O
 * Worker, ring parsing, checks and back end) over guest RAM, driven by the C
 * guest loop of `virtio_blk_driver.c` on the main thread.
 *
 * The transport is programmed through the register file a vCPU thread runs
 * (features VERSION_1 and EVENT_IDX, one queue of 256); the driver then
 * places requests in the split virtqueue, rings the queue's notify eventfd
 * (what KVM's ioeventfd does for the guest's QueueNotify write) and sleeps
 * on the interrupt eventfd (what the irqfd injects).
 *
 * @module
 */

import { HostMemory } from "../vmm/memory.ts";
import { MmioAllocator } from "../vmm/devices/mmio_allocator.ts";
import { blkDeviceConfig } from "../vmm/devices/virtio/blk_format.ts";
import { VirtioDeviceHost } from "../vmm/devices/virtio/host.ts";
import { VirtioMmioTransport } from "../vmm/devices/virtio/mmio.ts";
import { DiskHandle } from "../vmm/disk_handle.ts";
import type { DriveBackend } from "../vmm/io_config.ts";

const ROOT = new URL("../", import.meta.url).pathname;
const QSIZE = 256;
const MEM = 64 << 20;
const QUEUE_AT = 0x10000;
const DESC_AT = QUEUE_AT;
const AVAIL_AT = QUEUE_AT + 16 * QSIZE;
const USED_AT = QUEUE_AT + 0x2000;
const SLOTS_AT = 0x100000;
/** Header at 0, data (up to 128 KiB) at 0x1000, status after it. */
const SLOT_BYTES = 0x22000;
const STATUS_AT = 0x21000;
/** Most requests in flight the rig lays out slots for. */
export const MAX_DEPTH = 128;
const F_EVENT_IDX = 29;
/** Accepted as Linux's driver does (without it every write must be write-through). */
const F_FLUSH = 9;

/** Parameter block indices of `virtio_blk_driver.c` (its enum, in order). */
const P = {
  DESC: 0,
  AVAIL: 1,
  USED: 2,
  QSIZE: 3,
  SLOTS: 4,
  SLOT_BYTES: 5,
  STATUS_AT: 6,
  DEPTH: 7,
  TYPE: 8,
  BS: 9,
  OPS: 10,
  RANDOM: 11,
  SPAN: 12,
  SEED: 13,
  NOTIFY_FD: 14,
  IRQ_FD: 15,
  AVAIL_IDX: 16,
  LAST_USED: 17,
  KICKED_AT: 18,
  ELAPSED_NS: 19,
  ERRORS: 20,
  KICKS: 21,
  WAITS: 22,
  COUNT: 23,
} as const;

const DRIVER_SYMBOLS = {
  vbd_run: { parameters: ["pointer", "buffer"], result: "i64" },
  vbd_latency: { parameters: ["pointer", "buffer", "buffer", "u32", "u32"], result: "i64" },
  vbf_wake_rtt: { parameters: ["u32", "buffer"], result: "i64" },
  vbf_reads: { parameters: ["i32", "u64", "u32", "u32", "buffer"], result: "i64" },
} as const satisfies Deno.ForeignLibraryInterface;

const RUSAGE_SELF = 0;
const libc = Deno.dlopen("libc.so.6", {
  getrusage: { parameters: ["i32", "buffer"], result: "i32" },
  open: { parameters: ["buffer", "i32"], result: "i32" },
  close: { parameters: ["i32"], result: "i32" },
}).symbols;
const rusage = new BigInt64Array(18);

/** CPU seconds (user + system) this process has used, all threads (io_uring workers included). */
export function processCpuSeconds(): number {
  if (libc.getrusage(RUSAGE_SELF, rusage) !== 0) throw new Error("getrusage failed");
  const [us = 0n, uu = 0n, ss = 0n, su = 0n] = rusage;
  return Number(us) + Number(uu) / 1e6 + Number(ss) + Number(su) / 1e6;
}

/** Compiles the C guest loop (and the host floors, `virtio_blk_floor.c`) into `dir` and opens it. */
export async function loadDriver(dir: string): Promise<Deno.DynamicLibrary<typeof DRIVER_SYMBOLS>> {
  const out = `${dir}/libvbd.so`;
  const cc = await new Deno.Command("cc", {
    args: [
      "-O2",
      "-Wall",
      "-Wextra",
      "-Werror",
      "-fPIC",
      "-shared",
      "-o",
      out,
      `${ROOT}bench/virtio_blk_driver.c`,
      `${ROOT}bench/virtio_blk_floor.c`,
      "-lpthread",
    ],
  }).output();
  if (!cc.success) {
    throw new Error(`cc virtio_blk_driver.c: ${new TextDecoder().decode(cc.stderr)}`);
  }
  return Deno.dlopen(out, DRIVER_SYMBOLS);
}

/** One timed run of the rig. */
export interface RigRun {
  /** Wall seconds from the first submit to the last completion. */
  readonly seconds: number;
  /** CPU seconds the process used meanwhile (driver, device, io_uring workers). */
  readonly cpu: number;
  /** Notify eventfd writes (guest kicks). */
  readonly kicks: number;
  /** Driver sleeps on the interrupt eventfd. */
  readonly waits: number;
}

/** A virtio-blk device over 64 MiB of guest RAM with the C driver bound to its queue. */
export class BlkRig {
  readonly mem: HostMemory;
  readonly host: VirtioDeviceHost;
  readonly #drv: Deno.DynamicLibrary<typeof DRIVER_SYMBOLS>["symbols"];
  readonly #p = new BigUint64Array(P.COUNT);
  readonly #ram: Deno.PointerValue;
  readonly #disk: DiskHandle;

  private constructor(
    mem: HostMemory,
    host: VirtioDeviceHost,
    drv: Deno.DynamicLibrary<typeof DRIVER_SYMBOLS>,
    backend: DriveBackend,
  ) {
    this.mem = mem;
    this.host = host;
    this.#disk = new DiskHandle(host, { id: "bench", backend });
    this.#drv = drv.symbols;
    const r0 = mem.regions[0];
    if (r0 === undefined) throw new Error("no RAM");
    this.#ram = Deno.UnsafePointer.create(r0.hostAddr);
    const p = this.#p;
    p[P.DESC] = BigInt(DESC_AT);
    p[P.AVAIL] = BigInt(AVAIL_AT);
    p[P.USED] = BigInt(USED_AT);
    p[P.QSIZE] = BigInt(QSIZE);
    p[P.SLOTS] = BigInt(SLOTS_AT);
    p[P.SLOT_BYTES] = BigInt(SLOT_BYTES);
    p[P.STATUS_AT] = BigInt(STATUS_AT);
    p[P.NOTIFY_FD] = BigInt(host.notify[0]?.fd ?? -1);
    p[P.IRQ_FD] = BigInt(host.irq.fd);
    this.#activate();
  }

  /** Starts a device on `backend` (pollUs: the I/O Worker's busy-poll window). */
  static async start(
    backend: DriveBackend,
    drv: Deno.DynamicLibrary<typeof DRIVER_SYMBOLS>,
    pollUs?: number,
  ): Promise<BlkRig> {
    const mem = HostMemory.create(MEM);
    try {
      const cfg = blkDeviceConfig({ id: "bench", backend });
      const host = await VirtioDeviceHost.start(
        pollUs === undefined ? cfg : { ...cfg, pollUs },
        mem.regions,
        new MmioAllocator().allocate("bench"),
      );
      return new BlkRig(mem, host, drv, backend);
    } catch (err) {
      mem.close();
      throw err;
    }
  }

  #activate(): void {
    const regs = new VirtioMmioTransport(this.host.spec);
    const base = this.host.slot.base;
    const w = (off: number, val: number) => regs.write(base + off, 4, val);
    this.mem.view(QUEUE_AT, 0x4000).fill(0);
    w(0x70, 0);
    w(0x70, 1);
    w(0x70, 3);
    w(0x24, 0);
    w(0x20, (1 << F_EVENT_IDX) | (1 << F_FLUSH));
    w(0x24, 1);
    w(0x20, 1); // VERSION_1 (bit 32)
    w(0x70, 11);
    w(0x30, 0);
    w(0x38, QSIZE);
    w(0x80, DESC_AT);
    w(0x84, 0);
    w(0x90, AVAIL_AT);
    w(0x94, 0);
    w(0xa0, USED_AT);
    w(0xa4, 0);
    w(0x44, 1);
    w(0x70, 15);
  }

  /** `ops` requests of `bs` bytes (type 0 read, 1 write) at `depth` in flight over `span` bytes. */
  run(type: number, bs: number, ops: number, depth: number, random: boolean, span: number): RigRun {
    if (depth > MAX_DEPTH || bs > 0x20000) throw new RangeError("depth or block size too large");
    const p = this.#p;
    p[P.TYPE] = BigInt(type);
    p[P.BS] = BigInt(bs);
    p[P.OPS] = BigInt(ops);
    p[P.DEPTH] = BigInt(depth);
    p[P.RANDOM] = random ? 1n : 0n;
    p[P.SPAN] = BigInt(span);
    p[P.SEED] = 0x9e3779b9n;
    const c0 = processCpuSeconds();
    const r = this.#drv.vbd_run(this.#ram, p);
    const cpu = processCpuSeconds() - c0;
    if (r < 0) throw new Error(`bench driver: error ${-Number(r)} (device stopped answering?)`);
    if (p[P.ERRORS] !== 0n) throw new Error(`${p[P.ERRORS]} requests failed`);
    return {
      seconds: Number(p[P.ELAPSED_NS]) / 1e9,
      cpu,
      kicks: Number(p[P.KICKS]),
      waits: Number(p[P.WAITS]),
    };
  }

  /**
   * Notification-to-completion latency of `ops` single 4 KiB reads over
   * `span`, µs, sorted: `spin` watches the used ring (the device alone),
   * otherwise the driver sleeps until the interrupt wakes it.
   */
  latency(ops: number, span: number, spin: boolean): number[] {
    const p = this.#p;
    p[P.TYPE] = 0n;
    p[P.BS] = 4096n;
    p[P.OPS] = BigInt(ops);
    p[P.DEPTH] = 1n;
    p[P.RANDOM] = 1n;
    p[P.SPAN] = BigInt(span);
    p[P.SEED] = 12345n;
    const lat = new Uint32Array(ops);
    const r = this.#drv.vbd_latency(this.#ram, p, lat, ops, spin ? 1 : 0);
    if (r < 0) throw new Error(`bench driver: error ${-Number(r)}`);
    if (p[P.ERRORS] !== 0n) throw new Error(`${p[P.ERRORS]} requests failed`);
    return Array.from(lat, (ns) => ns / 1000).sort((a, b) => a - b);
  }

  /**
   * Opens `backend` in place of the device's current one (`PATCH /drives`:
   * quiesce, switch, resume), closing the old one and its image lock; the
   * device's Worker and its compiled code stay.
   */
  async replace(backend: DriveBackend): Promise<void> {
    await this.#disk.replace(backend);
  }

  /** Stops the device and frees the RAM. */
  async close(): Promise<void> {
    await this.host.close();
    this.mem.close();
  }
}

/** Host floors of one depth-1 read, µs (medians for the wake-up, means for the reads). */
export interface HostFloors {
  /** Two threads waking each other through eventfds: one round trip (two wake-ups). */
  readonly wakeRoundTrip: number;
  /** One 4 KiB page-cache read: pread, preadv2(RWF_NOWAIT), one-entry io_uring. */
  readonly pread: number;
  readonly preadNowait: number;
  readonly uringRead: number;
}

/** Measures {@link HostFloors} with `file` (whole file in the page cache) and the driver library. */
export function hostFloors(
  drv: Deno.DynamicLibrary<typeof DRIVER_SYMBOLS>,
  file: string,
  span: number,
): HostFloors {
  const n = 20_000;
  const rtt = new Uint32Array(n);
  const w = drv.symbols.vbf_wake_rtt(n, rtt);
  if (w < 0n) throw new Error(`vbf_wake_rtt: error ${-Number(w)}`);
  rtt.sort();
  const fd = libc.open(new TextEncoder().encode(file + "\0"), 0);
  if (fd < 0) throw new Error(`open ${file} failed`);
  // A page-aligned 4 KiB buffer, as fio's --iomem_align=4096.
  const buf = new Uint8Array(8192);
  const addr = Number(Deno.UnsafePointer.value(Deno.UnsafePointer.of(buf)));
  const page = buf.subarray((4096 - (addr % 4096)) % 4096).subarray(0, 4096);
  try {
    const reads = (mode: number) => {
      const r = drv.symbols.vbf_reads(fd, BigInt(span), n, mode, page);
      if (r < 0n) throw new Error(`vbf_reads mode ${mode}: error ${-Number(r)}`);
      return Number(r) / n / 1000;
    };
    reads(0); // warm-up
    return {
      wakeRoundTrip: (rtt[n >> 1] ?? 0) / 1000,
      pread: reads(0),
      preadNowait: reads(1),
      uringRead: reads(2),
    };
  } finally {
    libc.close(fd);
  }
}
