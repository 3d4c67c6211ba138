/**
 * The device side of a split virtqueue (virtio 1.2 §2.7): taking descriptor
 * chains from the available ring (direct and indirect), returning them on
 * the used ring, and deciding when the driver wants an interrupt
 * (`VIRTIO_F_EVENT_IDX` or the ring flags).
 *
 * Everything the guest wrote is checked before use: the ring areas at
 * activation (size a power of two no larger than the device's maximum,
 * alignment, wholly inside RAM), and every descriptor when its chain is
 * taken (head and `next` indices inside the table, chains no longer than
 * the queue size, so a loop ends there too; indirect tables only when
 * negotiated, never nested, never with NEXT, a multiple of 16 bytes; every
 * buffer inside one RAM region). A bad chain makes {@link SplitQueue.pop}
 * return {@link POP_ERROR} with the reason in {@link SplitQueue.error}; the
 * device then sets DEVICE_NEEDS_RESET.
 *
 * The ring positions (next avail index, next used index, the used index of
 * the last interrupt) live in the device's shared state, so a quiesced
 * device is saved by copying it and a restored one continues exactly.
 *
 * No allocation per chain: {@link DescChain} is reused.
 *
 * @module
 */

import { type GuestRam, joinAddr } from "./guest_ram.ts";
import { Q, queueWord, W } from "./layout.ts";

const DESC_F_NEXT = 1;
const DESC_F_WRITE = 2;
const DESC_F_INDIRECT = 4;
const AVAIL_F_NO_INTERRUPT = 1;
const DESC_BYTES = 16;

/** {@link SplitQueue.pop}: no chain available. */
export const POP_EMPTY = 0;
/** {@link SplitQueue.pop}: a chain was taken into the {@link DescChain}. */
export const POP_OK = 1;
/** {@link SplitQueue.pop}: the driver broke the queue (see {@link SplitQueue.error}). */
export const POP_ERROR: number = -1;

/** One descriptor chain's buffers, resolved to RAM regions. Reused between chains. */
export class DescChain {
  /** Head descriptor index (what goes back on the used ring). */
  head = 0;
  /** Number of buffers. */
  count = 0;
  /** Buffers before the first device-writable one. */
  readable = 0;
  /** Total bytes of device-readable buffers. */
  readBytes = 0;
  /** Total bytes of device-writable buffers. */
  writeBytes = 0;
  /** RAM region of each buffer. */
  readonly region: Int32Array;
  /** Guest-physical address of each buffer. */
  readonly addr: Float64Array;
  /** Length of each buffer. */
  readonly len: Float64Array;
  /** 1 when the buffer is device-writable. */
  readonly write: Uint8Array;

  /** Room for chains of up to `capacity` buffers. */
  constructor(capacity: number) {
    this.region = new Int32Array(capacity);
    this.addr = new Float64Array(capacity);
    this.len = new Float64Array(capacity);
    this.write = new Uint8Array(capacity);
  }
}

/** Why a queue's configuration was refused at activation (null when it is fine). */
export function checkQueueConfig(ram: GuestRam, w: Int32Array, q: number): string | null {
  const size = w[queueWord(q, Q.NUM)] ?? 0;
  const max = w[queueWord(q, Q.NUM_MAX)] ?? 0;
  if (size < 1 || size > max || (size & (size - 1)) !== 0) {
    return `queue ${q}: size ${size} is not a power of two in 1..${max}`;
  }
  const desc = joinAddr(w[queueWord(q, Q.DESC_LO)] ?? 0, w[queueWord(q, Q.DESC_HI)] ?? 0);
  const avail = joinAddr(w[queueWord(q, Q.DRIVER_LO)] ?? 0, w[queueWord(q, Q.DRIVER_HI)] ?? 0);
  const used = joinAddr(w[queueWord(q, Q.DEVICE_LO)] ?? 0, w[queueWord(q, Q.DEVICE_HI)] ?? 0);
  if (desc < 0 || desc % 16 !== 0 || ram.find(desc, DESC_BYTES * size) < 0) {
    return `queue ${q}: descriptor table at 0x${desc.toString(16)} is not 16-aligned RAM`;
  }
  if (avail < 0 || avail % 2 !== 0 || ram.find(avail, 6 + 2 * size) < 0) {
    return `queue ${q}: driver area at 0x${avail.toString(16)} is not 2-aligned RAM`;
  }
  if (used < 0 || used % 4 !== 0 || ram.find(used, 6 + 8 * size) < 0) {
    return `queue ${q}: device area at 0x${used.toString(16)} is not 4-aligned RAM`;
  }
  return null;
}

/** An activated split virtqueue (device side). Build only after {@link checkQueueConfig} passed. */
export class SplitQueue {
  /** Queue index. */
  readonly index: number;
  /** Queue size (a power of two). */
  readonly size: number;
  /** Why the last {@link pop} returned {@link POP_ERROR}. */
  error = "";
  /**
   * Whether {@link pop} re-arms the driver's notifications (EVENT_IDX's
   * avail_event moves past each chain taken, as QEMU does). A device that
   * calls {@link armNotify} and re-checks {@link pending} before every sleep
   * clears it: the driver then does not notify while the device is busy
   * taking chains (virtio 1.2 §2.7.10), only once after the device re-armed.
   */
  notifyOnPop = true;
  readonly #ram: GuestRam;
  readonly #w: Int32Array;
  readonly #eventIdx: boolean;
  readonly #indirect: boolean;
  readonly #desc: DataView;
  readonly #descOff: number;
  readonly #avail: DataView;
  readonly #availOff: number;
  readonly #used: DataView;
  readonly #usedOff: number;
  readonly #wLastAvail: number;
  readonly #wNextUsed: number;
  readonly #wSignalled: number;
  readonly #wSignalledValid: number;

  /** Binds queue `q` of the shared state `w` over `ram` with the negotiated features. */
  constructor(ram: GuestRam, w: Int32Array, q: number, eventIdx: boolean, indirect: boolean) {
    this.index = q;
    this.size = w[queueWord(q, Q.NUM)] ?? 0;
    this.#ram = ram;
    this.#w = w;
    this.#eventIdx = eventIdx;
    this.#indirect = indirect;
    const desc = joinAddr(w[queueWord(q, Q.DESC_LO)] ?? 0, w[queueWord(q, Q.DESC_HI)] ?? 0);
    const avail = joinAddr(w[queueWord(q, Q.DRIVER_LO)] ?? 0, w[queueWord(q, Q.DRIVER_HI)] ?? 0);
    const used = joinAddr(w[queueWord(q, Q.DEVICE_LO)] ?? 0, w[queueWord(q, Q.DEVICE_HI)] ?? 0);
    const d = ram.find(desc, DESC_BYTES * this.size);
    const a = ram.find(avail, 6 + 2 * this.size);
    const u = ram.find(used, 6 + 8 * this.size);
    const dv = (i: number): DataView => {
      const v = ram.views[i];
      if (v === undefined) throw new RangeError(`queue ${q}: ring outside RAM (check first)`);
      return v;
    };
    this.#desc = dv(d);
    this.#descOff = ram.offset(d, desc);
    this.#avail = dv(a);
    this.#availOff = ram.offset(a, avail);
    this.#used = dv(u);
    this.#usedOff = ram.offset(u, used);
    this.#wLastAvail = queueWord(q, Q.LAST_AVAIL);
    this.#wNextUsed = queueWord(q, Q.NEXT_USED);
    this.#wSignalled = queueWord(q, Q.SIGNALLED_USED);
    this.#wSignalledValid = queueWord(q, Q.SIGNALLED_VALID);
    // used.flags is the device's: 0, as the spec requires with EVENT_IDX and as vmkit
    // (which never asks the driver to skip notifications) wants without (§2.7.10.1).
    this.#used.setUint16(this.#usedOff, 0, true);
  }

  /** The driver's avail.idx. */
  availIdx(): number {
    return this.#avail.getUint16(this.#availOff + 2, true);
  }

  /** Chains the driver made available that the device has not taken. */
  pending(): number {
    return (this.availIdx() - (this.#w[this.#wLastAvail] ?? 0)) & 0xffff;
  }

  /**
   * Takes the next available chain into `chain`. Returns {@link POP_OK},
   * {@link POP_EMPTY}, or {@link POP_ERROR} when the driver's ring or
   * descriptors are invalid (nothing is taken then).
   */
  pop(chain: DescChain): number {
    const w = this.#w;
    const last = w[this.#wLastAvail] ?? 0;
    const availIdx = this.availIdx();
    const ahead = (availIdx - last) & 0xffff;
    if (ahead === 0) return POP_EMPTY;
    if (ahead > this.size) return this.#fail(`avail.idx ${availIdx} is ${ahead} ahead of ${last}`);
    const size = this.size;
    const head = this.#avail.getUint16(this.#availOff + 4 + 2 * (last & (size - 1)), true);
    if (head >= size) return this.#fail(`head ${head} is outside the queue of ${size}`);
    if (!this.#walk(chain, head)) return POP_ERROR;
    w[this.#wLastAvail] = (last + 1) & 0xffff;
    if (this.#eventIdx && this.notifyOnPop) {
      // avail_event: notification-free until the driver adds past what we have taken.
      this.#used.setUint16(this.#usedOff + 4 + 8 * size, (last + 1) & 0xffff, true);
    }
    return POP_OK;
  }

  #fail(why: string): number {
    this.error = `queue ${this.index}: ${why}`;
    return POP_ERROR;
  }

  #bad(why: string): false {
    this.error = `queue ${this.index}: ${why}`;
    return false;
  }

  #walk(chain: DescChain, head: number): boolean {
    chain.head = head;
    chain.count = 0;
    chain.readable = 0;
    chain.readBytes = 0;
    chain.writeBytes = 0;
    const size = this.size;
    let table = this.#desc;
    let tableOff = this.#descOff;
    let tableLen = size;
    let idx = head;
    let seen = 0;
    let inIndirect = false;
    for (;;) {
      if (++seen > size) return this.#bad(`chain from ${head} is longer than the queue (loop?)`);
      const at = tableOff + DESC_BYTES * idx;
      const addr = joinAddr(table.getUint32(at, true), table.getUint32(at + 4, true));
      const len = table.getUint32(at + 8, true);
      const flags = table.getUint16(at + 12, true);
      const next = table.getUint16(at + 14, true);
      if ((flags & DESC_F_INDIRECT) !== 0) {
        if (!this.#indirect) return this.#bad("indirect descriptor without VIRTIO_F_INDIRECT_DESC");
        if (inIndirect) return this.#bad("nested indirect descriptor table");
        if ((flags & DESC_F_NEXT) !== 0) return this.#bad("indirect descriptor with NEXT");
        if (len === 0 || len % DESC_BYTES !== 0) {
          return this.#bad(`indirect table of ${len} bytes is not a multiple of 16`);
        }
        const r = this.#ram.find(addr, len);
        if (addr < 0 || r < 0 || addr % 16 !== 0) {
          return this.#bad(`indirect table at 0x${addr.toString(16)}+${len} is not aligned RAM`);
        }
        const v = this.#ram.views[r];
        if (v === undefined) return this.#bad("indirect table outside RAM");
        table = v;
        tableOff = this.#ram.offset(r, addr);
        tableLen = len / DESC_BYTES;
        idx = 0;
        inIndirect = true;
        continue;
      }
      const write = (flags & DESC_F_WRITE) !== 0;
      if (write) chain.writeBytes += len;
      else {
        if (chain.count > chain.readable) {
          return this.#bad("device-readable buffer after a device-writable one");
        }
        chain.readBytes += len;
      }
      if (len > 0) {
        const r = this.#ram.find(addr, len);
        if (addr < 0 || r < 0) {
          return this.#bad(`buffer 0x${addr.toString(16)}+${len} is not inside guest RAM`);
        }
        const n = chain.count;
        if (n >= chain.region.length) {
          return this.#bad("chain has more buffers than the device takes");
        }
        chain.region[n] = r;
        chain.addr[n] = addr;
        chain.len[n] = len;
        chain.write[n] = write ? 1 : 0;
        chain.count = n + 1;
        if (!write) chain.readable = chain.count;
      }
      if ((flags & DESC_F_NEXT) === 0) return true;
      if (next >= tableLen) return this.#bad(`next ${next} is outside its table of ${tableLen}`);
      idx = next;
    }
  }

  /** Puts chain `head` on the used ring with `len` bytes written (publishes used.idx). */
  pushUsed(head: number, len: number): void {
    this.addUsed(head, len);
    this.publishUsed();
  }

  /**
   * Writes chain `head`'s used entry without publishing it: the driver sees
   * it with the next {@link publishUsed}. (virtio-net's mergeable receive
   * buffers: all buffers of one frame appear at once.)
   */
  addUsed(head: number, len: number): void {
    const w = this.#w;
    const nextUsed = w[this.#wNextUsed] ?? 0;
    const slot = this.#usedOff + 4 + 8 * (nextUsed & (this.size - 1));
    this.#used.setUint32(slot, head, true);
    this.#used.setUint32(slot + 4, len, true);
    w[this.#wNextUsed] = (nextUsed + 1) & 0xffff;
  }

  /** Publishes used.idx: every entry added so far becomes visible to the driver. */
  publishUsed(): void {
    // The ring entries are stored before the index (x86 keeps store order; the
    // JIT keeps typed-array stores in program order).
    this.#used.setUint16(this.#usedOff + 2, this.#w[this.#wNextUsed] ?? 0, true);
  }

  /**
   * Gives back the last `n` chains taken and not used (virtio-net: receive
   * buffers taken ahead, returned before a quiesce; a frame the rate limiter
   * holds back). They are taken again, in the same order, by later pops.
   */
  undoPop(n: number): void {
    if (n <= 0) return;
    const w = this.#w;
    const last = ((w[this.#wLastAvail] ?? 0) - n) & 0xffff;
    w[this.#wLastAvail] = last;
    if (this.#eventIdx) this.#used.setUint16(this.#usedOff + 4 + 8 * this.size, last, true);
  }

  /**
   * Whether the driver wants an interrupt for the chains used since the
   * last one (EVENT_IDX's used_event, else the NO_INTERRUPT flag); records
   * the interrupt as sent when it says yes.
   */
  shouldInterrupt(): boolean {
    const w = this.#w;
    const now = w[this.#wNextUsed] ?? 0;
    // Full barrier: used.idx must be visible before used_event / flags are read, or a driver
    // that set used_event meanwhile and re-checked used.idx could miss both (lost wake-up).
    Atomics.store(w, W.FENCE, 0);
    if (!this.#eventIdx) {
      const flags = this.#avail.getUint16(this.#availOff, true);
      return (flags & AVAIL_F_NO_INTERRUPT) === 0;
    }
    const old = w[this.#wSignalled] ?? 0;
    const valid = w[this.#wSignalledValid] === 1;
    w[this.#wSignalled] = now;
    w[this.#wSignalledValid] = 1;
    if (!valid) return true;
    const event = this.#avail.getUint16(this.#availOff + 4 + 2 * this.size, true);
    // vring_need_event: (new - event - 1) mod 2^16 < (new - old) mod 2^16
    return ((now - event - 1) & 0xffff) < ((now - old) & 0xffff);
  }

  /** Publishes avail_event = the next index to take, so the driver notifies for new chains. */
  armNotify(): void {
    if (!this.#eventIdx) return;
    this.#used.setUint16(this.#usedOff + 4 + 8 * this.size, this.#w[this.#wLastAvail] ?? 0, true);
    // Full barrier before the caller re-reads avail.idx (store-load order).
    Atomics.store(this.#w, W.FENCE, 0);
  }
}
