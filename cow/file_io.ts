/**
 * Positioned file I/O through libc, for image files.
 *
 * Why libc and not `Deno.FsFile`: FsFile has no pread/pwrite (seek + read is
 * two ops and not safe with concurrent users of one fd) and each async op
 * costs 10+ µs, far above what 4 KiB random I/O at QEMU's speed allows. So
 * this file calls `pread64`, `pwrite64`, `fdatasync`, `ftruncate`,
 * `fallocate` and `lseek64` directly (`libc.ts`), as synchronous FFI calls
 * (V8 fast calls; page-cache hits take ~1 µs). They block the JS thread for
 * the duration of the syscall, including `fdatasync`: that keeps every image
 * operation atomic with respect to other JS code, which the live operations
 * (switch, commit, stream) rely on.
 *
 * Opening checks what it opened: only regular files and block devices are
 * images (a FIFO is opened non-blocking, so it cannot hang the open), names
 * holding a NUL byte are refused, and the file is locked the way QEMU locks
 * images (`image_lock.ts`) before anything is written, also before a
 * `create` truncates an existing file.
 *
 * Every write point (pwrite, ftruncate, fallocate) passes through an optional
 * {@link FaultInjector}, which the crash-consistency tests use to stop an
 * operation sequence at write number k.
 *
 * @module
 */

import { CowError, DiskIoError, InjectedFault } from "./errors.ts";
import { DIRECT_MAX, FileRing, fileRing } from "./file_ring.ts";
import { lockImage, type LockMode, unlockImage } from "./image_lock.ts";
import { allCached, ERRNO, errno, errText, lib } from "./libc.ts";
import { checkKind, type FileIdentity } from "./file_identity.ts";

export { type FileIdentity, sameFile } from "./file_identity.ts";

const O_RDONLY = 0;
const O_RDWR = 2;
const O_CREAT = 0o100;
const O_EXCL = 0o200;
const O_NONBLOCK = 0o4000;
const O_CLOEXEC = 0o2000000;
const F_SETFL = 4;
const SEEK_END = 2;
const FALLOC_FL_KEEP_SIZE = 1;
const FALLOC_FL_PUNCH_HOLE = 2;
const EINTR = ERRNO.EINTR;
const EOPNOTSUPP = ERRNO.EOPNOTSUPP;
const RESOLVED: Promise<void> = Promise.resolve();
/** O_DIRECT, which differs by architecture (read when used: nothing touches Deno at import). */
const oDirect = (): number => Deno.build.arch === "aarch64" ? 0o200000 : 0o40000;
/** Requests in flight from which small uncached reads go O_DIRECT (see readAsync). */
const DIRECT_DEPTH = 4;
/** Largest count passed to one pread/pwrite (keeps results within i32). */
const MAX_IO = 1 << 30;

/**
 * Counts write points and throws {@link InjectedFault} at write number
 * `failAt` (1-based) and at every write after it, as if the process had died.
 */
export class FaultInjector {
  /** Write points seen so far. */
  count: number = 0;
  /** The write point that fails; 0 never fails (counting only). */
  failAt: number;
  /** Creates an injector failing at write `failAt` (0: never). */
  constructor(failAt = 0) {
    this.failAt = failAt;
  }
  /** When set, the file offset of every write point, in order (pwrite, truncate, punch). */
  trace: number[] | null = null;
  /** `fdatasync` calls made so far (not write points: a sync never fails here). */
  syncs: number = 0;
  /** Called before each write point at `offset`; throws once the fail point is reached. */
  hit(offset: number): void {
    this.count++;
    this.trace?.push(offset);
    if (this.failAt > 0 && this.count >= this.failAt) throw new InjectedFault(this.count);
  }
}

/** How to open an {@link ImageFile}. */
export interface ImageFileOptions {
  /** Open read-only (default false). */
  readOnly?: boolean;
  /** Create the file; fails if it exists unless `truncate` is set. */
  create?: boolean;
  /** With `create`, replace an existing file (after locking it). */
  truncate?: boolean;
  /**
   * How to lock the file (see `image_lock.ts`); default "write" for
   * read-write opens, "read" for read-only ones.
   */
  lock?: LockMode;
  /** Fault injection for crash tests. */
  faults?: FaultInjector;
}

/**
 * An open file with positioned I/O: synchronous (the JS thread blocks in the
 * syscall) or asynchronous (through the thread's io_uring, `file_ring.ts`).
 */
export class ImageFile {
  /** The path the file was opened with. */
  readonly path: string;
  /** Whether the file was opened read-only. */
  readonly readOnly: boolean;
  /** Device and inode of the open file (what it is, whatever name it was opened by). */
  readonly identity: FileIdentity;
  #fd: number;
  #faults: FaultInjector | undefined;
  /** A second descriptor of the file opened O_DIRECT (-2: not yet, -1: unavailable). */
  #direct = -2;
  /** Asynchronous requests not yet settled (the fd must stay open for them). */
  #pending = 0;
  #drained: (() => void) | null = null;
  /** Given to the ring with every request: counts it out when it settles. */
  readonly #owner = {
    path: "",
    settled: () => {
      if (--this.#pending === 0 && this.#drained !== null) {
        const d = this.#drained;
        this.#drained = null;
        d();
      }
    },
  };

  private constructor(
    path: string,
    fd: number,
    readOnly: boolean,
    identity: FileIdentity,
    faults?: FaultInjector,
  ) {
    this.path = path;
    this.#fd = fd;
    this.#owner.path = path;
    this.readOnly = readOnly;
    this.identity = identity;
    this.#faults = faults;
  }

  /**
   * Opens `path`; throws {@link DiskIoError} naming the errno on failure,
   * {@link CowError} when the path is not a regular file or block device,
   * and `ImageLockError` when another opener's locks conflict.
   */
  static open(path: string, options: ImageFileOptions = {}): ImageFile {
    const readOnly = options.readOnly ?? false;
    if (path.includes("\0")) {
      throw new CowError(`image path ${JSON.stringify(path)} contains a NUL byte`);
    }
    if (path === "") throw new CowError("image path is empty");
    let flags = (readOnly ? O_RDONLY : O_RDWR) | O_CLOEXEC | O_NONBLOCK;
    // Never O_TRUNC: an existing file is emptied only once it is locked.
    if (options.create) flags |= O_CREAT | (options.truncate ? 0 : O_EXCL);
    const cpath = new TextEncoder().encode(path + "\0");
    let fd: number;
    do {
      fd = lib().open(cpath, flags, 0o644);
    } while (fd < 0 && errno() === EINTR);
    if (fd < 0) {
      const e = errno();
      throw new DiskIoError("open", path, e, errText(e));
    }
    try {
      const { identity, regular } = checkKind(fd, path);
      // O_NONBLOCK only kept a FIFO from blocking the open; it has no business on an image.
      lib().fcntlInt(fd, F_SETFL, 0);
      lockImage(fd, path, options.lock ?? (readOnly ? "read" : "write"), identity);
      const file = new ImageFile(path, fd, readOnly, identity, options.faults);
      if (options.create && options.truncate && regular) file.truncate(0);
      return file;
    } catch (err) {
      lib().close(fd);
      throw err;
    }
  }

  /**
   * The open descriptor, for a caller that reads it with its own I/O
   * (io_uring); valid until {@link ImageFile.close}.
   */
  get fd(): number {
    return this.#check();
  }

  #check(): number {
    if (this.#fd < 0) throw new DiskIoError("use", this.path, 9, "file is closed");
    return this.#fd;
  }

  /**
   * Reads up to `buf.length` bytes at `offset`; returns the count read (short
   * only at end of file).
   */
  pread(buf: Uint8Array, offset: number): number {
    const fd = this.#check();
    let done = 0;
    while (done < buf.length) {
      const part = done === 0 && buf.length <= MAX_IO ? buf : buf.subarray(done, done + MAX_IO);
      const n = lib().pread64(fd, part, part.length, offset + done);
      if (n < 0) {
        const e = errno();
        if (e === EINTR) continue;
        throw new DiskIoError("pread", this.path, e, errText(e));
      }
      if (n === 0) break;
      done += n;
    }
    return done;
  }

  /** Reads `buf.length` bytes at `offset`; bytes past end of file read as zeros. */
  readZeroFilled(buf: Uint8Array, offset: number): void {
    const n = this.pread(buf, offset);
    if (n < buf.length) buf.fill(0, n);
  }

  /** Writes all of `data` at `offset`. */
  pwrite(data: Uint8Array, offset: number): void {
    const fd = this.#check();
    this.#faults?.hit(offset);
    let done = 0;
    while (done < data.length) {
      const part = done === 0 && data.length <= MAX_IO ? data : data.subarray(done, done + MAX_IO);
      const n = lib().pwrite64(fd, part, part.length, offset + done);
      if (n < 0) {
        const e = errno();
        if (e === EINTR) continue;
        throw new DiskIoError("pwrite", this.path, e, errText(e));
      }
      done += n;
    }
  }

  /** Asynchronous requests in flight. */
  get pending(): number {
    return this.#pending;
  }

  /** Resolves once no asynchronous request of this file is in flight. */
  async drain(): Promise<void> {
    while (this.#pending > 0) await new Promise<void>((r) => (this.#drained = r));
  }

  /** Runs `call` on the thread's ring (set up on first use), counting it in flight. */
  #async(call: (ring: FileRing) => Promise<void>): Promise<void> {
    this.#check();
    this.#pending++;
    const r = fileRing();
    if (r instanceof FileRing) return call(r);
    return r.then(call, (err) => {
      this.#owner.settled();
      throw err;
    });
  }

  /**
   * Reads `buf.length` bytes at `offset` off the JS thread; bytes past end of
   * file read as zeros. `buf` must stay attached until the promise settles.
   */
  readAsync(buf: Uint8Array, offset: number): Promise<void> {
    const r = fileRing();
    let done = 0;
    if (
      r instanceof FileRing && r.inflight >= DIRECT_DEPTH && buf.length <= DIRECT_MAX &&
      offset % 4096 === 0 && buf.length % 4096 === 0 && buf.length > 0
    ) {
      // A deep queue of small reads: what the page cache lacks is read with O_DIRECT, as
      // QEMU's cache=none does: buffered, every miss would start a readahead the guest did
      // not ask for (it reads ahead itself), and under a deep queue those extra bytes cost
      // more than they save. Checked with cachestat(2), which starts no I/O itself.
      const fd = this.#check();
      if (allCached(fd, offset, buf.length) === false) {
        const dfd = this.#directFd();
        if (dfd >= 0) {
          this.#pending++;
          const p = r.readDirect(dfd, buf, offset, this.#owner);
          if (p !== null) return p;
          this.#pending--;
        }
      }
    }
    if (r instanceof FileRing) {
      // What the page cache holds needs no ring round trip.
      done = r.readCached(this.#check(), buf, offset);
      if (done === buf.length) return RESOLVED;
    }
    return this.#async((ring) => ring.read(this.#fd, buf, offset, this.#owner, done));
  }

  /** The O_DIRECT descriptor of the file, opened on first use; -1 when it cannot be. */
  #directFd(): number {
    if (this.#direct !== -2) return this.#direct;
    const cpath = new TextEncoder().encode(`/proc/self/fd/${this.#fd}\0`);
    // Only read through it; the locks stay on the main descriptor.
    const fd = lib().open(cpath, O_RDONLY | O_CLOEXEC | oDirect(), 0);
    this.#direct = fd < 0 ? -1 : fd;
    return this.#direct;
  }

  /** Writes all of `data` at `offset` off the JS thread (see {@link ImageFile.readAsync}). */
  writeAsync(data: Uint8Array, offset: number): Promise<void> {
    try {
      this.#faults?.hit(offset);
    } catch (err) {
      return Promise.reject(err);
    }
    return this.#async((ring) => ring.write(this.#fd, data, offset, this.#owner));
  }

  /** `fdatasync` off the JS thread: every write settled before the call is durable. */
  syncAsync(): Promise<void> {
    return this.#async((ring) => ring.datasync(this.#fd, this.#owner));
  }

  /** Makes written data durable (`fdatasync`). */
  sync(): void {
    const fd = this.#check();
    if (this.#faults) this.#faults.syncs++;
    if (lib().fdatasync(fd) < 0) {
      const e = errno();
      throw new DiskIoError("fdatasync", this.path, e, errText(e));
    }
  }

  /** Sets the file length. */
  truncate(length: number): void {
    const fd = this.#check();
    this.#faults?.hit(length);
    if (lib().ftruncate64(fd, length) < 0) {
      const e = errno();
      throw new DiskIoError("ftruncate", this.path, e, errText(e));
    }
  }

  /**
   * Punches a hole (reads as zeros, keeps the size). Returns false when the
   * file system does not support it, so the caller can write zeros instead.
   */
  punchHole(offset: number, length: number): boolean {
    const fd = this.#check();
    this.#faults?.hit(offset);
    const mode = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE;
    if (lib().fallocate64(fd, mode, offset, length) < 0) {
      const e = errno();
      if (e === EOPNOTSUPP) return false;
      throw new DiskIoError("fallocate", this.path, e, errText(e));
    }
    return true;
  }

  /** Current length of the file in bytes. */
  length(): number {
    const fd = this.#check();
    const n = Number(lib().lseek64(fd, 0, SEEK_END));
    if (n < 0) {
      const e = errno();
      throw new DiskIoError("lseek", this.path, e, errText(e));
    }
    return n;
  }

  /**
   * Changes how the open file is locked (e.g. to let a read-write open of
   * the same file in, or back). Throws `ImageLockError` when another opener
   * conflicts with `mode`; the file is then left with `mode`'s own bytes
   * taken, as far as they could be.
   */
  relock(mode: LockMode): void {
    const fd = this.#check();
    unlockImage(fd, this.path);
    lockImage(fd, this.path, mode, this.identity);
  }

  /**
   * Closes the descriptor; later calls fail with a clear error. Throws while
   * asynchronous requests are in flight (await {@link ImageFile.drain} first).
   */
  close(): void {
    if (this.#fd < 0) return;
    if (this.#pending > 0) {
      throw new CowError(
        `cannot close '${this.path}': ${this.#pending} asynchronous requests are in flight; ` +
          `await them (or the image's close()) first`,
      );
    }
    const fd = this.#fd;
    this.#fd = -1;
    if (this.#direct >= 0) lib().close(this.#direct);
    this.#direct = -2;
    if (lib().close(fd) < 0) {
      const e = errno();
      throw new DiskIoError("close", this.path, e, errText(e));
    }
  }
}
