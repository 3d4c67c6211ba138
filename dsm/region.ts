/**
 * A shared region as a worker sees it: typed loads and stores, each guarded by
 * the inline state check. The fast path is one state-table lookup (a
 * `Uint8Array` over a `SharedArrayBuffer`) and no allocation; misses go to the
 * slow paths, which implement the lock-up free store of the Shasta seed: a
 * store to a shared or invalid block writes the local copy, records the bytes
 * it modified, sends one request and returns at once; the protocol thread
 * merges the recorded bytes into the exclusive copy when it arrives.
 *
 * @module
 */

import { DsmAccessError } from "./errors.ts";
import {
  LINE_SHIFT,
  LINE_SIZE,
  lockBlock,
  READABLE_MIN,
  type RegionBuffers,
  State,
  unlockBlock,
} from "./layout.ts";

/** Request kinds a worker sends to its node's protocol thread. */
export const Request = {
  /** Fetch a read copy. */
  READ: 1,
  /** Fetch an exclusive copy with data. */
  READX: 2,
  /** Upgrade a valid shared copy to exclusive. */
  UPGRADE: 3,
} as const;

/** What a region needs from the worker runtime around it. */
export interface RegionHost {
  /** This worker's index within its node (0-based). */
  readonly worker: number;
  /** True to make every store wait until it is performed (the blocking-store switch). */
  readonly blockingStores: boolean;
  /** Sends a miss request for a block to the protocol thread. */
  request(kind: number, region: number, block: number): void;
  /** Marks a slow-path entry (bumps the epoch) and throws if the cluster failed. */
  enter(): void;
  /** Blocks until `gens[index]` differs from `seen` (or the cluster fails). */
  waitChange(gens: Int32Array, index: number, seen: number): void;
  /** Blocks until every store of this worker is performed. */
  waitStores(): void;
  /** Counts one more block holding stores of this worker that are not performed yet. */
  storeRecorded(): void;
}

/** Typed, coherence-checked access to one shared region from a worker. */
export class Region {
  /** Region name. */
  readonly name: string;
  /** Size in bytes. */
  readonly size: number;
  /** Block size in bytes (the coherence unit). */
  readonly blockSize: number;
  readonly #index: number;
  readonly #host: RegionHost;
  readonly #blockShift: number;
  readonly #linesPerBlock: number;
  readonly #state: Uint8Array;
  readonly #mask: Uint8Array;
  readonly #locks: Int32Array;
  readonly #gens: Int32Array;
  readonly #writers: Int32Array;
  readonly #u8: Uint8Array;
  /** The request {@link Region.#beginStore} decided on, sent by {@link Region.#endStore} (0: none). */
  #request = 0;

  /** Loads an unsigned byte. */
  readonly loadU8: (addr: number) => number;
  /** Loads a signed byte. */
  readonly loadI8: (addr: number) => number;
  /** Loads an unsigned 16-bit integer (address aligned to 2). */
  readonly loadU16: (addr: number) => number;
  /** Loads a signed 16-bit integer (address aligned to 2). */
  readonly loadI16: (addr: number) => number;
  /** Loads an unsigned 32-bit integer (address aligned to 4). */
  readonly loadU32: (addr: number) => number;
  /** Loads a signed 32-bit integer (address aligned to 4). */
  readonly loadI32: (addr: number) => number;
  /** Loads a 32-bit float (address aligned to 4). */
  readonly loadF32: (addr: number) => number;
  /** Loads a 64-bit float (address aligned to 8). */
  readonly loadF64: (addr: number) => number;
  /** Loads an unsigned 64-bit integer (address aligned to 8). */
  readonly loadU64: (addr: number) => bigint;
  /** Loads a signed 64-bit integer (address aligned to 8). */
  readonly loadI64: (addr: number) => bigint;
  /** Stores a byte (the low 8 bits of `v`). */
  readonly storeU8: (addr: number, v: number) => void;
  /** Stores a signed byte. */
  readonly storeI8: (addr: number, v: number) => void;
  /** Stores a 16-bit integer (address aligned to 2). */
  readonly storeU16: (addr: number, v: number) => void;
  /** Stores a signed 16-bit integer (address aligned to 2). */
  readonly storeI16: (addr: number, v: number) => void;
  /** Stores a 32-bit integer (address aligned to 4). */
  readonly storeU32: (addr: number, v: number) => void;
  /** Stores a signed 32-bit integer (address aligned to 4). */
  readonly storeI32: (addr: number, v: number) => void;
  /** Stores a 32-bit float (address aligned to 4). */
  readonly storeF32: (addr: number, v: number) => void;
  /** Stores a 64-bit float (address aligned to 8). */
  readonly storeF64: (addr: number, v: number) => void;
  /** Stores an unsigned 64-bit integer (address aligned to 8). */
  readonly storeU64: (addr: number, v: bigint) => void;
  /** Stores a signed 64-bit integer (address aligned to 8). */
  readonly storeI64: (addr: number, v: bigint) => void;

  /** Wraps the buffers of region number `index` (created by the node). */
  constructor(index: number, buffers: RegionBuffers, host: RegionHost) {
    this.name = buffers.name;
    this.size = buffers.size;
    this.blockSize = buffers.blockSize;
    this.#index = index;
    this.#host = host;
    this.#blockShift = Math.log2(buffers.blockSize);
    this.#linesPerBlock = buffers.blockSize / LINE_SIZE;
    this.#state = new Uint8Array(buffers.state);
    this.#mask = new Uint8Array(buffers.mask);
    this.#locks = new Int32Array(buffers.locks);
    this.#gens = new Int32Array(buffers.gens);
    this.#writers = new Int32Array(buffers.writers);
    const d = buffers.data;
    this.#u8 = new Uint8Array(d);
    // The accessors are closures over constant typed arrays rather than
    // methods reading private fields: once inlined, V8 folds the arrays into
    // the caller, so a hit costs one state-byte load and compare (measured
    // 2-3x faster than the method form; see bench/dsm_check_bench.ts).
    const st = this.#state;
    const u8 = this.#u8;
    const i8 = new Int8Array(d);
    const u16 = new Uint16Array(d);
    const i16 = new Int16Array(d);
    const u32 = new Uint32Array(d);
    const i32 = new Int32Array(d);
    const f32 = new Float32Array(d);
    const f64 = new Float64Array(d);
    const u64 = new BigUint64Array(d);
    const i64 = new BigInt64Array(d);
    // Local copies: an imported binding is a live cell checked on every use.
    const SH = LINE_SHIFT;
    const R = READABLE_MIN;
    const X = State.EXCLUSIVE;
    const miss = (addr: number, size: number): void => this.#loadSlow(addr, size);
    const begin = (addr: number, size: number): number => this.#beginStore(addr, size);
    const end = (block: number): void => this.#endStore(block);

    this.loadU8 = (a) => {
      if ((st[a >>> SH] ?? 0) < R) miss(a, 1);
      return u8[a] ?? 0;
    };
    this.loadI8 = (a) => {
      if ((st[a >>> SH] ?? 0) < R) miss(a, 1);
      return i8[a] ?? 0;
    };
    this.loadU16 = (a) => {
      if ((a & 1) !== 0 || (st[a >>> SH] ?? 0) < R) miss(a, 2);
      return u16[a >>> 1] ?? 0;
    };
    this.loadI16 = (a) => {
      if ((a & 1) !== 0 || (st[a >>> SH] ?? 0) < R) miss(a, 2);
      return i16[a >>> 1] ?? 0;
    };
    this.loadU32 = (a) => {
      if ((a & 3) === 0 && (st[a >>> SH] ?? 0) >= R) return u32[a >>> 2] ?? 0;
      miss(a, 4);
      return u32[a >>> 2] ?? 0;
    };
    this.loadI32 = (a) => {
      if ((a & 3) !== 0 || (st[a >>> SH] ?? 0) < R) miss(a, 4);
      return i32[a >>> 2] ?? 0;
    };
    this.loadF32 = (a) => {
      if ((a & 3) !== 0 || (st[a >>> SH] ?? 0) < R) miss(a, 4);
      return f32[a >>> 2] ?? 0;
    };
    this.loadF64 = (a) => {
      if ((a & 7) !== 0 || (st[a >>> SH] ?? 0) < R) miss(a, 8);
      return f64[a >>> 3] ?? 0;
    };
    this.loadU64 = (a) => {
      if ((a & 7) !== 0 || (st[a >>> SH] ?? 0) < R) miss(a, 8);
      return u64[a >>> 3] ?? 0n;
    };
    this.loadI64 = (a) => {
      if ((a & 7) !== 0 || (st[a >>> SH] ?? 0) < R) miss(a, 8);
      return i64[a >>> 3] ?? 0n;
    };

    this.storeU8 = (a, v) => {
      if (st[a >>> SH] === X) {
        u8[a] = v;
        return;
      }
      const b = begin(a, 1);
      u8[a] = v;
      end(b);
    };
    this.storeI8 = (a, v) => this.storeU8(a, v & 0xff);
    this.storeU16 = (a, v) => {
      if ((a & 1) === 0 && st[a >>> SH] === X) {
        u16[a >>> 1] = v;
        return;
      }
      const b = begin(a, 2);
      u16[a >>> 1] = v;
      end(b);
    };
    this.storeI16 = (a, v) => this.storeU16(a, v & 0xffff);
    this.storeU32 = (a, v) => {
      if ((a & 3) === 0 && st[a >>> SH] === X) {
        u32[a >>> 2] = v;
        return;
      }
      const b = begin(a, 4);
      u32[a >>> 2] = v;
      end(b);
    };
    this.storeI32 = (a, v) => this.storeU32(a, v >>> 0);
    this.storeF32 = (a, v) => {
      if ((a & 3) === 0 && st[a >>> SH] === X) {
        f32[a >>> 2] = v;
        return;
      }
      const b = begin(a, 4);
      f32[a >>> 2] = v;
      end(b);
    };
    this.storeF64 = (a, v) => {
      if ((a & 7) === 0 && st[a >>> SH] === X) {
        f64[a >>> 3] = v;
        return;
      }
      const b = begin(a, 8);
      f64[a >>> 3] = v;
      end(b);
    };
    this.storeU64 = (a, v) => {
      if ((a & 7) === 0 && st[a >>> SH] === X) {
        u64[a >>> 3] = v;
        return;
      }
      const b = begin(a, 8);
      u64[a >>> 3] = v;
      end(b);
    };
    this.storeI64 = (a, v) => this.storeU64(a, BigInt.asUintN(64, v));
  }

  // ---- bulk --------------------------------------------------------------

  /** Copies `dst.length` bytes starting at `addr` out of the region. */
  read(addr: number, dst: Uint8Array): void {
    this.#checkRange(addr, dst.length, 1);
    let off = 0;
    while (off < dst.length) {
      const a = addr + off;
      const n = Math.min(dst.length - off, LINE_SIZE - (a & (LINE_SIZE - 1)));
      if ((this.#state[a >>> LINE_SHIFT] ?? 0) < READABLE_MIN) this.#loadSlow(a, 1);
      dst.set(this.#u8.subarray(a, a + n), off);
      off += n;
    }
  }

  /** Copies `src` into the region starting at `addr`. */
  write(addr: number, src: Uint8Array): void {
    this.#checkRange(addr, src.length, 1);
    let off = 0;
    while (off < src.length) {
      const a = addr + off;
      const n = Math.min(src.length - off, LINE_SIZE - (a & (LINE_SIZE - 1)));
      if (this.#state[a >>> LINE_SHIFT] === State.EXCLUSIVE) {
        this.#u8.set(src.subarray(off, off + n), a);
      } else {
        const b = this.#beginStore(a, n);
        this.#u8.set(src.subarray(off, off + n), a);
        this.#endStore(b);
      }
      off += n;
    }
  }

  // ---- slow paths --------------------------------------------------------

  #checkRange(addr: number, size: number, align: number): void {
    if (!Number.isInteger(addr) || addr < 0 || addr + size > this.size) {
      throw new DsmAccessError(
        `region '${this.name}': access of ${size} bytes at ${addr} is outside 0..${this.size}`,
      );
    }
    if (addr % align !== 0) {
      throw new DsmAccessError(
        `region '${this.name}': ${size}-byte access at ${addr} is not aligned to ${align}`,
      );
    }
  }

  #setBlockState(block: number, s: number): void {
    const first = block * this.#linesPerBlock;
    this.#state.fill(s, first, first + this.#linesPerBlock);
  }

  /** Returns once the line of `addr` holds valid data (waiting for a read miss). */
  #loadSlow(addr: number, size: number): void {
    this.#checkRange(addr, size, Math.min(size, 8));
    const block = addr >>> this.#blockShift;
    const line = addr >>> LINE_SHIFT;
    for (;;) {
      this.#host.enter();
      lockBlock(this.#locks, block);
      const s = this.#state[line] ?? State.INVALID;
      if (s >= READABLE_MIN) {
        unlockBlock(this.#locks, block);
        return;
      }
      const seen = Atomics.load(this.#gens, block);
      if (s === State.INVALID) {
        this.#setBlockState(block, State.PENDING_READ);
        unlockBlock(this.#locks, block);
        this.#host.request(Request.READ, this.#index, block);
      } else {
        unlockBlock(this.#locks, block);
      }
      this.#host.waitChange(this.#gens, block, seen);
    }
  }

  /**
   * Prepares a store that missed the fast path; returns the block with its
   * lock held. Lock-up free: a non-exclusive block gets its modified bytes
   * recorded and one outstanding request (sent by `#endStore` once the lock
   * is released), and the store proceeds at once.
   */
  #beginStore(addr: number, size: number): number {
    this.#checkRange(addr, size, Math.min(size, 8));
    const block = addr >>> this.#blockShift;
    const line = addr >>> LINE_SHIFT;
    for (;;) {
      this.#host.enter();
      lockBlock(this.#locks, block);
      const s = this.#state[line] ?? State.INVALID;
      if (s === State.EXCLUSIVE) return block;
      if (s === State.REVOKING) {
        const seen = Atomics.load(this.#gens, block);
        unlockBlock(this.#locks, block);
        this.#host.waitChange(this.#gens, block, seen);
        continue;
      }
      this.#mask.fill(1, addr, addr + size);
      const bit = 1 << this.#host.worker;
      const writers = this.#writers[block] ?? 0;
      if ((writers & bit) === 0) {
        this.#writers[block] = writers | bit;
        this.#host.storeRecorded();
      }
      if (s === State.INVALID) {
        this.#setBlockState(block, State.PENDING_READX);
        this.#request = Request.READX;
      } else if (s === State.SHARED) {
        this.#setBlockState(block, State.PENDING_UPGRADE);
        this.#request = Request.UPGRADE;
      } else if (s === State.PENDING_READ) {
        this.#setBlockState(block, State.PENDING_READ_UPGRADE);
      }
      return block;
    }
  }

  #endStore(block: number): void {
    unlockBlock(this.#locks, block);
    // The request goes out only after the unlock: ringing the protocol thread
    // wakes it, and on a busy machine the woken thread may take this core
    // while this worker still held the block's spin lock, then spin on it for
    // the rest of its time slice when the answer arrives (milliseconds per
    // miss, seen as blocking-store misses of 2-4 ms).
    const kind = this.#request;
    if (kind !== 0) {
      this.#request = 0;
      this.#host.request(kind, this.#index, block);
    }
    if (this.#host.blockingStores) this.#host.waitStores();
  }
}
