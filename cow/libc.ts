/**
 * The libc calls `cow/` makes through FFI (`Deno.dlopen("libc.so.6")`), in
 * one table shared by the image file I/O and the image locks.
 *
 * The symbols are synchronous FFI calls (V8 fast calls). `open` and `fcntl`
 * are variadic in C; they are declared with fixed arguments, which is
 * ABI-correct on x86-64 and aarch64 Linux.
 *
 * @module
 */

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
  fcntl: { parameters: ["i32", "i32", "buffer"], result: "i32" },
  fcntlInt: { name: "fcntl", parameters: ["i32", "i32", "i32"], result: "i32" },
  // A real function from glibc 2.33 on (older ones only had __fxstat64).
  fstat64: { parameters: ["i32", "buffer"], result: "i32", optional: true },
  __errno_location: { parameters: [], result: "pointer" },
  strerror: { parameters: ["i32"], result: "pointer" },
  // syscall(2) for cachestat(2) (Linux 6.5+, no libc wrapper): integer arguments only, which
  // is ABI-correct for the variadic call on x86-64 and aarch64.
  cachestat: {
    name: "syscall",
    parameters: ["i64", "i32", "buffer", "buffer", "u32"],
    result: "i32",
  },
} as const;

/**
 * The symbols as called: Deno's typings want bigint for i64 parameters, but
 * the runtime takes plain numbers too, and converting every offset to a
 * bigint would allocate on the hot path. Offsets stay below 2^53.
 */
export interface Libc {
  open(path: Uint8Array, flags: number, mode: number): number;
  close(fd: number): number;
  pread64(fd: number, buf: Uint8Array, count: number, offset: number): number;
  pwrite64(fd: number, buf: Uint8Array, count: number, offset: number): number;
  fdatasync(fd: number): number;
  ftruncate64(fd: number, length: number): number;
  fallocate64(fd: number, mode: number, offset: number, length: number): number;
  lseek64(fd: number, offset: number, whence: number): number | bigint;
  fcntl(fd: number, cmd: number, arg: Uint8Array): number;
  fcntlInt(fd: number, cmd: number, arg: number): number;
  fstat64: ((fd: number, buf: Uint8Array) => number) | null;
  cachestat(nr: number, fd: number, range: Uint8Array, out: Uint8Array, flags: number): number;
  __errno_location(): Deno.PointerValue;
  strerror(code: number): Deno.PointerValue;
}
let libc: Libc | null = null;

/** The libc symbols, loaded on first use. */
export function lib(): Libc {
  if (libc === null) libc = Deno.dlopen("libc.so.6", SYMBOLS).symbols as unknown as Libc;
  return libc;
}

/** The calling thread's errno. */
export function errno(): number {
  const p = lib().__errno_location();
  if (p === null) return 0;
  return new Deno.UnsafePointerView(p).getInt32(0);
}

/** strerror(code). */
export function errText(code: number): string {
  const p = lib().strerror(code);
  return p === null ? `errno ${code}` : Deno.UnsafePointerView.getCString(p);
}

const SYS_CACHESTAT = 451;
/** struct cachestat_range {u64 off, len} and struct cachestat (5 u64), as 32-bit halves. */
const cacheRange = new Uint32Array(4);
const cacheOut = new Uint32Array(10);
const cacheRangeBytes = new Uint8Array(cacheRange.buffer);
const cacheOutBytes = new Uint8Array(cacheOut.buffer);
/** Whether cachestat(2) is there; undefined until first asked (no Deno access at import). */
let cachestatWorks: boolean | undefined;

/**
 * Whether every page of `[offset, +length)` of `fd` is in the page cache
 * (cachestat(2), which starts no I/O); null when the kernel cannot say.
 */
export function allCached(fd: number, offset: number, length: number): boolean | null {
  const n = cachedPages(fd, offset, length);
  return n === null ? null : n >= Math.ceil((offset + length) / 4096) - Math.floor(offset / 4096);
}

/** Pages of `[offset, +length)` of `fd` in the page cache (cachestat(2)); null when unknown. */
export function cachedPages(fd: number, offset: number, length: number): number | null {
  cachestatWorks ??= Deno.build.arch === "x86_64" || Deno.build.arch === "aarch64";
  if (!cachestatWorks) return null;
  const first = Math.floor(offset / 4096);
  const pages = Math.ceil((offset + length) / 4096) - first;
  const off = first * 4096;
  cacheRange[0] = off % 0x1_0000_0000;
  cacheRange[1] = Math.floor(off / 0x1_0000_0000);
  cacheRange[2] = pages * 4096;
  cacheRange[3] = 0;
  const r = lib().cachestat(SYS_CACHESTAT, fd, cacheRangeBytes, cacheOutBytes, 0);
  if (r < 0) {
    cachestatWorks = false; // ENOSYS: an older kernel
    return null;
  }
  return cacheOut[0] ?? 0; // nr_cache (below 2^32 for these lengths)
}

/** What `fstat` says about an open file: its kind (S_IFMT bits), device and inode. */
export interface FdStat {
  /** st_mode & S_IFMT. */
  type: number;
  /** st_dev. */
  dev: number;
  /** st_ino. */
  ino: number;
}

/** File type bits of st_mode. */
export const S_IF = {
  MT: 0o170000,
  REG: 0o100000,
  BLK: 0o060000,
  DIR: 0o040000,
  CHR: 0o020000,
  FIFO: 0o010000,
  SOCK: 0o140000,
} as const;

/**
 * `fstat(fd)`, or null when this libc has no `fstat64` symbol. struct stat
 * starts with st_dev and st_ino (u64 each) on both ABIs; st_mode is at 24 on
 * x86-64 and at 16 on aarch64.
 */
export function fstat(fd: number): FdStat | null {
  const f = lib().fstat64;
  if (f === null) return null;
  const buf = new Uint8Array(256);
  if (f(fd, buf) !== 0) return null;
  const v = new DataView(buf.buffer);
  const modeAt = Deno.build.arch === "aarch64" ? 16 : 24;
  return {
    type: v.getUint32(modeAt, true) & S_IF.MT,
    dev: Number(v.getBigUint64(0, true)),
    ino: Number(v.getBigUint64(8, true)),
  };
}

/** errno values by name. */
export const ERRNO = {
  EBADF: 9,
  EINTR: 4,
  EACCES: 13,
  EAGAIN: 11,
  EOPNOTSUPP: 95,
} as const;
