/**
 * A host-side virtio-mmio driver for tests and benchmarks: it plays the
 * guest. It programs a device's register file (the same transport code a
 * vCPU thread runs), lays split virtqueues out in guest RAM, places
 * descriptor chains, rings the queue's notify eventfd (as KVM's ioeventfd
 * would) and waits on the interrupt eventfd (as the irqfd would deliver).
 * Written from the virtio 1.2 spec, independently of the device code.
 *
 * @module
 */

import { FdWaiter } from "../../native/io_ffi.ts";
import type { HostMemory } from "../../vmm/memory.ts";
import { MmioAllocator } from "../../vmm/devices/mmio_allocator.ts";
import { type BlkBackendConfig, blkDeviceConfig } from "../../vmm/devices/virtio/blk_format.ts";
import { VirtioDeviceHost } from "../../vmm/devices/virtio/host.ts";
import type { DriveConfig } from "../../vmm/io_config.ts";
import { VirtioMmioTransport } from "../../vmm/devices/virtio/mmio.ts";

/** Register offsets (virtio 1.2 §4.2.2), written out again here on purpose. */
export const R = {
  MAGIC: 0x00,
  VERSION: 0x04,
  DEVICE_ID: 0x08,
  DEVICE_FEATURES: 0x10,
  DEVICE_FEATURES_SEL: 0x14,
  DRIVER_FEATURES: 0x20,
  DRIVER_FEATURES_SEL: 0x24,
  QUEUE_SEL: 0x30,
  QUEUE_NUM_MAX: 0x34,
  QUEUE_NUM: 0x38,
  QUEUE_READY: 0x44,
  QUEUE_NOTIFY: 0x50,
  INTERRUPT_STATUS: 0x60,
  INTERRUPT_ACK: 0x64,
  STATUS: 0x70,
  QUEUE_DESC_LOW: 0x80,
  QUEUE_DESC_HIGH: 0x84,
  QUEUE_DRIVER_LOW: 0x90,
  QUEUE_DRIVER_HIGH: 0x94,
  QUEUE_DEVICE_LOW: 0xa0,
  QUEUE_DEVICE_HIGH: 0xa4,
  CONFIG_GENERATION: 0xfc,
  CONFIG: 0x100,
} as const;

/** Status bits. */
export const S = { ACK: 1, DRIVER: 2, DRIVER_OK: 4, FEATURES_OK: 8, NEEDS_RESET: 64, FAILED: 128 };

/** Starts a virtio-blk device for `drive` over `mem` in the first MMIO slot (or `alloc`'s next). */
export function startBlk(
  mem: HostMemory,
  drive: DriveConfig,
  alloc = new MmioAllocator(),
  syncWriteStallMs?: number,
): Promise<VirtioDeviceHost> {
  const cfg = blkDeviceConfig(drive);
  const config = syncWriteStallMs === undefined ? cfg : {
    ...cfg,
    backendConfig: { ...(cfg.backendConfig as BlkBackendConfig), syncWriteStallMs },
  };
  return VirtioDeviceHost.start(config, mem.regions, alloc.allocate(drive.id));
}

/** One buffer of a chain. */
export interface Buf {
  addr: number;
  len: number;
  write: boolean;
}

/** A used element. */
export interface Used {
  id: number;
  len: number;
}

/** Where one queue's rings live. */
export interface QueueLayout {
  desc: number;
  avail: number;
  used: number;
  size: number;
}

/** Lays out a queue of `size` at `base` (desc, then avail, then used at 4 KiB alignment). */
export function queueLayout(base: number, size: number): QueueLayout {
  const desc = base;
  const avail = desc + 16 * size;
  const used = Math.ceil((avail + 6 + 2 * size) / 4096) * 4096;
  return { desc, avail, used, size };
}

interface QueueState {
  index: number;
  layout: QueueLayout;
  nextDesc: number;
  availIdx: number;
  lastUsed: number;
}

/** A driver for one device. */
export class HostDriver {
  readonly mem: HostMemory;
  regs: VirtioMmioTransport;
  readonly base: number;
  host: VirtioDeviceHost;
  #irq: FdWaiter;
  /** Each set-up queue's layout and driver positions; methods act on the selected one. */
  readonly #queues = new Map<number, QueueState>();
  #cur: QueueState | undefined;
  eventIdx = false;

  constructor(mem: HostMemory, host: VirtioDeviceHost) {
    this.mem = mem;
    this.host = host;
    this.base = host.slot.base;
    this.regs = new VirtioMmioTransport(host.spec);
    this.#irq = new FdWaiter([host.irq.fd], [true]);
  }

  /** Drives `host` from now on (a restored device), keeping the queue state. */
  rebind(host: VirtioDeviceHost): void {
    this.host = host;
    this.regs = new VirtioMmioTransport(host.spec);
    this.#irq = new FdWaiter([host.irq.fd], [true]);
  }

  read(off: number): number {
    return this.regs.read(this.base + off, 4) >>> 0;
  }

  write(off: number, v: number): void {
    this.regs.write(this.base + off, 4, v >>> 0);
  }

  /** Config-space read of `size` bytes. */
  config(off: number, size: number): number {
    return this.regs.read(this.base + R.CONFIG + off, size);
  }

  /** 64-bit feature set the device offers. */
  deviceFeatures(): bigint {
    this.write(R.DEVICE_FEATURES_SEL, 0);
    const lo = this.read(R.DEVICE_FEATURES);
    this.write(R.DEVICE_FEATURES_SEL, 1);
    const hi = this.read(R.DEVICE_FEATURES);
    return (BigInt(hi) << 32n) | BigInt(lo);
  }

  /** Reset, ACK, DRIVER, features, FEATURES_OK; returns the status read back. */
  negotiate(features: bigint): number {
    this.write(R.STATUS, 0);
    this.write(R.STATUS, S.ACK);
    this.write(R.STATUS, S.ACK | S.DRIVER);
    this.write(R.DRIVER_FEATURES_SEL, 0);
    this.write(R.DRIVER_FEATURES, Number(features & 0xffff_ffffn));
    this.write(R.DRIVER_FEATURES_SEL, 1);
    this.write(R.DRIVER_FEATURES, Number(features >> 32n));
    this.write(R.STATUS, S.ACK | S.DRIVER | S.FEATURES_OK);
    this.eventIdx = ((features >> 29n) & 1n) === 1n;
    return this.read(R.STATUS);
  }

  /** Programs queue `q` with layout `l` and marks it ready. */
  setupQueue(q: number, l: QueueLayout): void {
    this.write(R.QUEUE_SEL, q);
    this.write(R.QUEUE_NUM, l.size);
    this.write(R.QUEUE_DESC_LOW, l.desc % 2 ** 32);
    this.write(R.QUEUE_DESC_HIGH, Math.floor(l.desc / 2 ** 32));
    this.write(R.QUEUE_DRIVER_LOW, l.avail % 2 ** 32);
    this.write(R.QUEUE_DRIVER_HIGH, Math.floor(l.avail / 2 ** 32));
    this.write(R.QUEUE_DEVICE_LOW, l.used % 2 ** 32);
    this.write(R.QUEUE_DEVICE_HIGH, Math.floor(l.used / 2 ** 32));
    this.write(R.QUEUE_READY, 1);
    const end = l.used + 6 + 8 * l.size;
    // A hostile test may place rings outside RAM: only a sane layout is zeroed.
    if (end > l.desc && end <= this.mem.size) this.mem.write(l.desc, new Uint8Array(end - l.desc));
    this.#cur = { index: q, layout: l, nextDesc: 0, availIdx: 0, lastUsed: 0 };
    this.#queues.set(q, this.#cur);
  }

  /** Sets DRIVER_OK. */
  driverOk(): void {
    this.write(R.STATUS, this.read(R.STATUS) | S.DRIVER_OK);
  }

  /** Selects queue `q` (set up before) for the methods that follow. */
  use(q: number): this {
    const st = this.#queues.get(q);
    if (st === undefined) throw new Error(`queue ${q} not set up`);
    this.#cur = st;
    return this;
  }

  #state(): QueueState {
    if (this.#cur === undefined) throw new Error("queue not set up");
    return this.#cur;
  }

  #layout(): QueueLayout {
    if (this.#cur === undefined) throw new Error("queue not set up");
    return this.#cur.layout;
  }

  /** Writes descriptor `i` raw (for hostile tests). */
  writeDesc(i: number, addr: number, len: number, flags: number, next: number): void {
    const l = this.#layout();
    const v = new DataView(
      this.mem.view(l.desc + 16 * i, 16).buffer,
      this.mem.view(l.desc + 16 * i, 16).byteOffset,
      16,
    );
    v.setBigUint64(0, BigInt(addr), true);
    v.setUint32(8, len >>> 0, true);
    v.setUint16(12, flags, true);
    v.setUint16(14, next, true);
  }

  /** Places a chain of `bufs` (descriptors allocated round-robin); returns its head. */
  addChain(bufs: readonly Buf[]): number {
    const l = this.#layout();
    const st = this.#state();
    const head = st.nextDesc;
    for (let i = 0; i < bufs.length; i++) {
      const b = bufs[i];
      if (b === undefined) continue;
      const idx = (head + i) % l.size;
      const nxt = (head + i + 1) % l.size;
      const more = i + 1 < bufs.length;
      this.writeDesc(idx, b.addr, b.len, (more ? 1 : 0) | (b.write ? 2 : 0), more ? nxt : 0);
    }
    st.nextDesc = (head + bufs.length) % l.size;
    this.publish(head);
    return head;
  }

  /** Puts `head` on the avail ring and bumps avail.idx. */
  publish(head: number): void {
    const l = this.#layout();
    const ring = this.mem.view(l.avail, 4 + 2 * l.size + 2);
    const v = new DataView(ring.buffer, ring.byteOffset, ring.byteLength);
    const st = this.#state();
    v.setUint16(4 + 2 * (st.availIdx % l.size), head, true);
    st.availIdx = (st.availIdx + 1) & 0xffff;
    v.setUint16(2, st.availIdx, true);
  }

  /** Sets avail.used_event (EVENT_IDX) or the avail flags. */
  setUsedEvent(idx: number): void {
    const l = this.#layout();
    const v = this.mem.view(l.avail + 4 + 2 * l.size, 2);
    new DataView(v.buffer, v.byteOffset, 2).setUint16(0, idx, true);
  }

  /** The device's avail_event (EVENT_IDX). */
  availEvent(): number {
    const l = this.#layout();
    const v = this.mem.view(l.used + 4 + 8 * l.size, 2);
    return new DataView(v.buffer, v.byteOffset, 2).getUint16(0, true);
  }

  /** Rings queue `q`'s notify eventfd (default the selected one), as KVM's ioeventfd does. */
  kick(q = this.#cur?.index ?? 0): void {
    this.host.notify[q]?.signal();
  }

  /** used.idx. */
  usedIdx(): number {
    const l = this.#layout();
    const v = this.mem.view(l.used, 4);
    return new DataView(v.buffer, v.byteOffset, 4).getUint16(2, true);
  }

  /** Takes every used element published since the last call. */
  takeUsed(): Used[] {
    const l = this.#layout();
    const out: Used[] = [];
    const idx = this.usedIdx();
    const st = this.#state();
    while (st.lastUsed !== idx) {
      const v = this.mem.view(l.used + 4 + 8 * (st.lastUsed % l.size), 8);
      const dv = new DataView(v.buffer, v.byteOffset, 8);
      out.push({ id: dv.getUint32(0, true), len: dv.getUint32(4, true) });
      st.lastUsed = (st.lastUsed + 1) & 0xffff;
    }
    if (this.eventIdx) this.setUsedEvent(st.lastUsed);
    return out;
  }

  /** Waits (up to `timeoutMs`) for an interrupt; acks it; returns InterruptStatus (0 on timeout). */
  async waitIrq(timeoutMs = 5000): Promise<number> {
    const bits = await this.#irq.wait(timeoutMs);
    if (bits === 0) return 0;
    const st = this.read(R.INTERRUPT_STATUS);
    this.write(R.INTERRUPT_ACK, st);
    return st;
  }

  /** Waits until `n` used elements are collected (interrupt-driven). */
  async collect(n: number, timeoutMs = 5000): Promise<Used[]> {
    const out: Used[] = [];
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      out.push(...this.takeUsed());
      if (out.length >= n) return out;
      const left = deadline - Date.now();
      if (left <= 0) {
        throw new Error(`only ${out.length} of ${n} requests completed in ${timeoutMs} ms`);
      }
      await this.waitIrq(Math.min(left, 200));
    }
  }
}
