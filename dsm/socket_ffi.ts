/**
 * The two libc calls a worker needs to write its requests on its own TCP
 * socket without its event loop (the worker is blocked in the program's
 * load or store): `send(2)` on the socket's descriptor, and finding that
 * descriptor by the connection's ports (`getsockname`/`getpeername`), since
 * Deno does not expose a connection's fd. A Deno write that is never awaited
 * is not enough: it is polled eagerly only until the worker's runtime budget
 * runs out (about 128 writes), then waits for an event loop turn that a
 * blocked worker never takes.
 *
 * @module
 */

const SYMBOLS = {
  send: { parameters: ["i32", "buffer", "usize", "i32"], result: "isize" },
  getsockname: { parameters: ["i32", "buffer", "buffer"], result: "i32" },
  getpeername: { parameters: ["i32", "buffer", "buffer"], result: "i32" },
  poll: { parameters: ["buffer", "u64", "i32"], result: "i32" },
  __errno_location: { parameters: [], result: "pointer" },
} as const;

const MSG_NOSIGNAL = 0x4000;
const EAGAIN = 11;
const EINTR = 4;
const AF_INET = 2;
const AF_INET6 = 10;
const POLLOUT = 4;

type Libc = Deno.DynamicLibrary<typeof SYMBOLS>["symbols"];
let libc: Libc | null | undefined;

/** libc, or null where FFI is not allowed (the worker then rings its node instead). */
function lib(): Libc | null {
  if (libc !== undefined) return libc;
  try {
    libc = Deno.dlopen("libc.so.6", SYMBOLS).symbols;
  } catch (err) {
    if (!(err instanceof Deno.errors.NotCapable) && !(err instanceof Deno.errors.NotFound)) {
      throw err;
    }
    libc = null;
  }
  return libc;
}

function errno(l: Libc): number {
  const p = l.__errno_location();
  return p === null ? 0 : new Deno.UnsafePointerView(p).getInt32();
}

/** One struct pollfd {int fd; short events, revents}. */
const pollFd = new Int32Array(2);
const pollBytes = new Uint8Array(pollFd.buffer);

const addr = new Uint8Array(128);
const addrLen = new Uint32Array(1);

function port(l: Libc, fd: number, peer: boolean): number {
  addrLen[0] = addr.length;
  const r = peer ? l.getpeername(fd, addr, addrLen) : l.getsockname(fd, addr, addrLen);
  if (r !== 0) return -1;
  const family = (addr[0] ?? 0) | ((addr[1] ?? 0) << 8);
  if (family !== AF_INET && family !== AF_INET6) return -1;
  return ((addr[2] ?? 0) << 8) | (addr[3] ?? 0);
}

/** The fd of this process's TCP socket with these ports, or -1 (none, or no FFI). */
export function findSocket(localPort: number, remotePort: number): number {
  const l = lib();
  if (l === null) return -1;
  let names: string[];
  try {
    names = [...Deno.readDirSync("/proc/self/fd")].map((e) => e.name);
  } catch (err) {
    if (err instanceof Deno.errors.NotCapable || err instanceof Deno.errors.NotFound) return -1;
    throw err;
  }
  for (const name of names) {
    const fd = Number(name);
    if (!Number.isInteger(fd)) continue;
    if (port(l, fd, false) === localPort && port(l, fd, true) === remotePort) return fd;
  }
  return -1;
}

/**
 * Writes all of `bytes` to socket `fd` (non-blocking, as Deno leaves it: while
 * the send buffer is full it waits in poll(2) for room, rather than spinning).
 * Returns false when the connection is broken.
 */
export function sendAll(fd: number, bytes: Uint8Array): boolean {
  const l = lib();
  if (l === null) return false;
  let off = 0;
  while (off < bytes.length) {
    const n = Number(l.send(fd, bytes.subarray(off), BigInt(bytes.length - off), MSG_NOSIGNAL));
    if (n > 0) {
      off += n;
      continue;
    }
    const e = errno(l);
    if (e !== EAGAIN && e !== EINTR) return false;
    if (e === EAGAIN) {
      pollFd[0] = fd;
      pollFd[1] = POLLOUT;
      l.poll(pollBytes, 1n, 1000);
    }
  }
  return true;
}
