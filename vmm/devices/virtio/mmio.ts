/**
 * The virtio-mmio transport (version 2, virtio 1.2 §4.2): the register file
 * a guest driver reads and writes, handled on whichever vCPU thread takes the
 * MMIO exit, against the device's shared state (`layout.ts`).
 *
 * What needs the back end is signalled to it through its control eventfd:
 * DRIVER_OK (activate the queues) and a reset. QueueNotify normally never
 * reaches this code: the machine registers an ioeventfd per queue (datamatch
 * on the queue index), so KVM signals the back end directly. A notify that
 * does exit here (no ioeventfd, or a hostile access width) is forwarded to
 * the same eventfd.
 *
 * A reset waits (bounded, {@link RESET_WAIT_MS}) for the back end to drain
 * requests in flight, because their buffers belong to the driver again once
 * Status reads 0; until the back end is done, Status keeps reading its old
 * value, which the spec asks drivers to wait out (§2.4.2).
 *
 * @module
 */

import { signalEventFd } from "../../../native/io_ffi.ts";
import type { AddressRange, Device, DeviceEnv } from "../device.ts";
import { checkStateSize, type DeviceSpec, DeviceSpecError } from "../spec.ts";
import { decodeDeviceState, encodeDeviceState } from "../state.ts";
import {
  Backend,
  configOffset,
  Ctrl,
  Feature,
  hasFeature,
  MAX_CONFIG_BYTES,
  MAX_QUEUES,
  MMIO_CONFIG,
  MMIO_MAGIC,
  MMIO_VERSION,
  MMIO_WINDOW,
  Q,
  queueWord,
  Reg,
  stateBytes,
  Status,
  VENDOR_ID,
  W,
} from "./layout.ts";

/** Device kind of a virtio-mmio transport spec. */
export const VIRTIO_MMIO_KIND = "virtio-mmio";
/** State version of {@link VirtioMmioTransport.save}. */
export const VIRTIO_STATE_VERSION = 1;
/** Longest a vCPU waits for the back end to finish a reset. */
export const RESET_WAIT_MS = 50;
/** Longest a ConfigGeneration read waits for a configuration update to finish. */
export const CONFIG_WAIT_MS = 50;

/** What a transport is made from (the rest lives in the shared state). */
export interface VirtioTransportOptions {
  /** Device name (checkpoint key). */
  readonly name: string;
  /** Guest-physical base of the 4 KiB window. */
  readonly base: number;
  /** Virtio device id (2 block, 1 network, ...). */
  readonly deviceId: number;
  /** Feature bits the device offers (VERSION_1 is added). */
  readonly features: readonly number[];
  /** Maximum size of each queue (powers of two, 1..32768). */
  readonly queueSizes: readonly number[];
  /** Bytes of device-specific configuration space. */
  readonly configBytes: number;
  /** The back end's control eventfd (-1: no back end, resets happen inline). */
  readonly ctrlFd: number;
  /** Each queue's notify eventfd (the ioeventfd KVM signals), for notifies that exit. */
  readonly notifyFds: readonly number[];
}

/**
 * A fresh spec (with its shared state initialised) for a virtio-mmio
 * transport; every thread builds a {@link VirtioMmioTransport} from it.
 */
export function virtioMmioSpec(o: VirtioTransportOptions): DeviceSpec {
  if (o.queueSizes.length < 1 || o.queueSizes.length > MAX_QUEUES) {
    throw new DeviceSpecError(o.name, `a virtio device has 1..${MAX_QUEUES} queues`);
  }
  for (const n of o.queueSizes) {
    if (!Number.isInteger(n) || n < 1 || n > 32768 || (n & (n - 1)) !== 0) {
      throw new DeviceSpecError(o.name, `queue size ${n} is not a power of two in 1..32768`);
    }
  }
  if (o.configBytes < 0 || o.configBytes > MAX_CONFIG_BYTES) {
    throw new DeviceSpecError(o.name, `config space of ${o.configBytes} bytes is too large`);
  }
  if (o.notifyFds.length !== o.queueSizes.length) {
    throw new DeviceSpecError(o.name, "one notify eventfd per queue is needed");
  }
  const state = new SharedArrayBuffer(stateBytes(o.configBytes));
  const w = new Int32Array(state);
  let lo = 0;
  let hi = 0;
  for (const b of [...o.features, Feature.VERSION_1]) {
    if (b < 32) lo |= 1 << b;
    else if (b < 64) hi |= 1 << (b - 32);
    else throw new DeviceSpecError(o.name, `feature bit ${b} is beyond 63`);
  }
  w[W.DEVICE_FEATURES_LO] = lo;
  w[W.DEVICE_FEATURES_HI] = hi;
  w[W.NUM_QUEUES] = o.queueSizes.length;
  w[W.DEVICE_ID] = o.deviceId;
  w[W.CONFIG_BYTES] = o.configBytes;
  o.queueSizes.forEach((n, q) => w[queueWord(q, Q.NUM_MAX)] = n);
  return {
    kind: VIRTIO_MMIO_KIND,
    name: o.name,
    config: { base: o.base, ctrlFd: o.ctrlFd, notifyFds: [...o.notifyFds] },
    state,
  };
}

/**
 * Clears everything a driver set up: status, features, queues, positions,
 * interrupts; ends a pending reset (RESET_PENDING before STATUS).
 */
export function resetTransportState(w: Int32Array): void {
  Atomics.store(w, W.INTERRUPT_STATUS, 0);
  w[W.DEVICE_FEATURES_SEL] = 0;
  w[W.DRIVER_FEATURES_SEL] = 0;
  w[W.DRIVER_FEATURES_LO] = 0;
  w[W.DRIVER_FEATURES_HI] = 0;
  w[W.QUEUE_SEL] = 0;
  const n = w[W.NUM_QUEUES] ?? 0;
  for (let q = 0; q < n; q++) {
    for (let i = Q.NUM; i <= Q.SIGNALLED_VALID; i++) w[queueWord(q, i)] = 0;
  }
  Atomics.store(w, W.BACKEND, Backend.IDLE);
  // The reset is over before the driver can see it: a driver that reads status 0 (virtio 1.2
  // §2.4.1) next writes ACKNOWLEDGE, which write() drops while RESET_PENDING is set.
  Atomics.store(w, W.RESET_PENDING, 0);
  Atomics.store(w, W.STATUS, 0);
}

function isInt(v: unknown): v is number {
  return typeof v === "number" && Number.isInteger(v);
}

/** One thread's view of a virtio-mmio device's register file. */
export class VirtioMmioTransport implements Device {
  /** Device name. */
  readonly name: string;
  /** No ports. */
  readonly ports: readonly AddressRange[] = [];
  /** The 4 KiB window. */
  readonly mmio: readonly AddressRange[];
  readonly #base: number;
  readonly #w: Int32Array;
  readonly #cfg: Uint8Array;
  readonly #ctrlFd: number;
  readonly #notifyFds: readonly number[];
  readonly #state: SharedArrayBuffer;

  /** Builds this thread's instance from a spec of {@link virtioMmioSpec}. */
  constructor(spec: DeviceSpec, _env?: DeviceEnv) {
    const base = spec.config.base;
    const ctrlFd = spec.config.ctrlFd;
    const notify = spec.config.notifyFds;
    if (!isInt(base) || base < 0 || base % MMIO_WINDOW !== 0) {
      throw new DeviceSpecError(spec.name, `MMIO base ${String(base)} is not 4 KiB aligned`);
    }
    if (!isInt(ctrlFd) || !Array.isArray(notify) || !notify.every(isInt)) {
      throw new DeviceSpecError(spec.name, "config needs ctrlFd and notifyFds (fd numbers)");
    }
    if (!(spec.state instanceof SharedArrayBuffer) || spec.state.byteLength < configOffset()) {
      throw new DeviceSpecError(spec.name, "state is not a virtio-mmio shared state");
    }
    const w = new Int32Array(spec.state);
    checkStateSize(spec, stateBytes(w[W.CONFIG_BYTES] ?? 0));
    this.name = spec.name;
    this.#base = base;
    this.mmio = [{ base, length: MMIO_WINDOW }];
    this.#w = w;
    this.#state = spec.state;
    this.#cfg = new Uint8Array(spec.state, configOffset(), w[W.CONFIG_BYTES] ?? 0);
    this.#ctrlFd = ctrlFd;
    this.#notifyFds = notify as number[];
  }

  #queue(): number {
    const sel = this.#w[W.QUEUE_SEL] ?? 0;
    return sel >= 0 && sel < (this.#w[W.NUM_QUEUES] ?? 0) ? sel : -1;
  }

  /** Guest read of `size` bytes at `addr`. */
  read(addr: number, size: number): number {
    const off = addr - this.#base;
    if (off >= MMIO_CONFIG) return this.#readConfig(off - MMIO_CONFIG, size);
    // Registers are 32-bit and aligned (§4.2.2.2); other widths read as 0.
    if (size !== 4 || (off & 3) !== 0) return 0;
    const w = this.#w;
    switch (off) {
      case Reg.MAGIC:
        return MMIO_MAGIC;
      case Reg.VERSION:
        return MMIO_VERSION;
      case Reg.DEVICE_ID:
        return w[W.DEVICE_ID] ?? 0;
      case Reg.VENDOR_ID:
        return VENDOR_ID;
      case Reg.DEVICE_FEATURES: {
        const sel = w[W.DEVICE_FEATURES_SEL];
        return sel === 0
          ? w[W.DEVICE_FEATURES_LO] ?? 0
          : sel === 1
          ? w[W.DEVICE_FEATURES_HI] ?? 0
          : 0;
      }
      case Reg.QUEUE_NUM_MAX: {
        const q = this.#queue();
        return q < 0 ? 0 : w[queueWord(q, Q.NUM_MAX)] ?? 0;
      }
      case Reg.QUEUE_READY: {
        const q = this.#queue();
        return q < 0 ? 0 : w[queueWord(q, Q.READY)] ?? 0;
      }
      case Reg.INTERRUPT_STATUS:
        return Atomics.load(w, W.INTERRUPT_STATUS);
      case Reg.STATUS:
        return Atomics.load(w, W.STATUS);
      case Reg.CONFIG_GENERATION: {
        // Wait (bounded) out a configuration update in progress, so the generation read
        // after it differs from one read before it (§4.2.2.1, "any risk ... inconsistent").
        const until = performance.now() + CONFIG_WAIT_MS;
        while (Atomics.load(w, W.CONFIG_BUSY) !== 0 && performance.now() < until) {
          Atomics.wait(w, W.CONFIG_BUSY, 1, 1);
        }
        return Atomics.load(w, W.CONFIG_GENERATION);
      }
      case Reg.SHM_LEN_LOW:
      case Reg.SHM_LEN_HIGH:
      case Reg.SHM_BASE_LOW:
      case Reg.SHM_BASE_HIGH:
        return 0xffff_ffff; // no shared memory regions (§4.2.2: length -1)
      default:
        return 0;
    }
  }

  #readConfig(off: number, size: number): number {
    const cfg = this.#cfg;
    if (off + size > cfg.length) return 0; // outside the config space: reads as 0
    let v = 0;
    for (let b = size - 1; b >= 0; b--) v = v * 256 + (cfg[off + b] ?? 0);
    return v;
  }

  /** Guest write of `size` bytes of `value` at `addr`. */
  write(addr: number, size: number, value: number): void {
    const off = addr - this.#base;
    if (off >= MMIO_CONFIG) return; // no writable config fields are offered
    if (size !== 4 || (off & 3) !== 0) return;
    const w = this.#w;
    if (Atomics.load(w, W.RESET_PENDING) !== 0) return; // the device is resetting
    const q = this.#queue();
    const queueEditable = q >= 0 && w[queueWord(q, Q.READY)] === 0 &&
      (Atomics.load(w, W.STATUS) & Status.DRIVER_OK) === 0;
    switch (off) {
      case Reg.DEVICE_FEATURES_SEL:
        w[W.DEVICE_FEATURES_SEL] = value;
        return;
      case Reg.DRIVER_FEATURES_SEL:
        w[W.DRIVER_FEATURES_SEL] = value;
        return;
      case Reg.DRIVER_FEATURES: {
        if ((Atomics.load(w, W.STATUS) & Status.FEATURES_OK) !== 0) return;
        const sel = w[W.DRIVER_FEATURES_SEL];
        if (sel === 0) w[W.DRIVER_FEATURES_LO] = value;
        else if (sel === 1) w[W.DRIVER_FEATURES_HI] = value;
        return;
      }
      case Reg.QUEUE_SEL:
        w[W.QUEUE_SEL] = value;
        return;
      case Reg.QUEUE_NUM:
        if (queueEditable) w[queueWord(q, Q.NUM)] = value;
        return;
      case Reg.QUEUE_READY:
        if (q >= 0 && (Atomics.load(w, W.STATUS) & Status.DRIVER_OK) === 0) {
          w[queueWord(q, Q.READY)] = value & 1;
        }
        return;
      case Reg.QUEUE_DESC_LOW:
      case Reg.QUEUE_DESC_HIGH:
      case Reg.QUEUE_DRIVER_LOW:
      case Reg.QUEUE_DRIVER_HIGH:
      case Reg.QUEUE_DEVICE_LOW:
      case Reg.QUEUE_DEVICE_HIGH:
        if (queueEditable) {
          // 0x80/0x84 desc, 0x90/0x94 driver, 0xa0/0xa4 device: low then high word.
          const word = Q.DESC_LO + ((off - Reg.QUEUE_DESC_LOW) >> 4) * 2 + ((off >> 2) & 1);
          w[queueWord(q, word)] = value;
        }
        return;
      case Reg.QUEUE_NOTIFY: {
        const fd = this.#notifyFds[value];
        if (fd !== undefined && fd >= 0 && value < (w[W.NUM_QUEUES] ?? 0)) signalEventFd(fd);
        return;
      }
      case Reg.INTERRUPT_ACK:
        Atomics.and(w, W.INTERRUPT_STATUS, ~value);
        return;
      case Reg.STATUS:
        this.#writeStatus(value & 0xff);
        return;
      default:
        return; // read-only, unknown, QueueReset (RING_RESET is not offered)
    }
  }

  #writeStatus(value: number): void {
    const w = this.#w;
    if (value === 0) return this.#reset();
    const old = Atomics.load(w, W.STATUS);
    let next = value | (old & Status.DEVICE_NEEDS_RESET);
    if ((next & Status.FEATURES_OK) !== 0 && (old & Status.FEATURES_OK) === 0) {
      if (!this.#featuresAcceptable()) next &= ~Status.FEATURES_OK;
    }
    // Bits once set stay set until a reset (a driver never clears them, §2.1).
    next |= old & (Status.ACKNOWLEDGE | Status.DRIVER | Status.FEATURES_OK | Status.DRIVER_OK);
    // Compare-and-swap so a DEVICE_NEEDS_RESET the back end sets meanwhile survives.
    for (;;) {
      const cur = Atomics.load(w, W.STATUS);
      const merged = next | (cur & Status.DEVICE_NEEDS_RESET);
      if (Atomics.compareExchange(w, W.STATUS, cur, merged) === cur) break;
    }
    if ((next & Status.DRIVER_OK) !== 0 && (old & Status.DRIVER_OK) === 0) {
      this.#request(Ctrl.ACTIVATE);
    }
  }

  #featuresAcceptable(): boolean {
    const w = this.#w;
    const lo = w[W.DRIVER_FEATURES_LO] ?? 0;
    const hi = w[W.DRIVER_FEATURES_HI] ?? 0;
    const devLo = w[W.DEVICE_FEATURES_LO] ?? 0;
    const devHi = w[W.DEVICE_FEATURES_HI] ?? 0;
    if ((lo & ~devLo) !== 0 || (hi & ~devHi) !== 0) return false; // asked for more than offered
    return hasFeature(lo, hi, Feature.VERSION_1); // modern only
  }

  #request(bit: number): void {
    Atomics.or(this.#w, W.CTRL, bit);
    if (this.#ctrlFd >= 0 && Atomics.load(this.#w, W.WORKER_GONE) === 0) {
      signalEventFd(this.#ctrlFd);
    }
  }

  #reset(): void {
    const w = this.#w;
    // Status 0 with an idle back end: nothing to drain (the driver set nothing up since the
    // last reset), so the reset is done here. Handed to a slow back end instead, it would leave
    // a window where status already reads 0 (so the driver goes on, §2.4.1) but its writes are
    // dropped because the reset is still pending.
    if (
      this.#ctrlFd < 0 ||
      (Atomics.load(w, W.STATUS) === 0 && Atomics.load(w, W.BACKEND) === Backend.IDLE)
    ) {
      resetTransportState(w);
      return;
    }
    Atomics.store(w, W.RESET_PENDING, 1);
    this.#request(Ctrl.RESET);
    Atomics.wait(w, W.RESET_PENDING, 1, RESET_WAIT_MS);
  }

  /**
   * Stops the back end taking requests and resolves once none is in flight
   * (an armed disk overlay has taken over by then). Notifications keep
   * arriving and wait in the queues. A device without a back end is always
   * quiesced.
   */
  async quiesce(): Promise<void> {
    const w = this.#w;
    if (this.#ctrlFd < 0 || Atomics.load(w, W.QUIESCED) === 2) {
      Atomics.store(w, W.QUIESCED, 2);
      return;
    }
    Atomics.store(w, W.QUIESCED, 1);
    this.#request(Ctrl.QUIESCE);
    for (;;) {
      const v = Atomics.load(w, W.QUIESCED);
      if (v === 2) return;
      if (v === 0) throw new DeviceSpecError(this.name, "resumed while quiescing");
      if (Atomics.load(w, W.WORKER_GONE) !== 0) {
        throw new DeviceSpecError(this.name, "the device's I/O worker is gone; it cannot quiesce");
      }
      const r = Atomics.waitAsync(w, W.QUIESCED, v, 100);
      if (r.async) await r.value;
    }
  }

  /** Whether the device is quiesced (nothing in flight, nothing taken). */
  get quiesced(): boolean {
    return Atomics.load(this.#w, W.QUIESCED) === 2;
  }

  /** Lets the back end take requests again; returns at once. */
  resume(): void {
    Atomics.store(this.#w, W.QUIESCED, 0);
    this.#request(Ctrl.RESUME);
  }

  /** A copy of the whole shared state (call while the device is quiesced). */
  save(): Uint8Array {
    return encodeDeviceState(
      VIRTIO_MMIO_KIND,
      VIRTIO_STATE_VERSION,
      new Uint8Array(this.#state).slice(),
    );
  }

  /**
   * Replaces the shared state with `state` (same device shape); the back end
   * rebuilds its queues from it when it runs next.
   */
  restore(state: Uint8Array): void {
    const bytes = decodeDeviceState(
      VIRTIO_MMIO_KIND,
      VIRTIO_STATE_VERSION,
      this.#state.byteLength,
      state,
    );
    const saved = new Int32Array(
      bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.length),
    );
    const w = this.#w;
    for (
      const k of [
        W.DEVICE_ID,
        W.NUM_QUEUES,
        W.CONFIG_BYTES,
        W.DEVICE_FEATURES_LO,
        W.DEVICE_FEATURES_HI,
      ]
    ) {
      if (saved[k] !== w[k]) {
        throw new DeviceSpecError(
          this.name,
          "saved state is of a device with another id, features or queues",
        );
      }
    }
    if ((saved[W.INFLIGHT] ?? 0) !== 0) {
      throw new DeviceSpecError(
        this.name,
        "saved state has requests in flight; quiesce before save()",
      );
    }
    // Words that describe this process's Worker, not the device, survive the copy.
    const messages = Atomics.load(w, W.MESSAGES);
    new Uint8Array(this.#state).set(bytes);
    Atomics.store(w, W.MESSAGES, messages);
    // The back end's view is stale: it re-reads the queues from the restored words.
    Atomics.store(w, W.BACKEND, Backend.IDLE);
    Atomics.store(w, W.CTRL, 0);
    Atomics.store(w, W.RESET_PENDING, 0);
    Atomics.store(w, W.WORKER_GONE, 0);
    Atomics.store(w, W.CONFIG_BUSY, 0);
    if ((Atomics.load(w, W.STATUS) & Status.DRIVER_OK) !== 0) this.#request(Ctrl.ACTIVATE);
  }
}
