/**
 * Guest RAM backed by host mappings: one private anonymous (or memfd)
 * mapping per region of {@link x86Layout}, each registered as one KVM memory
 * slot. The mappings are sparse (`MAP_NORESERVE`), so a 16 GiB guest costs
 * only the pages it touches.
 *
 * @example
 * ```ts
 * import { loadShim } from "../native/ffi.ts";
 * import { HostMemory } from "./memory.ts";
 * await loadShim();
 * using mem = HostMemory.create(64 * 1024 * 1024);
 * mem.write(0x1000, new Uint8Array([0xf4]));
 * ```
 *
 * @module
 */

import { shim, toBigInt } from "../native/ffi.ts";
import { KVM_MEM_LOG_DIRTY_PAGES, KvmError } from "../native/kvm.ts";
import type { Vm } from "../native/kvm.ts";
import { GuestMemoryError, x86Layout } from "./guest_memory.ts";
import type { GuestMemory, MemoryRegion } from "./guest_memory.ts";

/** Page size of guest RAM regions. */
export const PAGE_SIZE = 4096;
/** Largest guest RAM vmkit maps (64 GiB). */
export const MAX_MEMORY = 64 * 1024 * 1024 * 1024;

/** `MADV_DONTNEED`: drop pages (anonymous private pages read back as zero). */
export const MADV_DONTNEED = 4;
/** `MADV_REMOVE`: free the backing of shared (memfd) pages; they read back as zero. */
export const MADV_REMOVE = 9;
/** `MADV_HUGEPAGE`: back the range with transparent huge pages where the host allows them. */
export const MADV_HUGEPAGE = 14;

/** Raised for bad memory sizes or failed mappings. */
export class MemoryError extends Error {
  /** Creates the error with a message saying what to change. */
  constructor(message: string) {
    super(`guest memory: ${message}`);
    this.name = "MemoryError";
  }
}

/** How a region is backed. */
export type MemoryBacking = "anonymous" | "memfd";

/** A region with what later code needs to share or track it. */
export interface HostMemoryRegion extends MemoryRegion {
  /** memfd backing the region, or -1 for a private anonymous mapping. */
  readonly fd: number;
}

/** Options of {@link HostMemory.create}. */
export interface HostMemoryOptions {
  /** Backing of each region (default `"anonymous"`: MAP_PRIVATE|MAP_ANONYMOUS|MAP_NORESERVE). */
  backing?: MemoryBacking;
  /** First KVM slot number (default 0). */
  firstSlot?: number;
  /**
   * Ask for transparent huge pages on anonymous RAM (`MADV_HUGEPAGE`, as
   * QEMU does by default): fewer guest page faults and TLB misses, and a
   * checkpoint write-protects all of RAM in microseconds instead of
   * milliseconds. Default true; a host with THP off ignores it.
   */
  hugePages?: boolean;
}

/** Guest RAM as host mappings; implements {@link GuestMemory}. */
export class HostMemory implements GuestMemory, Disposable {
  /** The regions, sorted by guest address. */
  readonly regions: readonly HostMemoryRegion[];
  /** Total RAM bytes. */
  readonly size: number;
  readonly #buffers: (ArrayBuffer | undefined)[];
  #closed = false;

  private constructor(regions: HostMemoryRegion[]) {
    this.regions = regions;
    this.size = regions.reduce((n, r) => n + r.size, 0);
    this.#buffers = regions.map(() => undefined);
  }

  /**
   * Maps `bytes` of guest RAM (a multiple of 4 KiB, at most {@link MAX_MEMORY})
   * in the usual x86 layout: below 3 GiB from 0, the rest from 4 GiB.
   */
  static create(bytes: number, opts: HostMemoryOptions = {}): HostMemory {
    if (!Number.isSafeInteger(bytes) || bytes <= 0 || bytes % PAGE_SIZE !== 0) {
      throw new MemoryError(`size ${bytes} must be a positive multiple of 4 KiB`);
    }
    if (bytes > MAX_MEMORY) {
      throw new MemoryError(`size ${bytes} exceeds the 64 GiB maximum; ask for less RAM`);
    }
    const s = shim().symbols;
    const backing = opts.backing ?? "anonymous";
    const firstSlot = opts.firstSlot ?? 0;
    const regions: HostMemoryRegion[] = [];
    const undo = (): void => {
      for (const r of regions) {
        s.vk_munmap(r.hostAddr, BigInt(r.size));
        if (r.fd >= 0) s.vk_close(r.fd);
      }
    };
    for (const [i, [guestAddr, size]] of x86Layout(bytes).entries()) {
      let fd = -1;
      let addr: bigint;
      if (backing === "memfd") {
        const name = new TextEncoder().encode(`vmkit-ram-${i}\0`);
        fd = s.vk_memfd_create(name, BigInt(size));
        if (fd < 0) {
          undo();
          throw new KvmError("memfd_create", -fd, `region ${i} of ${size} bytes`);
        }
        addr = toBigInt(s.vk_mmap_fd(fd, BigInt(size)));
      } else {
        addr = toBigInt(s.vk_mmap_anon(BigInt(size)));
        // Advice only: a host without THP (or with it off) answers EINVAL, which changes nothing.
        if (addr >= 0n && (opts.hugePages ?? true)) s.vk_madvise(addr, BigInt(size), MADV_HUGEPAGE);
      }
      if (addr < 0n) {
        if (fd >= 0) s.vk_close(fd);
        undo();
        throw new KvmError("mmap(guest RAM)", Number(-addr), `region ${i} of ${size} bytes`);
      }
      regions.push({ guestAddr, size, hostAddr: addr, slot: firstSlot + i, fd });
    }
    return new HostMemory(regions);
  }

  /**
   * Registers every region as a KVM slot of `vm`; `flags` may include
   * {@link KVM_MEM_LOG_DIRTY_PAGES}. Calling again changes the flags in place.
   */
  register(vm: Vm, flags = 0): void {
    for (const r of this.regions) {
      vm.setUserMemoryRegion({
        slot: r.slot,
        flags,
        guestAddr: r.guestAddr,
        size: r.size,
        hostAddr: r.hostAddr,
      });
    }
  }

  /** Turns KVM's dirty-page log on or off for every region (vCPUs may be running). */
  setDirtyLogging(vm: Vm, on: boolean): void {
    this.register(vm, on ? KVM_MEM_LOG_DIRTY_PAGES : 0);
  }

  /** Index of the region holding all of `[gpa, gpa+len)`, or throws {@link GuestMemoryError}. */
  regionIndex(gpa: number, len: number): number {
    if (
      !Number.isSafeInteger(gpa) || !Number.isSafeInteger(len) || gpa < 0 || len < 0 ||
      this.#closed
    ) {
      throw new GuestMemoryError(gpa, len);
    }
    for (let i = 0; i < this.regions.length; i++) {
      const r = this.regions[i];
      if (r !== undefined && gpa >= r.guestAddr && gpa + len <= r.guestAddr + r.size) return i;
    }
    throw new GuestMemoryError(gpa, len);
  }

  #buffer(i: number): ArrayBuffer {
    const cached = this.#buffers[i];
    if (cached !== undefined) return cached;
    const r = this.regions[i];
    const ptr = r === undefined ? null : Deno.UnsafePointer.create(r.hostAddr);
    if (r === undefined || ptr === null) throw new MemoryError(`region ${i} has no mapping`);
    const buf = Deno.UnsafePointerView.getArrayBuffer(ptr, r.size);
    this.#buffers[i] = buf;
    return buf;
  }

  /** A live view of `[gpa, gpa+len)`; invalid once the memory is closed. */
  view(gpa: number, len: number): Uint8Array {
    const i = this.regionIndex(gpa, len);
    const r = this.regions[i];
    if (r === undefined) throw new GuestMemoryError(gpa, len);
    return new Uint8Array(this.#buffer(i), gpa - r.guestAddr, len);
  }

  /** Copies `data` into guest memory at `gpa` (one region). */
  write(gpa: number, data: Uint8Array): void {
    this.view(gpa, data.length).set(data);
  }

  /** Copies `len` bytes out of guest memory at `gpa` (one region). */
  read(gpa: number, len: number): Uint8Array {
    return this.view(gpa, len).slice();
  }

  /** Drops the host pages of `[gpa, gpa+len)` (page-aligned); they read back as zero. */
  discard(gpa: number, len: number): void {
    if (gpa % PAGE_SIZE !== 0 || len % PAGE_SIZE !== 0) {
      throw new MemoryError(
        `discard range 0x${gpa.toString(16)}+0x${len.toString(16)} must be page-aligned`,
      );
    }
    const r = this.regions[this.regionIndex(gpa, len)];
    if (r === undefined) throw new GuestMemoryError(gpa, len);
    const addr = r.hostAddr + BigInt(gpa - r.guestAddr);
    const advice = r.fd >= 0 ? MADV_REMOVE : MADV_DONTNEED;
    const e = shim().symbols.vk_madvise(addr, BigInt(len), advice);
    if (e < 0) throw new KvmError(`madvise(${r.fd >= 0 ? "MADV_REMOVE" : "MADV_DONTNEED"})`, -e);
  }

  /** Unmaps every region (views from {@link view} must not be used afterwards). */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#buffers.fill(undefined);
    const s = shim().symbols;
    for (const r of this.regions) {
      const e = s.vk_munmap(r.hostAddr, BigInt(r.size));
      if (e < 0) throw new KvmError("munmap(guest RAM)", -e);
      if (r.fd >= 0) s.vk_close(r.fd);
    }
  }

  /** Same as {@link HostMemory.close}. */
  [Symbol.dispose](): void {
    this.close();
  }
}
