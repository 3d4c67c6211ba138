/**
 * FFI bindings of `uffd.c`: the userfaultfd write-protect context that live
 * checkpoints drive ({@link WriteProtect}), page scanning with CRC32C, and
 * the file helpers (positioned writes from raw addresses, fixed mappings).
 *
 * @example
 * ```ts
 * import { crc32c, openUffdShim } from "./uffd_ffi.ts";
 * await openUffdShim();
 * console.log(crc32c(new TextEncoder().encode("123456789")).toString(16)); // e3069283
 * ```
 *
 * @module
 */

import { loadShim } from "./ffi.ts";
import { errnoText } from "./kvm.ts";
import { dlopenLazily } from "./lazy_dlopen.ts";

/** Symbols of `uffd.c`. All synchronous; the fault thread runs inside C. */
export const UFFD_SYMBOLS = {
  vk_crc32c: { parameters: ["u32", "buffer", "u64"], result: "u32" },
  vk_crc32c_addr: { parameters: ["u32", "u64", "u64"], result: "u32" },
  vk_scan_pages: { parameters: ["u64", "u32", "buffer", "buffer"], result: "i32" },
  vk_file_open: { parameters: ["buffer", "i32", "i32"], result: "i32" },
  vk_file_close: { parameters: ["i32"], result: "i32" },
  vk_file_fsync: { parameters: ["i32"], result: "i32" },
  vk_file_truncate: { parameters: ["i32", "u64"], result: "i32" },
  vk_dir_fsync: { parameters: ["buffer"], result: "i32" },
  vk_pwrite_addr: { parameters: ["i32", "u64", "u64", "u64"], result: "i32" },
  vk_pwrite_buf: { parameters: ["i32", "buffer", "u64", "u64"], result: "i32" },
  vk_pread_buf: { parameters: ["i32", "buffer", "u64", "u64"], result: "i64" },
  vk_file_size: { parameters: ["i32"], result: "i64" },
  vk_map_file_fixed: { parameters: ["u64", "u64", "i32", "u64"], result: "i64" },
  vk_map_anon_fixed: { parameters: ["u64", "u64"], result: "i64" },
  vk_map_file_ro: { parameters: ["i32", "u64", "u64"], result: "i64" },
  vk_unmap: { parameters: ["u64", "u64"], result: "i32" },
  vk_advise: { parameters: ["u64", "u64", "i32"], result: "i32" },
  vk_wp_create: {
    parameters: ["buffer", "buffer", "buffer", "buffer", "buffer", "u32", "u32", "u32"],
    result: "i64",
  },
  vk_file_lock: { parameters: ["i32", "i32"], result: "i32" },
  vk_file_stat: { parameters: ["i32", "buffer"], result: "i32" },
  vk_fs_magic: { parameters: ["i32"], result: "i64" },
  vk_geteuid: { parameters: [], result: "i64" },
  vk_wp_destroy: { parameters: ["u64"], result: "i32" },
  vk_wp_reset: { parameters: ["u64", "i32"], result: "i32" },
  vk_wp_protect_all: { parameters: ["u64"], result: "i32" },
  vk_wp_set_protecting: { parameters: ["u64", "i32"], result: "i32" },
  vk_wp_reprotect: { parameters: ["u64"], result: "i32" },
  vk_wp_pending: { parameters: ["u64"], result: "i64" },
  vk_wp_freeze: { parameters: ["u64"], result: "i32" },
  vk_wp_finish: { parameters: ["u64", "i32"], result: "i32" },
  vk_wp_claim: {
    parameters: ["u64", "u32", "u64", "u32", "buffer", "buffer"],
    result: "i32",
  },
  vk_wp_release: { parameters: ["u64", "u32", "u64", "u32", "i32"], result: "i32" },
  vk_wp_ring_take: { parameters: ["u64", "u32", "buffer", "buffer"], result: "i32" },
  vk_wp_abort: { parameters: ["u64"], result: "i32" },
  vk_wp_sync: { parameters: ["u64"], result: "i32" },
  vk_wp_write: { parameters: ["u64", "u64", "buffer", "u64"], result: "i32" },
  vk_wp_dirty_map: { parameters: ["u64", "u32", "buffer", "u64"], result: "i32" },
  vk_wp_counters: { parameters: ["u64", "buffer", "u32"], result: "i32" },
} as const satisfies Deno.ForeignLibraryInterface;

/** The opened symbols. */
export type UffdShim = Deno.DynamicLibrary<typeof UFFD_SYMBOLS>["symbols"];

/** Page size the mechanism works in. */
export const WP_PAGE = 4096;
/** Page kinds of {@link WriteProtect.claim} and {@link scanPages}. */
export const PageKind = { NONE: 0, ZERO: 1, DATA: 2 } as const;
/** Counter names, in the order of `vk_wp_counters`. */
export const WP_COUNTERS = [
  "faults",
  "copies",
  "recorded",
  "leftToWriter",
  "ringWaits",
  "faultNs",
  "reprotected",
  "maxFaultNs",
  "missing",
  "errors",
  "minor",
  "stored",
] as const;
/** Counters of a {@link WriteProtect} context (the names of {@link WP_COUNTERS}). */
export interface WpCounters {
  /** Fault events handled. */
  faults: number;
  /** Pages copied into the ring before a write. */
  copies: number;
  /** Write faults recorded (RECORD mode). */
  recorded: number;
  /** Faults on pages the writer was saving. */
  leftToWriter: number;
  /** Waits for a free ring slot. */
  ringWaits: number;
  /** Nanoseconds spent handling events. */
  faultNs: number;
  /** Pages re-protected. */
  reprotected: number;
  /** Longest event batch (ns). */
  maxFaultNs: number;
  /** Missing pages filled from the source. */
  missing: number;
  /** Fills that failed. */
  errors: number;
  /** Pages mapped from the shared page store on first access (another VM, or an earlier fill, put them there). */
  minor: number;
  /** Pages written into the shared page store. */
  stored: number;
}

/** `MADV_HUGEPAGE`. */
export const MADV_HUGEPAGE = 14;

/** A failed call of `uffd.c`, naming it and the errno text. */
export class UffdError extends Error {
  /** Positive errno. */
  readonly errno: number;
  /** Creates the error for `call` failing with `errno`. */
  constructor(call: string, errno: number, detail = "") {
    super(
      `uffd: ${call} failed: ${errnoText(errno)} (errno ${errno})${detail ? `: ${detail}` : ""}`,
    );
    this.name = "UffdError";
    this.errno = errno;
  }
}

let lib: UffdShim | undefined;

/** Opens the symbols of an already built shim at `path` (e.g. inside a Worker). */
export function openUffdShimAt(path: string): UffdShim {
  if (lib === undefined) lib = dlopenLazily(path, UFFD_SYMBOLS);
  return lib;
}

/** Builds (if needed) and opens the shim once per thread (with the KVM symbols, for errno texts). */
export async function openUffdShim(): Promise<UffdShim> {
  if (lib !== undefined) return lib;
  const { path } = await loadShim();
  return openUffdShimAt(path);
}

/** The opened symbols; throws if {@link openUffdShim} has not run on this thread. */
export function uffd(): UffdShim {
  if (lib === undefined) throw new Error("uffd: the shim is not open; await openUffdShim() first");
  return lib;
}

/** Throws {@link UffdError} for a negative result. */
export function check(call: string, r: number | bigint, detail = ""): number {
  const v = Number(r);
  if (v < 0) throw new UffdError(call, -v, detail);
  return v;
}

/** CRC32C of `data`, continuing from `crc` (0 to start). */
export function crc32c(data: Uint8Array, crc = 0): number {
  return uffd().vk_crc32c(crc, data, BigInt(data.length));
}

/** Zero test and CRC32C of `pages` pages at host address `addr` into `kinds`/`crcs`. */
export function scanPages(
  addr: bigint,
  pages: number,
  kinds: Uint8Array,
  crcs: Uint32Array,
): number {
  if (kinds.length < pages || crcs.length < pages) throw new RangeError("scanPages: short arrays");
  return check("scan_pages", uffd().vk_scan_pages(addr, pages, kinds, crcs));
}

/** A host range of guest RAM given to {@link WriteProtect.create}. */
export interface WpRegion {
  /** Host address (page-aligned). */
  readonly hostAddr: bigint;
  /** Bytes (a multiple of 4 KiB). */
  readonly size: number;
  /** Host address of a read-only mapping that missing pages are filled from (lazy restore). */
  readonly source?: bigint;
  /**
   * With `source`: the region is a `MAP_PRIVATE` mapping of this shared page
   * store (a tmpfs file) from `offset`; missing pages go into the store and
   * every VM mapping it shares the pages it only reads.
   */
  readonly store?: { readonly fd: number; readonly offset: number };
}

/**
 * One userfaultfd over guest RAM with its fault thread (see `uffd.c`).
 * Methods map one to one onto the C calls; the checkpoint writer decides the
 * order.
 */
export class WriteProtect implements Disposable {
  readonly #h: bigint;
  readonly #regions: readonly WpRegion[];
  #closed = false;

  private constructor(h: bigint, regions: readonly WpRegion[]) {
    this.#h = h;
    this.#regions = regions;
  }

  /** Registers `regions` for write-protect faults and starts the fault thread (RECORD mode). */
  static create(regions: readonly WpRegion[], ringSlots = 4096, logCap = 1 << 16): WriteProtect {
    const bases = new BigUint64Array(regions.map((r) => r.hostAddr));
    const sizes = new BigUint64Array(regions.map((r) => BigInt(r.size)));
    const sources = new BigUint64Array(regions.map((r) => r.source ?? 0n));
    const stores = new BigInt64Array(regions.map((r) => BigInt(r.store?.fd ?? -1)));
    const storeOffs = new BigUint64Array(regions.map((r) => BigInt(r.store?.offset ?? 0)));
    const h = uffd().vk_wp_create(
      new Uint8Array(bases.buffer),
      new Uint8Array(sizes.buffer),
      new Uint8Array(sources.buffer),
      new Uint8Array(stores.buffer),
      new Uint8Array(storeOffs.buffer),
      regions.length,
      ringSlots,
      logCap,
    );
    check("userfaultfd register", h, `${regions.length} regions`);
    return new WriteProtect(BigInt(h), regions);
  }

  /** The regions, in the order given. */
  get regions(): readonly WpRegion[] {
    return this.#regions;
  }

  /** New checkpoint: all pages to do, ring empty, RECORD mode; `diff` saves only dirty pages. */
  reset(diff: boolean): void {
    check("reset", uffd().vk_wp_reset(this.#h, diff ? 1 : 0));
  }

  /** Write-protects every page (VM may run). */
  protectAll(): void {
    check("UFFDIO_WRITEPROTECT (all)", uffd().vk_wp_protect_all(this.#h));
  }

  /** Lazy restore: fill missing pages write-protected (tracked) or not. */
  setProtecting(on: boolean): void {
    check("set_protecting", uffd().vk_wp_set_protecting(this.#h, on ? 1 : 0));
  }

  /** Re-protects pages written since the last re-protect; returns how many. */
  reprotect(): number {
    return check("UFFDIO_WRITEPROTECT (log)", uffd().vk_wp_reprotect(this.#h));
  }

  /** Pages unprotected since the last re-protect. */
  pending(): number {
    return Number(uffd().vk_wp_pending(this.#h));
  }

  /** The pause step: re-protect the rest, swap the dirty maps, COPY mode; returns pages re-protected. */
  freeze(): number {
    return check("freeze", uffd().vk_wp_freeze(this.#h));
  }

  /** Ends the save: RECORD mode; `tracking`: the writer left its pages protected. */
  finish(tracking: boolean): void {
    check("finish", uffd().vk_wp_finish(this.#h, tracking ? 1 : 0));
  }

  /** Claims pages `[first, first+n)` of region `ri` for the writer (see `vk_wp_claim`). */
  claim(ri: number, first: number, n: number, kinds: Uint8Array, crcs: Uint32Array): number {
    return check("claim", uffd().vk_wp_claim(this.#h, ri, BigInt(first), n, kinds, crcs));
  }

  /** Releases the writer's pages of `[first, first+n)`: unprotect them, or only wake when tracking. */
  release(ri: number, first: number, n: number, unprotect: boolean): void {
    check("release", uffd().vk_wp_release(this.#h, ri, BigInt(first), n, unprotect ? 1 : 0));
  }

  /** Takes up to `ids.length` copied pages: ids and bytes (4 KiB each) into `out`. */
  ringTake(ids: BigUint64Array, out: Uint8Array): number {
    const max = Math.min(ids.length, Math.floor(out.length / WP_PAGE));
    return check(
      "ring_take",
      uffd().vk_wp_ring_take(this.#h, max, new Uint8Array(ids.buffer, ids.byteOffset), out),
    );
  }

  /** Abandons a save: nothing protected, RECORD mode; lazily restored pages still fill. */
  abort(): void {
    check("abort", uffd().vk_wp_abort(this.#h));
  }

  /**
   * Writes `data` into registered RAM at host address `hostAddr` on this
   * thread, as the fault thread handles a guest write but with no fault
   * round trip: each page recorded as written, filled first if still
   * missing, unprotected, then written. Refused (EBUSY) while a checkpoint
   * is being saved.
   */
  write(hostAddr: bigint, data: Uint8Array): void {
    check(
      "write",
      uffd().vk_wp_write(this.#h, hostAddr, data, BigInt(data.length)),
      `${data.length} bytes at 0x${hostAddr.toString(16)}`,
    );
  }

  /** Returns once the fault thread has finished the event it was handling. */
  sync(): void {
    check("sync", uffd().vk_wp_sync(this.#h));
  }

  /** The dirty map (written since the last freeze) of region `ri`, one bit per page. */
  dirtyMap(ri: number): BigUint64Array {
    const r = this.#regions[ri];
    if (r === undefined) throw new RangeError(`no region ${ri}`);
    const words = Math.ceil(r.size / WP_PAGE / 64);
    const out = new BigUint64Array(words);
    check(
      "dirty_map",
      uffd().vk_wp_dirty_map(this.#h, ri, new Uint8Array(out.buffer), BigInt(words)),
    );
    return out;
  }

  /** Fault-thread counters. */
  counters(): WpCounters {
    const raw = new BigUint64Array(WP_COUNTERS.length);
    check("counters", uffd().vk_wp_counters(this.#h, new Uint8Array(raw.buffer), raw.length));
    const out: Record<string, number> = {};
    WP_COUNTERS.forEach((k, i) => out[k] = Number(raw[i] ?? 0n));
    return out as unknown as WpCounters;
  }

  /** Stops the fault thread, unprotects everything and closes the userfaultfd. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    check("destroy", uffd().vk_wp_destroy(this.#h));
  }

  /** Same as {@link close}. */
  [Symbol.dispose](): void {
    this.close();
  }
}
