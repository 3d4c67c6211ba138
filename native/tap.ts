/**
 * A TAP device for a virtio-net back end: opened with a virtio-net header
 * on every frame (IFF_VNET_HDR, TUNSETVNETHDRSZ), offloads set by
 * TUNSETOFFLOAD, and batched scatter/gather reads and writes straight to
 * and from iovecs (host addresses the caller has validated).
 *
 * @example
 * ```ts
 * import { Iovecs, Tap } from "./tap.ts";
 * using tap = await Tap.open("vmtap0", { netns: "" });
 * tap.setOffload(0);
 * const buf = new Uint8Array(2048);
 * const iov = new Iovecs(1);
 * iov.push(Iovecs.addressOf(buf), buf.length);
 * const out = new Int32Array(2);
 * const frames = tap.readChains(iov, new Int32Array([0, 1]), 1, false, 0, out, 1);
 * console.log(frames, out[0]); // frames read, length of the first
 * ```
 *
 * @module
 */

import { cString, type NetShim, netStrerror, openNetShim } from "./net_ffi.ts";

/** Bytes of `struct virtio_net_hdr_v1` (with `num_buffers`), the header virtio 1.x uses. */
export const VNET_HDR_LEN = 12;
/** TUNSETOFFLOAD: the frames read may carry a partial checksum (VIRTIO_NET_HDR_F_NEEDS_CSUM). */
export const TUN_F_CSUM = 0x01;
/** TUNSETOFFLOAD: TCPv4 segmentation offload. */
export const TUN_F_TSO4 = 0x02;
/** TUNSETOFFLOAD: TCPv6 segmentation offload. */
export const TUN_F_TSO6 = 0x04;
/** TUNSETOFFLOAD: TSO with ECN. */
export const TUN_F_TSO_ECN = 0x08;
/** TUNSETOFFLOAD: UDP fragmentation offload. */
export const TUN_F_UFO = 0x10;

/** Raised when a TAP call fails; carries the errno. */
export class TapError extends Error {
  /** The failed call. */
  readonly call: string;
  /** Positive errno. */
  readonly errno: number;
  /** Creates the error for `call` on TAP `name`. */
  constructor(call: string, name: string, errno: number, text: string, hint = "") {
    super(`tap ${name}: ${call} failed: ${text} (errno ${errno})${hint ? `; ${hint}` : ""}`);
    this.name = "TapError";
    this.call = call;
    this.errno = errno;
  }
}

const TWO32 = 2 ** 32;

/**
 * An array of `struct iovec` (16 bytes: base, length) written without
 * BigInt: host addresses on x86-64 fit in a double exactly (< 2^47).
 */
export class Iovecs {
  /** The iovecs as 32-bit words: base low, base high, length low, length high. */
  readonly words: Uint32Array<ArrayBuffer>;
  /** Iovecs in use. */
  count = 0;

  /** Room for `capacity` iovecs. */
  constructor(readonly capacity: number) {
    this.words = new Uint32Array(capacity * 4);
  }

  /** Appends `[addr, addr+len)`; returns its index. Throws when full. */
  push(addr: number, len: number): number {
    const i = this.count;
    if (i >= this.capacity) throw new RangeError(`iovecs: more than ${this.capacity}`);
    const w = this.words;
    const hi = Math.floor(addr / TWO32);
    w[i * 4] = addr - hi * TWO32;
    w[i * 4 + 1] = hi;
    w[i * 4 + 2] = len;
    w[i * 4 + 3] = 0;
    this.count = i + 1;
    return i;
  }

  /** Length of iovec `i`. */
  lengthOf(i: number): number {
    return this.words[i * 4 + 2] ?? 0;
  }

  /** Forgets every iovec. */
  clear(): void {
    this.count = 0;
  }

  /** The host address of `buf`'s first byte (for iovecs into JS buffers). */
  static addressOf(buf: Uint8Array<ArrayBuffer>): number {
    return Number(Deno.UnsafePointer.value(Deno.UnsafePointer.of(buf)));
  }
}

/** A descriptor the net shim opened: closed once, by {@link OwnedFd.close} or `using`. */
abstract class OwnedFd implements Disposable {
  #fd: number;
  readonly #closeFd: (fd: number) => void;

  protected constructor(fd: number, closeFd: (fd: number) => void) {
    this.#fd = fd;
    this.#closeFd = closeFd;
  }

  /** The descriptor (to wait on with poll), or -1 once closed. */
  get fd(): number {
    return this.#fd;
  }

  /** Closes the descriptor (idempotent). */
  close(): void {
    if (this.#fd < 0) return;
    this.#closeFd(this.#fd);
    this.#fd = -1;
  }

  /** Closes the descriptor; see {@link OwnedFd.close}. */
  [Symbol.dispose](): void {
    this.close();
  }
}

/** Options of {@link Tap.open}. */
export interface TapOptions {
  /** Network namespace: a name under /var/run/netns or a path; default the current one. */
  netns?: string;
  /** Virtio-net header bytes on every frame (default {@link VNET_HDR_LEN}). */
  vnetHdr?: number;
}

function netnsPath(ns: string | undefined): string {
  if (ns === undefined || ns === "") return "";
  return ns.includes("/") ? ns : `/var/run/netns/${ns}`;
}

/** An open TAP device with a virtio-net header on every frame. */
export class Tap extends OwnedFd {
  readonly #shim: NetShim;
  /** Where a frame longer than its buffers spills (so it is seen to be cut short). */
  readonly #scratch = new Uint8Array(65536 + 64);

  private constructor(shim: NetShim, readonly name: string, fd: number, readonly vnetHdr: number) {
    super(fd, (f) => shim.vmkit_net_close(f));
    this.#shim = shim;
  }

  /**
   * Opens (creating if needed) TAP `name` non-blocking with a virtio-net header.
   *
   * @throws {TapError} without CAP_NET_ADMIN, /dev/net/tun or IFF_VNET_HDR support.
   */
  static async open(name: string, options: TapOptions = {}): Promise<Tap> {
    const shim = await openNetShim();
    const hdr = options.vnetHdr ?? VNET_HDR_LEN;
    const fd = shim.vmkit_net_tap_open_vnet(cString(name), cString(netnsPath(options.netns)), hdr);
    if (fd < 0) {
      throw new TapError(
        "open",
        name,
        -fd,
        netStrerror(shim, -fd),
        "TAP devices need root (CAP_NET_ADMIN) and /dev/net/tun; check the name and namespace",
      );
    }
    return new Tap(shim, name, fd, hdr);
  }

  /** Sets which offloads frames read may carry (`TUN_F_*`; 0 for none). */
  setOffload(flags: number): void {
    const r = this.#shim.vmkit_net_tap_set_offload(this.fd, flags >>> 0);
    if (r < 0) throw new TapError("TUNSETOFFLOAD", this.name, -r, netStrerror(this.#shim, -r));
  }

  /**
   * Reads frames into groups of `iov` (group c = iovecs `first[c]..first[c+1]`);
   * see `vmkit_net_tap_read_chains` in net.c. `out` gets (length, groups) per
   * frame, groups 0 for a frame that did not fit (dropped). With `merge` a
   * frame may fill several groups and is read only while `need` bytes of
   * groups are left. With `maxPlain` > 0, a frame without segmentation whose
   * Ethernet payload exceeds it (the guest's MTU) is dropped too. Returns the
   * number of frames (0 when the TAP is empty).
   */
  readChains(
    iov: Iovecs,
    first: Int32Array<ArrayBuffer>,
    nchains: number,
    merge: boolean,
    need: number,
    out: Int32Array<ArrayBuffer>,
    maxFrames: number,
    maxPlain = 0,
  ): number {
    const n = this.#shim.vmkit_net_tap_read_chains(
      this.fd,
      iov.words,
      first,
      nchains,
      merge ? 1 : 0,
      need,
      this.#scratch,
      this.#scratch.length,
      out,
      Math.min(maxFrames, out.length >> 1),
      maxPlain,
    );
    if (n < 0) throw new TapError("readv", this.name, -n, netStrerror(this.#shim, -n));
    return n;
  }

  /**
   * Writes frames, frame i being the next `counts[i]` iovecs; `res[i]` gets
   * bytes written or -errno. Returns the frames attempted (fewer when the TAP
   * would block).
   */
  writeFrames(
    iov: Iovecs,
    counts: Int32Array<ArrayBuffer>,
    nframes: number,
    res: Int32Array<ArrayBuffer>,
  ): number {
    const n = this.#shim.vmkit_net_tap_write_frames(
      this.fd,
      iov.words,
      counts,
      Math.min(nframes, counts.length, res.length),
      res,
    );
    if (n < 0) throw new TapError("writev", this.name, -n, netStrerror(this.#shim, -n));
    return n;
  }

  /** The C library's text for positive `errno`. */
  strerror(errno: number): string {
    return netStrerror(this.#shim, errno);
  }
}

/** A one-shot monotonic timer as an fd (timerfd), to wait on beside a TAP (rate-limiter retries). */
export class Timer extends OwnedFd {
  readonly #shim: NetShim;

  private constructor(shim: NetShim, fd: number) {
    super(fd, (f) => shim.vmkit_net_close(f));
    this.#shim = shim;
  }

  /** Creates a disarmed timer. */
  static async create(): Promise<Timer> {
    const shim = await openNetShim();
    const fd = shim.vmkit_net_timer_create();
    if (fd < 0) throw new TapError("timerfd_create", "-", -fd, netStrerror(shim, -fd));
    return new Timer(shim, fd);
  }

  /** Fires once after `ms` milliseconds (fractions allowed); 0 disarms. */
  arm(ms: number): void {
    const r = this.#shim.vmkit_net_timer_arm(this.fd, Math.max(0, ms) * 1000);
    if (r < 0) throw new TapError("timerfd_settime", "-", -r, netStrerror(this.#shim, -r));
  }

  /** Clears a fired timer; returns whether it had fired. */
  drain(): boolean {
    const r = this.#shim.vmkit_net_timer_drain(this.fd);
    if (r < 0) throw new TapError("timerfd read", "-", -r, netStrerror(this.#shim, -r));
    return r > 0;
  }
}
