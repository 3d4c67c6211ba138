/**
 * The Node build's `cow`: qcow2 header parsing and the consistency check,
 * over a Node `fs` file (no FFI). The Deno build's `cow/` adds images,
 * chains, overlays and the live operations.
 *
 * @example
 * ```ts
 * import { checkImage } from "./cow.ts";
 * import { createImage } from "../cow/mod.ts";
 * const dir = await Deno.makeTempDir();
 * createImage(`${dir}/disk.qcow2`, { size: 1 << 20 }).closeSync();
 * console.log(checkImage(`${dir}/disk.qcow2`).errors); // []
 * await Deno.remove(dir, { recursive: true });
 * ```
 *
 * @module
 */

import { closeSync, fstatSync, openSync, readSync } from "node:fs";
import { checkReader, type CheckResult, type PositionedReader } from "../cow/check.ts";

export * from "../cow/qcow2_format.ts";
export { checkReader, type CheckResult, type PositionedReader } from "../cow/check.ts";
export {
  BackingChainError,
  BlockRangeError,
  CowError,
  DiskIoError,
  QcowError,
  UnsupportedFeatureError,
} from "../cow/errors.ts";

/** A read-only file read at offsets with Node's `fs` (what {@link checkReader} needs). */
export class NodeFile implements PositionedReader {
  #fd: number;

  private constructor(fd: number) {
    this.#fd = fd;
  }

  /** Opens `path` read-only. */
  static open(path: string): NodeFile {
    return new NodeFile(openSync(path, "r"));
  }

  /** The file's length in bytes. */
  length(): number {
    return fstatSync(this.#fd).size;
  }

  /** Reads into `buf` from `offset` until it is full or the file ends; returns the bytes read. */
  pread(buf: Uint8Array, offset: number): number {
    let done = 0;
    while (done < buf.length) {
      const n = readSync(this.#fd, buf, done, buf.length - done, offset + done);
      if (n === 0) break;
      done += n;
    }
    return done;
  }

  /** Closes the file. */
  close(): void {
    closeSync(this.#fd);
  }
}

/** Checks the qcow2 image at `path` as `vmkit disk check` does, reading it with Node's `fs`. */
export function checkImage(path: string): CheckResult {
  const f = NodeFile.open(path);
  try {
    return checkReader(f, path);
  } finally {
    f.close();
  }
}
