/**
 * Reading compressed qcow2 clusters (zlib, raw deflate), with the last one
 * inflated kept: a run of small reads or a partial overwrite of one
 * compressed cluster inflates it once.
 *
 * @module
 */

import { inflateRawSync } from "node:zlib";
import { QcowError } from "./errors.ts";
import type { ImageFile } from "./file_io.ts";
import { compressedSpan } from "./qcow2_tables.ts";

/** The compressed clusters of one image file. */
export class CompressedClusters {
  #file: ImageFile;
  #clusterBits: number;
  #cs: number;
  #last: { hi: number; lo: number; data: Uint8Array } | null = null;

  /** Reads from `file`, whose clusters are `2 ** clusterBits` bytes. */
  constructor(file: ImageFile, clusterBits: number) {
    this.#file = file;
    this.#clusterBits = clusterBits;
    this.#cs = 2 ** clusterBits;
  }

  /** The cluster the compressed L2 entry (`hi`, `lo`) names, inflated. */
  read(hi: number, lo: number): Uint8Array {
    const last = this.#last;
    if (last !== null && last.hi === hi && last.lo === lo) return last.data;
    const path = this.#file.path;
    const { offset, length } = compressedSpan(hi, lo, this.#clusterBits);
    const comp = new Uint8Array(Math.min(length, this.#cs * 2 + 512));
    this.#file.readZeroFilled(comp, offset);
    let out: Uint8Array;
    try {
      out = inflateRawSync(comp, { maxOutputLength: this.#cs, finishFlush: 2 /* Z_SYNC_FLUSH */ });
    } catch (err) {
      throw new QcowError(`'${path}': compressed cluster at ${offset} does not inflate`, {
        cause: err,
      });
    }
    if (out.length !== this.#cs) {
      throw new QcowError(
        `'${path}': compressed cluster at ${offset} inflates to ${out.length} bytes, not ${this.#cs}`,
      );
    }
    const data = new Uint8Array(out.buffer, out.byteOffset, out.length);
    this.#last = { hi, lo, data };
    return data;
  }

  /** Drops the kept cluster (it was freed or overwritten). */
  forget(): void {
    this.#last = null;
  }
}
