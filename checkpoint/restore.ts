/**
 * Lazy restore of a checkpoint's memory: per RAM region, a read-only source
 * mapping is assembled from the chain's memory images (a shared read-only
 * mapping of the full base, then each diff's data runs and zero runs placed
 * over it, newest last),
 * and the guest's own anonymous RAM is filled from it page by page on first
 * access by the write-protect context's fault thread (userfaultfd missing
 * faults). Time to running does not grow with memory, the checkpoint files
 * are never written, clones of one checkpoint read the same page cache, and
 * the restored VM's RAM stays anonymous so it can be checkpointed again.
 *
 * @module
 */

import { toBigInt } from "../native/ffi.ts";
import { check, uffd } from "../native/uffd_ffi.ts";
import { CheckpointError } from "./errors.ts";
import { PAGE } from "./format.ts";
import { Kind, runsOf } from "./pagemap.ts";
import type { CheckpointChain } from "./reader.ts";

/** Read-only source mappings of a chain's memory, one per RAM region. */
export class MemorySource implements Disposable {
  /** Host address of each region's source. */
  readonly addrs: readonly bigint[];
  readonly #sizes: readonly number[];
  #closed = false;

  private constructor(addrs: bigint[], sizes: number[]) {
    this.addrs = addrs;
    this.#sizes = sizes;
  }

  /**
   * Maps `chain`'s memory. The mappings are private and never written, so the
   * files are not either; mmap calls: one per region for a full checkpoint,
   * plus one per run of each diff.
   */
  static map(chain: CheckpointChain): MemorySource {
    const s = uffd();
    const files = chain.chain;
    const base = files[files.length - 1];
    if (base === undefined || base.isDiff) {
      throw new CheckpointError("the chain has no full checkpoint at its base", {
        path: chain.top.path,
      });
    }
    const addrs: bigint[] = [];
    const sizes: number[] = [];
    const src = new MemorySource(addrs, sizes);
    try {
      base.pages.forEach((r, ri) => {
        const at = toBigInt(
          check(
            "mmap(checkpoint memory)",
            s.vk_map_file_ro(base.memFd, BigInt(r.size), BigInt(base.regionOffset(ri))),
          ),
        );
        addrs.push(at);
        sizes.push(r.size);
      });
      for (let fi = files.length - 2; fi >= 0; fi--) {
        const f = files[fi];
        if (f === undefined) continue;
        f.pages.forEach((r, ri) => {
          const at = addrs[ri];
          if (at === undefined) return;
          const off = f.regionOffset(ri);
          for (const run of runsOf(r.kinds)) {
            const a = at + BigInt(run.first * PAGE);
            const len = BigInt(run.count * PAGE);
            if (run.kind === Kind.DATA) {
              check(
                "mmap(diff run)",
                s.vk_map_file_fixed(a, len, f.memFd, BigInt(off + run.first * PAGE)),
              );
            } else if (run.kind === Kind.ZERO) {
              check("mmap(zero run)", s.vk_map_anon_fixed(a, len));
            }
          }
        });
      }
    } catch (err) {
      src.close();
      throw err;
    }
    return src;
  }

  /** Unmaps the sources (only once nothing fills pages from them). */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.addrs.forEach((a, i) => uffd().vk_unmap(a, BigInt(this.#sizes[i] ?? 0)));
  }

  /** Same as {@link close}. */
  [Symbol.dispose](): void {
    this.close();
  }
}
