/**
 * The shared state of one virtio-mmio device: the transport's register file,
 * each queue's configuration and the device's queue positions, and the
 * device-specific configuration space, all in one `SharedArrayBuffer` that
 * every vCPU thread's transport instance and the device's one back end (on
 * its I/O Worker) see. Saving a quiesced device is copying these bytes.
 *
 * Words are Int32 (accessed with `Atomics` where two threads meet);
 * the configuration space is bytes at {@link configOffset}.
 *
 * @module
 */

/** virtio-mmio magic `"virt"`. */
export const MMIO_MAGIC = 0x7472_6976;
/** virtio-mmio version 2 (virtio 1.x, modern only). */
export const MMIO_VERSION = 2;
/** Vendor id vmkit reports (`"VMKT"`). */
export const VENDOR_ID = 0x544b_4d56;
/** Bytes of one device's MMIO window. */
export const MMIO_WINDOW = 0x1000;
/** Offset of the device-specific configuration space in the window. */
export const MMIO_CONFIG = 0x100;
/** Largest device-specific configuration space. */
export const MAX_CONFIG_BYTES = MMIO_WINDOW - MMIO_CONFIG;
/** Most queues one device has. */
export const MAX_QUEUES = 16;

/** Register offsets of the virtio-mmio window (virtio 1.2 §4.2.2). */
export const Reg = {
  MAGIC: 0x000,
  VERSION: 0x004,
  DEVICE_ID: 0x008,
  VENDOR_ID: 0x00c,
  DEVICE_FEATURES: 0x010,
  DEVICE_FEATURES_SEL: 0x014,
  DRIVER_FEATURES: 0x020,
  DRIVER_FEATURES_SEL: 0x024,
  QUEUE_SEL: 0x030,
  QUEUE_NUM_MAX: 0x034,
  QUEUE_NUM: 0x038,
  QUEUE_READY: 0x044,
  QUEUE_NOTIFY: 0x050,
  INTERRUPT_STATUS: 0x060,
  INTERRUPT_ACK: 0x064,
  STATUS: 0x070,
  QUEUE_DESC_LOW: 0x080,
  QUEUE_DESC_HIGH: 0x084,
  QUEUE_DRIVER_LOW: 0x090,
  QUEUE_DRIVER_HIGH: 0x094,
  QUEUE_DEVICE_LOW: 0x0a0,
  QUEUE_DEVICE_HIGH: 0x0a4,
  SHM_SEL: 0x0ac,
  SHM_LEN_LOW: 0x0b0,
  SHM_LEN_HIGH: 0x0b4,
  SHM_BASE_LOW: 0x0b8,
  SHM_BASE_HIGH: 0x0bc,
  QUEUE_RESET: 0x0c0,
  CONFIG_GENERATION: 0x0fc,
} as const;

/** Device status bits (virtio 1.2 §2.1). */
export const Status = {
  ACKNOWLEDGE: 1,
  DRIVER: 2,
  DRIVER_OK: 4,
  FEATURES_OK: 8,
  DEVICE_NEEDS_RESET: 64,
  FAILED: 128,
} as const;

/** InterruptStatus bits. */
export const Interrupt = { USED_BUFFER: 1, CONFIG_CHANGE: 2 } as const;

/** Transport feature bits (virtio 1.2 §6). */
export const Feature = {
  INDIRECT_DESC: 28,
  EVENT_IDX: 29,
  VERSION_1: 32,
} as const;

/** Requests a vCPU thread (or the main thread) raises for the back end in {@link W.CTRL}. */
export const Ctrl = {
  /** DRIVER_OK was set: validate the queues and start. */
  ACTIVATE: 1,
  /** The driver wrote 0 to Status: drain, then reset (Status reads non-zero until done). */
  RESET: 2,
  /** Finish or hold in-flight requests and stop taking new ones. */
  QUIESCE: 4,
  /** Leave the quiesced state. */
  RESUME: 8,
  /** Close the back end and end the Worker. */
  SHUTDOWN: 16,
  /** Main-thread messages are waiting (the loop yields to its event loop). */
  MESSAGE: 32,
} as const;

/** Back-end state values in {@link W.BACKEND}. */
export const Backend = {
  /** Not activated (before DRIVER_OK or after a reset). */
  IDLE: 0,
  /** Processing queues. */
  ACTIVE: 1,
  /** Activated but quiesced: nothing in flight, queues not read. */
  QUIESCED: 2,
  /** The device failed (DEVICE_NEEDS_RESET set); waits for a reset. */
  BROKEN: 3,
} as const;

/** Int32 word indices of the transport state. */
export const W = {
  STATUS: 0,
  DEVICE_FEATURES_SEL: 1,
  DRIVER_FEATURES_SEL: 2,
  DRIVER_FEATURES_LO: 3,
  DRIVER_FEATURES_HI: 4,
  QUEUE_SEL: 5,
  INTERRUPT_STATUS: 6,
  CONFIG_GENERATION: 7,
  CTRL: 8,
  BACKEND: 9,
  RESET_PENDING: 10,
  DEVICE_FEATURES_LO: 11,
  DEVICE_FEATURES_HI: 12,
  NUM_QUEUES: 13,
  DEVICE_ID: 14,
  CONFIG_BYTES: 15,
  /** Guest errors the device saw (bad descriptors, bad requests): for tests and metrics. */
  GUEST_ERRORS: 16,
  /** Set while quiesced: the back end takes nothing from the queues. */
  QUIESCED: 17,
  /** Requests in flight in the back end (popped, not yet used). */
  INFLIGHT: 18,
  /** Requests completed since creation (wraps at 2^31), for metrics. */
  COMPLETED: 19,
  /** Interrupts raised, for metrics. */
  INTERRUPTS: 20,
  /** Set by the main thread when the device's I/O Worker has ended or failed. */
  WORKER_GONE: 21,
  /** Calls the main thread has posted to the I/O Worker (the Worker counts deliveries). */
  MESSAGES: 22,
  /** Scratch word for full memory barriers (a seq_cst store is an xchg on x86). */
  FENCE: 23,
  /**
   * 1 while the back end rewrites the configuration space: a ConfigGeneration
   * read waits for it, so a driver's generation-bracketed read never sees a
   * half-written space with an unchanged generation.
   */
  CONFIG_BUSY: 24,
  /** First queue block. */
  QUEUE0: 32,
} as const;

/** Words per queue block. */
export const QUEUE_WORDS = 16;

/** Word offsets inside a queue block. */
export const Q = {
  NUM_MAX: 0,
  NUM: 1,
  READY: 2,
  DESC_LO: 3,
  DESC_HI: 4,
  DRIVER_LO: 5,
  DRIVER_HI: 6,
  DEVICE_LO: 7,
  DEVICE_HI: 8,
  /** Device: next avail ring index to take (u16 as a word). */
  LAST_AVAIL: 9,
  /** Device: next used ring index to fill (u16). */
  NEXT_USED: 10,
  /** Device: used index at the last interrupt (for EVENT_IDX), u16. */
  SIGNALLED_USED: 11,
  /** Device: 1 when SIGNALLED_USED is meaningful. */
  SIGNALLED_VALID: 12,
} as const;

/** Word index of word `w` of queue `q`. */
export function queueWord(q: number, w: number): number {
  return W.QUEUE0 + q * QUEUE_WORDS + w;
}

/** Byte offset of the configuration space in the shared state. */
export function configOffset(): number {
  return (W.QUEUE0 + MAX_QUEUES * QUEUE_WORDS) * 4;
}

/** Bytes of shared state for a device with `configBytes` of configuration space. */
export function stateBytes(configBytes: number): number {
  return configOffset() + Math.ceil(configBytes / 4) * 4;
}

/** 64-bit feature set as two 32-bit halves (bits ≥ 64 are never offered). */
export function featureBits(bits: readonly number[]): { lo: number; hi: number } {
  let lo = 0;
  let hi = 0;
  for (const b of bits) {
    if (!Number.isInteger(b) || b < 0 || b > 63) throw new RangeError(`feature bit ${b}`);
    if (b < 32) lo |= 1 << b;
    else hi |= 1 << (b - 32);
  }
  return { lo: lo >>> 0, hi: hi >>> 0 };
}

/** Whether feature `bit` is in the pair `lo`/`hi`. */
export function hasFeature(lo: number, hi: number, bit: number): boolean {
  return bit < 32 ? ((lo >>> bit) & 1) === 1 : ((hi >>> (bit - 32)) & 1) === 1;
}
