/**
 * Positioned file I/O through libc, for image files.
 *
 * Why libc and not `Deno.FsFile`: FsFile has no pread/pwrite (seek + read is
 * two ops and not safe with concurrent users of one fd) and each async op
 * costs 10+ µs, far above what 4 KiB random I/O at QEMU's speed allows. So
 * this file calls `pread64`, `pwrite64`, `fdatasync`, `ftruncate`,
 * `fallocate` and `lseek64` directly through `Deno.dlopen("libc.so.6")`, as
 * synchronous FFI calls (V8 fast calls; page-cache hits take ~1 µs). They block
 * the JS thread for the duration of the syscall, including `fdatasync`: that
 * keeps every image operation atomic with respect to other JS code, which the
 * live operations (switch, commit, stream) rely on. `open` is variadic in C;
 * it is declared with three fixed arguments, which is ABI-correct on x86-64
 * and aarch64 Linux.
 *
 * Every write point (pwrite, ftruncate, fallocate) passes through an optional
 * {@link FaultInjector}, which the crash-consistency tests use to stop an
 * operation sequence at write number k.
 *
 * @module
 */

import { DiskIoError, InjectedFault } from "./errors.ts";

const O_RDONLY = 0;
const O_RDWR = 2;
const O_CREAT = 0o100;
const O_EXCL = 0o200;
const O_TRUNC = 0o1000;
const O_CLOEXEC = 0o2000000;
const SEEK_END = 2;
const FALLOC_FL_KEEP_SIZE = 1;
const FALLOC_FL_PUNCH_HOLE = 2;
const EINTR = 4;
const EOPNOTSUPP = 95;
/** Largest count passed to one pread/pwrite (keeps results within i32). */
const MAX_IO = 1 << 30;

const SYMBOLS = {
  open: { parameters: ["buffer", "i32", "u32"], result: "i32" },
  close: { parameters: ["i32"], result: "i32" },
  // Results declared i32: counts are capped at 1 GiB per call, and on the
  // 64-bit ABIs the low half of an ssize_t return register is the value.
  pread64: { parameters: ["i32", "buffer", "usize", "i64"], result: "i32" },
  pwrite64: { parameters: ["i32", "buffer", "usize", "i64"], result: "i32" },
  fdatasync: { parameters: ["i32"], result: "i32" },
  ftruncate64: { parameters: ["i32", "i64"], result: "i32" },
  fallocate64: { parameters: ["i32", "i32", "i64", "i64"], result: "i32" },
  lseek64: { parameters: ["i32", "i64", "i32"], result: "i64" },
  __errno_location: { parameters: [], result: "pointer" },
  strerror: { parameters: ["i32"], result: "pointer" },
} as const;

/**
 * The symbols as called: Deno's typings want bigint for i64 parameters, but
 * the runtime takes plain numbers too, and converting every offset to a
 * bigint would allocate on the hot path. Offsets stay below 2^53.
 */
interface Libc {
  open(path: Uint8Array, flags: number, mode: number): number;
  close(fd: number): number;
  pread64(fd: number, buf: Uint8Array, count: number, offset: number): number;
  pwrite64(fd: number, buf: Uint8Array, count: number, offset: number): number;
  fdatasync(fd: number): number;
  ftruncate64(fd: number, length: number): number;
  fallocate64(fd: number, mode: number, offset: number, length: number): number;
  lseek64(fd: number, offset: number, whence: number): number | bigint;
  __errno_location(): Deno.PointerValue;
  strerror(code: number): Deno.PointerValue;
}
let libc: Libc | null = null;

function lib(): Libc {
  if (libc === null) libc = Deno.dlopen("libc.so.6", SYMBOLS).symbols as unknown as Libc;
  return libc;
}

function errno(): number {
  const p = lib().__errno_location();
  if (p === null) return 0;
  return new Deno.UnsafePointerView(p).getInt32(0);
}

function errText(code: number): string {
  const p = lib().strerror(code);
  return p === null ? `errno ${code}` : Deno.UnsafePointerView.getCString(p);
}

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
  /** With `create`, replace an existing file. */
  truncate?: boolean;
  /** Fault injection for crash tests. */
  faults?: FaultInjector;
}

/** An open file with positioned, synchronous I/O. */
export class ImageFile {
  /** The path the file was opened with. */
  readonly path: string;
  /** Whether the file was opened read-only. */
  readonly readOnly: boolean;
  #fd: number;
  #faults: FaultInjector | undefined;

  private constructor(path: string, fd: number, readOnly: boolean, faults?: FaultInjector) {
    this.path = path;
    this.#fd = fd;
    this.readOnly = readOnly;
    this.#faults = faults;
  }

  /** Opens `path`; throws {@link DiskIoError} naming the errno on failure. */
  static open(path: string, options: ImageFileOptions = {}): ImageFile {
    const readOnly = options.readOnly ?? false;
    let flags = (readOnly ? O_RDONLY : O_RDWR) | O_CLOEXEC;
    if (options.create) flags |= O_CREAT | (options.truncate ? O_TRUNC : O_EXCL);
    const cpath = new TextEncoder().encode(path + "\0");
    let fd: number;
    do {
      fd = lib().open(cpath, flags, 0o644);
    } while (fd < 0 && errno() === EINTR);
    if (fd < 0) {
      const e = errno();
      throw new DiskIoError("open", path, e, errText(e));
    }
    return new ImageFile(path, fd, readOnly, options.faults);
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

  /** Makes written data durable (`fdatasync`). */
  sync(): void {
    const fd = this.#check();
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

  /** Closes the descriptor; later calls fail with a clear error. */
  close(): void {
    if (this.#fd < 0) return;
    const fd = this.#fd;
    this.#fd = -1;
    if (lib().close(fd) < 0) {
      const e = errno();
      throw new DiskIoError("close", this.path, e, errText(e));
    }
  }
}
