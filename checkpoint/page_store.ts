/**
 * The shared page store of a checkpoint's clones: one tmpfs file per
 * checkpoint (`<dir>/vmkit-pages-<checkpoint id>`, guest RAM in image
 * order) that every VM restored from the checkpoint maps `MAP_PRIVATE` as
 * its RAM. The fault thread writes a page into the file the first time any
 * VM touches it and maps it from the file's page cache; a VM that only reads
 * a page therefore shares it with every other clone, and a write gives that
 * VM its own copy (copy-on-write of the private mapping). The file only ever
 * holds the checkpoint's own bytes.
 *
 * Why tmpfs: userfaultfd refuses write-protect on private mappings of ext4
 * files (EINVAL here), and a restored VM must be write-protectable to be
 * checkpointed again; on a private mapping of a shmem file it is, and minor
 * faults (`UFFD_FEATURE_MINOR_SHMEM`) tell the fault thread about every page
 * another clone already stored, so each first access is seen and tracked.
 *
 * Lifetime: each user holds a shared `flock`; the last one out (an
 * exclusive lock succeeds) removes the file. A store left by VMs that all
 * died (kill -9) is removed by the next open in its folder: nobody holds a
 * lock on it, and its bytes can always be filled again from the checkpoint.
 * A store for another checkpoint or owned by another user is refused.
 *
 * @example
 * ```ts
 * import { openUffdShim } from "../native/uffd_ffi.ts";
 * import { PageStore } from "./page_store.ts";
 * await openUffdShim();
 * const dir = await Deno.makeTempDir({ dir: "/dev/shm" });
 * const store = PageStore.open(dir, "00112233445566778899aabbccddeeff", 1 << 20);
 * console.log(store?.path); // undefined if /dev/shm is not a tmpfs
 * store?.close(); // the last user removes the file
 * await Deno.remove(dir);
 * ```
 *
 * @module
 */

import { cString } from "../native/ffi.ts";
import { check, uffd } from "../native/uffd_ffi.ts";
import { CheckpointError } from "./errors.ts";

const O_RDWR = 2;
const O_CREAT = 0o100;
const O_NOFOLLOW = 0o400000;
const LOCK_SH = 1;
const LOCK_EX = 2;
const LOCK_NB = 4;
const S_IFMT = 0o170000;
const S_IFREG = 0o100000;
/** `TMPFS_MAGIC` of statfs(2). */
const TMPFS_MAGIC = 0x01021994;
/** Where stores go unless told otherwise. */
export const DEFAULT_PAGE_STORE_DIR = "/dev/shm";

interface FileStat {
  size: number;
  uid: number;
  nlink: number;
  mode: number;
  ino: bigint;
}

function stat(fd: number): FileStat {
  const out = new BigUint64Array(5);
  check("fstat(page store)", uffd().vk_file_stat(fd, new Uint8Array(out.buffer)));
  return {
    size: Number(out[0]),
    uid: Number(out[1]),
    nlink: Number(out[2]),
    mode: Number(out[3]),
    ino: out[4] ?? 0n,
  };
}

/** One VM's hold on a checkpoint's shared page store. */
export class PageStore implements Disposable {
  /** The store file. */
  readonly path: string;
  /** Its fd (mapped by the VM, written by the fault thread). */
  readonly fd: number;
  /** Bytes (the checkpoint's guest RAM). */
  readonly bytes: number;
  readonly #ino: bigint;
  #closed = false;

  private constructor(path: string, fd: number, bytes: number, ino: bigint) {
    this.path = path;
    this.fd = fd;
    this.bytes = bytes;
    this.#ino = ino;
  }

  /**
   * Opens (creating it if needed) the store of checkpoint `id` (hex) in
   * `dir`, sized `bytes`; undefined when `dir` is not on tmpfs (the caller
   * then fills RAM privately). Throws when the file there is not a store of
   * this size owned by this user.
   */
  static open(dir: string, id: string, bytes: number): PageStore | undefined {
    if (!/^[0-9a-f]{32}$/.test(id)) throw new CheckpointError(`bad checkpoint id '${id}'`);
    const path = `${dir.replace(/\/+$/, "")}/vmkit-pages-${id}`;
    PageStore.sweep(dir);
    const s = uffd();
    for (let attempt = 0; attempt < 8; attempt++) {
      const fd = s.vk_file_open(cString(path), O_RDWR | O_CREAT | O_NOFOLLOW, 0o600);
      if (fd < 0) {
        throw new CheckpointError(`cannot open the page store ${path}: errno ${-fd}`);
      }
      let keep = false;
      try {
        if (Number(s.vk_fs_magic(fd)) !== TMPFS_MAGIC) return undefined;
        const st = stat(fd);
        if ((st.mode & S_IFMT) !== S_IFREG || st.uid !== Number(s.vk_geteuid())) {
          throw new CheckpointError(
            `${path} is not a page store of this user; remove it or choose another folder`,
          );
        }
        if (st.size === 0) check("ftruncate(page store)", s.vk_file_truncate(fd, BigInt(bytes)));
        else if (st.size !== bytes) {
          throw new CheckpointError(
            `${path} holds ${st.size} bytes, not this checkpoint's ${bytes}; remove it`,
          );
        }
        check("flock(page store)", s.vk_file_lock(fd, LOCK_SH));
        const now = stat(fd);
        if (now.nlink === 0) continue; // its last user removed it meanwhile: make a new one
        keep = true;
        return new PageStore(path, fd, bytes, now.ino);
      } finally {
        if (!keep) s.vk_file_close(fd);
      }
    }
    throw new CheckpointError(
      `the page store ${path} keeps disappearing; is another tool removing it?`,
    );
  }

  /**
   * Removes the stores in `dir` that no VM holds (their VMs died without
   * closing them); returns their paths. Stores of other users are left alone.
   */
  static sweep(dir: string): string[] {
    const s = uffd();
    const removed: string[] = [];
    let entries: Deno.DirEntry[];
    try {
      entries = [...Deno.readDirSync(dir)];
    } catch (err) {
      if (err instanceof Deno.errors.NotFound) return removed;
      throw err;
    }
    for (const e of entries) {
      if (!e.isFile || !/^vmkit-pages-[0-9a-f]{32}$/.test(e.name)) continue;
      const path = `${dir.replace(/\/+$/, "")}/${e.name}`;
      const fd = s.vk_file_open(cString(path), O_RDWR | O_NOFOLLOW, 0);
      if (fd < 0) continue; // gone meanwhile, or not ours to open
      try {
        const st = stat(fd);
        if (st.uid !== Number(s.vk_geteuid()) || st.nlink === 0) continue;
        if (s.vk_file_lock(fd, LOCK_EX | LOCK_NB) !== 0) continue; // in use
        // A VM that opened it but has not locked it yet sees the link gone and makes a new one.
        if (Deno.statSync(path).ino === Number(st.ino)) {
          Deno.removeSync(path);
          removed.push(path);
        }
      } finally {
        s.vk_file_close(fd);
      }
    }
    return removed;
  }

  /** Lets go of the store; the last user removes the file. Unmap the VM's RAM first. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    const s = uffd();
    if (s.vk_file_lock(this.fd, LOCK_EX | LOCK_NB) === 0) {
      try {
        // Only the file this store opened: a new one may have taken the name since.
        if (Deno.statSync(this.path).ino === Number(this.#ino)) Deno.removeSync(this.path);
      } catch (err) {
        if (!(err instanceof Deno.errors.NotFound)) throw err;
      }
    }
    s.vk_file_close(this.fd);
  }

  /** Same as {@link close}. */
  [Symbol.dispose](): void {
    this.close();
  }
}
