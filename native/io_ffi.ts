/**
 * Typed bindings of the I/O shim (`io.c`): eventfds, KVM ioeventfd/irqfd
 * registration, waiting on fds (synchronously, or on Deno's FFI thread pool
 * so the calling Worker's event loop stays free), io_uring and positioned
 * vector file I/O.
 *
 * Works on any thread that has opened the main shim (`loadShim()` on the main
 * thread, `openShim(path)` in a Worker): the I/O symbols are opened from the
 * same library.
 *
 * @example
 * ```ts
 * import { loadShim } from "./ffi.ts";
 * import { EventFd, FdWaiter } from "./io_ffi.ts";
 * await loadShim();
 * using ev = EventFd.create();
 * const waiter = new FdWaiter([ev.fd], [true]);
 * ev.signal();
 * console.log(await waiter.wait(1000)); // 1: fd 0 is ready
 * ```
 *
 * @module
 */

import { shim, toBigInt } from "./ffi.ts";
import { KvmError } from "./kvm.ts";

/** Symbols of `io.c`. */
export const IO_SYMBOLS = {
  vkio_eventfd: { parameters: [], result: "i32" },
  vkio_eventfd_write: { parameters: ["i32", "u32"], result: "i32" },
  vkio_eventfd_read: { parameters: ["i32"], result: "i32" },
  vkio_close: { parameters: ["i32"], result: "i32" },
  vkio_ioeventfd: { parameters: ["i32", "i32", "u64", "u32", "u64", "u32"], result: "i32" },
  vkio_irqfd: { parameters: ["i32", "i32", "u32", "u32"], result: "i32" },
  vkio_wait: { parameters: ["buffer", "u32", "u64", "i32", "buffer"], result: "i32" },
  vkio_wait_async: {
    name: "vkio_wait",
    parameters: ["buffer", "u32", "u64", "i32", "buffer"],
    result: "i32",
    nonblocking: true,
  },
  vkio_uring_setup: { parameters: ["u32", "i32", "u32"], result: "i64" },
  vkio_uring_ready: { parameters: ["u64"], result: "i32" },
  vkio_uring_close: { parameters: ["u64"], result: "i32" },
  vkio_uring_space: { parameters: ["u64"], result: "i32" },
  vkio_uring_submit: { parameters: ["u64", "buffer", "u32", "u32"], result: "i32" },
  vkio_uring_reap: { parameters: ["u64", "buffer", "u32", "u32", "u32"], result: "i32" },
  vkio_uring_read_nowait: { parameters: ["buffer", "u32"], result: "i32" },
  vkio_open: { parameters: ["buffer", "i32", "u32"], result: "i32" },
  vkio_preadv: {
    parameters: ["i32", "buffer", "u32", "u32", "u32", "u32", "u32"],
    result: "i32",
  },
  vkio_pwritev: {
    parameters: ["i32", "buffer", "u32", "u32", "u32", "u32", "u32"],
    result: "i32",
  },
} as const;

/** The opened I/O shim's callable symbols. */
export type IoShim = Deno.DynamicLibrary<typeof IO_SYMBOLS>["symbols"];

let loaded: IoShim | undefined;

/** The I/O symbols, opened (once per thread) from the library the main shim came from. */
export function ioShim(): IoShim {
  if (loaded === undefined) loaded = Deno.dlopen(shim().path, IO_SYMBOLS).symbols;
  return loaded;
}

function check(call: string, r: number, detail = ""): number {
  if (r < 0) throw new KvmError(call, -r, detail);
  return r;
}

/** `KVM_IOEVENTFD_FLAG_DATAMATCH`. */
export const IOEVENTFD_DATAMATCH = 1;
/** `KVM_IOEVENTFD_FLAG_PIO`. */
export const IOEVENTFD_PIO = 2;
/** `KVM_IOEVENTFD_FLAG_DEASSIGN`. */
export const IOEVENTFD_DEASSIGN = 4;
/** `KVM_IRQFD_FLAG_DEASSIGN`. */
export const IRQFD_DEASSIGN = 1;

/** A non-blocking eventfd (a counter another thread or KVM signals). */
export class EventFd implements Disposable {
  /** The fd (valid in every thread of the process). */
  readonly fd: number;
  #closed = false;

  private constructor(fd: number) {
    this.fd = fd;
  }

  /** Creates an eventfd with counter 0 (`EFD_NONBLOCK | EFD_CLOEXEC`). */
  static create(): EventFd {
    return new EventFd(check("eventfd", ioShim().vkio_eventfd()));
  }

  /** Adds `n` to the counter. */
  signal(n = 1): void {
    signalEventFd(this.fd, n);
  }

  /** Reads and clears the counter (0 when it was 0). */
  read(): number {
    return check("read(eventfd)", ioShim().vkio_eventfd_read(this.fd));
  }

  /** Closes the fd. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    check("close(eventfd)", ioShim().vkio_close(this.fd));
  }

  /** Same as {@link EventFd.close}. */
  [Symbol.dispose](): void {
    this.close();
  }
}

/** Adds `n` to the counter of eventfd `fd` (an fd number handed over from another thread). */
export function signalEventFd(fd: number, n = 1): void {
  check("write(eventfd)", ioShim().vkio_eventfd_write(fd, n), `fd ${fd}`);
}

function ioeventfd(
  call: string,
  vmFd: number,
  fd: number,
  addr: number,
  len: number,
  datamatch: number | undefined,
  extra: number,
): void {
  const flags = (datamatch === undefined ? 0 : IOEVENTFD_DATAMATCH) | extra;
  check(
    call,
    ioShim().vkio_ioeventfd(vmFd, fd, BigInt(addr), len, BigInt(datamatch ?? 0), flags),
    `0x${addr.toString(16)}/${len}`,
  );
}

/**
 * `KVM_IOEVENTFD`: a guest write of `len` bytes at MMIO `addr` whose value is
 * `datamatch` (any value when absent) signals `fd` inside KVM, with no exit
 * to a vCPU thread.
 */
export function registerIoeventfd(
  vmFd: number,
  fd: number,
  addr: number,
  len: number,
  datamatch?: number,
): void {
  ioeventfd("KVM_IOEVENTFD", vmFd, fd, addr, len, datamatch, 0);
}

/** Removes a registration made by {@link registerIoeventfd} (same arguments). */
export function unregisterIoeventfd(
  vmFd: number,
  fd: number,
  addr: number,
  len: number,
  datamatch?: number,
): void {
  ioeventfd("KVM_IOEVENTFD(deassign)", vmFd, fd, addr, len, datamatch, IOEVENTFD_DEASSIGN);
}

/** `KVM_IRQFD`: every signal of `fd` pulses GSI `gsi` (an edge; no resample fd). */
export function registerIrqfd(vmFd: number, fd: number, gsi: number): void {
  check("KVM_IRQFD", ioShim().vkio_irqfd(vmFd, fd, gsi, 0), `gsi ${gsi}`);
}

/** Detaches an irqfd made by {@link registerIrqfd}. */
export function unregisterIrqfd(vmFd: number, fd: number, gsi: number): void {
  check("KVM_IRQFD(deassign)", ioShim().vkio_irqfd(vmFd, fd, gsi, IRQFD_DEASSIGN), `gsi ${gsi}`);
}

/** Most fds one {@link FdWaiter} watches. */
export const MAX_WAIT_FDS = 64;

/**
 * Waits for any of a fixed set of fds to become readable. Eventfds marked
 * for draining have their counters consumed by the wait itself. The result
 * is a bit set (bit i: fd i ready), for up to 32 fds as a number; use
 * {@link FdWaiter.readyHigh} for fds 32..63.
 */
export class FdWaiter {
  readonly #fds: Int32Array<ArrayBuffer>;
  readonly #drain: bigint;
  readonly #ready = new Uint32Array(2);

  /** Watches `fds`; `drain[i]` marks fd i as an eventfd whose counter the wait consumes. */
  constructor(fds: readonly number[], drain: readonly boolean[]) {
    if (fds.length === 0 || fds.length > MAX_WAIT_FDS) {
      throw new RangeError(`fd waiter: 1..${MAX_WAIT_FDS} fds, got ${fds.length}`);
    }
    this.#fds = Int32Array.from(fds);
    let mask = 0n;
    drain.forEach((d, i) => {
      if (d) mask |= 1n << BigInt(i);
    });
    this.#drain = mask;
  }

  /** Ready bits of fds 32..63 from the last wait. */
  get readyHigh(): number {
    return this.#ready[1] ?? 0;
  }

  /**
   * Waits on Deno's FFI thread pool (the event loop keeps running) up to
   * `timeoutMs` (-1: forever); resolves with the ready bits of fds 0..31
   * (0 on timeout).
   */
  async wait(timeoutMs: number): Promise<number> {
    const r = await ioShim().vkio_wait_async(
      this.#fds,
      this.#fds.length,
      this.#drain,
      timeoutMs,
      this.#ready,
    );
    check("poll", r);
    return r === 0 ? 0 : this.#ready[0] ?? 0;
  }

  /** Like {@link FdWaiter.wait} but blocks this thread (use 0 to poll). */
  waitSync(timeoutMs: number): number {
    const r = ioShim().vkio_wait(this.#fds, this.#fds.length, this.#drain, timeoutMs, this.#ready);
    check("poll", r);
    return r === 0 ? 0 : this.#ready[0] ?? 0;
  }
}

/** io_uring opcodes vmkit submits (`IORING_OP_*`). */
export const UringOp = {
  NOP: 0,
  READV: 1,
  WRITEV: 2,
  FSYNC: 3,
  FALLOCATE: 17,
  READ: 22,
  WRITE: 23,
} as const;
/** `IORING_FSYNC_DATASYNC`. */
export const URING_FSYNC_DATASYNC = 1;
/** Bytes of one request record for {@link IoUring.submit} (layout in `io.c`). */
export const URING_REQ_BYTES = 40;
/** Bytes of one completion record from {@link IoUring.reap}: user_data u64, res i32, flags u32. */
export const URING_CQE_BYTES = 16;

/** Offsets inside a {@link URING_REQ_BYTES} request record. */
export const UringReq = {
  OPCODE: 0,
  SQE_FLAGS: 2,
  FD: 4,
  ADDR: 8,
  LEN: 16,
  OP_FLAGS: 20,
  USER_DATA: 24,
  OFF: 32,
} as const;

/** An io_uring instance (raw syscalls in `io.c`), optionally signalling an eventfd per completion. */
export class IoUring implements Disposable {
  readonly #handle: bigint;
  /** SQ entries. */
  readonly entries: number;
  #closed = false;

  private constructor(handle: bigint, entries: number) {
    this.#handle = handle;
    this.entries = entries;
  }

  /**
   * Sets up a ring with `entries` SQEs; completions signal `eventFd` when
   * given (with `asyncOnly`, only completions that did not finish inside
   * the submitting call).
   */
  static create(entries: number, eventFd = -1, asyncOnly = false): IoUring {
    const h = ioShim().vkio_uring_setup(entries, eventFd, asyncOnly ? 1 : 0);
    const v = toBigInt(h);
    if (v < 0n) throw new KvmError("io_uring_setup", Number(-v), `${entries} entries`);
    return new IoUring(v, entries);
  }

  /** Completions waiting now (a memory read in C, no syscall). */
  ready(): number {
    return ioShim().vkio_uring_ready(this.#handle);
  }

  /** Free SQ slots. */
  space(): number {
    return ioShim().vkio_uring_space(this.#handle);
  }

  /** Submits the first `n` records of `reqs` in one syscall; returns how many were taken. */
  submit(reqs: Uint8Array<ArrayBuffer>, n: number): number {
    return check(
      "io_uring_enter(submit)",
      ioShim().vkio_uring_submit(this.#handle, reqs, reqs.length, n),
    );
  }

  /** Moves up to `max` completions into `out`; with `wait`, blocks for at least one. */
  reap(out: Uint8Array<ArrayBuffer>, max: number, wait = false): number {
    return check(
      "io_uring_enter(reap)",
      ioShim().vkio_uring_reap(this.#handle, out, out.length, max, wait ? 1 : 0),
    );
  }

  /** Unmaps the ring and closes its fd. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    check("io_uring close", ioShim().vkio_uring_close(this.#handle));
  }

  /** Same as {@link IoUring.close}. */
  [Symbol.dispose](): void {
    this.close();
  }
}

/** `open(2)` flags vmkit uses. */
export const O_RDONLY = 0;
/** `O_RDWR`. */
export const O_RDWR = 2;
/** `FALLOC_FL_KEEP_SIZE`. */
export const FALLOC_KEEP_SIZE = 1;
/** `FALLOC_FL_PUNCH_HOLE`. */
export const FALLOC_PUNCH_HOLE = 2;

/** Opens `path` (`O_CLOEXEC` added); throws naming the path. */
export function openFd(path: string, flags: number): number {
  const c = new TextEncoder().encode(path + "\0");
  return check("open", ioShim().vkio_open(c, flags, 0o644), path);
}

/** Closes an fd from {@link openFd}. */
export function closeFd(fd: number): void {
  check("close", ioShim().vkio_close(fd));
}
