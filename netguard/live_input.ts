/**
 * Live inputs through the network shim: a TAP device (netguard plays the
 * VM's end, so every frame read is inbound to the VM) and an AF_PACKET
 * socket on a host interface (both directions). Either may be opened inside
 * a named network namespace. Reads are batched and wait in `poll` on Deno's
 * FFI thread pool, so nothing spins.
 *
 * @module
 */

import {
  cString,
  NET_META_WORDS,
  type NetShim,
  netStrerror,
  openNetShim,
} from "../native/net_ffi.ts";
import { NativeNetError } from "./errors.ts";
import type { NetGuard } from "./guard.ts";
import { LINKTYPE_ETHERNET } from "./pcap_decoder.ts";

/** Linux errno: the network is down (a socket bound to an interface that is down). */
const ENETDOWN = 100;

/** Options of a live reader. */
export interface LiveOptions {
  /** Network namespace: a name under /var/run/netns or a path; default the current one. */
  netns?: string;
  /** Bytes kept per frame (default 2048; longer frames are counted at full length). */
  snaplen?: number;
  /** Most frames per read call (default 256). */
  batch?: number;
  /** Longest wait in one read call, ms (default 50): also the idle tick of {@link LiveReader.run}. */
  pollMs?: number;
  /** Put an interface in promiscuous mode (AF_PACKET only; default false). */
  promisc?: boolean;
}

/** Called per frame: `buf[off, off+len)`, its wire length, receive time and Linux packet type. */
export type FrameHandler = (
  buf: Uint8Array,
  off: number,
  len: number,
  wireLen: number,
  tsMs: number,
  pktType: number,
) => void;

function netnsPath(ns: string | undefined): string {
  if (ns === undefined || ns === "") return "";
  return ns.includes("/") ? ns : `/var/run/netns/${ns}`;
}

/** A TAP device or AF_PACKET socket read in batches. */
export class LiveReader {
  /** "tap" or "packet". */
  readonly kind: "tap" | "packet";
  /** Interface name. */
  readonly name: string;
  readonly #shim: NetShim;
  #fd: number;
  readonly #snaplen: number;
  readonly #batch: number;
  readonly #pollMs: number;
  readonly #buf: Uint8Array<ArrayBuffer>;
  readonly #meta: Int32Array<ArrayBuffer>;
  readonly #ts: Float64Array<ArrayBuffer>;
  #closing = false;
  #loop: Promise<void> | null = null;

  private constructor(
    shim: NetShim,
    kind: "tap" | "packet",
    name: string,
    fd: number,
    o: LiveOptions,
  ) {
    this.#shim = shim;
    this.kind = kind;
    this.name = name;
    this.#fd = fd;
    this.#snaplen = Math.max(64, Math.min(65536, o.snaplen ?? 2048));
    this.#batch = Math.max(1, Math.min(4096, o.batch ?? 256));
    this.#pollMs = Math.max(1, Math.min(1000, o.pollMs ?? 50));
    this.#buf = new Uint8Array(this.#batch * ((this.#snaplen + 7) & ~7));
    this.#meta = new Int32Array(this.#batch * NET_META_WORDS);
    this.#ts = new Float64Array(this.#batch);
  }

  /**
   * Opens (creating if needed) TAP device `name`.
   *
   * @throws {NativeNetError} when the device cannot be opened (needs CAP_NET_ADMIN).
   */
  static async openTap(name: string, options: LiveOptions = {}): Promise<LiveReader> {
    const shim = await openNetShim();
    const fd = shim.vmkit_net_tap_open(cString(name), cString(netnsPath(options.netns)));
    if (fd < 0) {
      throw new NativeNetError(
        "tap_open",
        name,
        -fd,
        netStrerror(shim, -fd),
        "TAP devices need root (CAP_NET_ADMIN) and /dev/net/tun",
      );
    }
    return new LiveReader(shim, "tap", name, fd, options);
  }

  /**
   * Opens an AF_PACKET socket on interface `name`, seeing both directions.
   *
   * @throws {NativeNetError} when the interface does not exist or the caller lacks CAP_NET_RAW.
   */
  static async openInterface(name: string, options: LiveOptions = {}): Promise<LiveReader> {
    const shim = await openNetShim();
    const fd = shim.vmkit_net_packet_open(
      cString(name),
      cString(netnsPath(options.netns)),
      options.promisc ? 1 : 0,
    );
    if (fd < 0) {
      throw new NativeNetError(
        "packet_open",
        name,
        -fd,
        netStrerror(shim, -fd),
        "check the interface name (ip link) and run as root",
      );
    }
    return new LiveReader(shim, "packet", name, fd, options);
  }

  /** Writes one frame (TAP: as if the VM sent it). */
  write(frame: Uint8Array<ArrayBuffer>): number {
    const n = this.#shim.vmkit_net_write(this.#fd, frame, frame.length);
    if (n < 0) throw new NativeNetError("write", this.name, -n, netStrerror(this.#shim, -n));
    return n;
  }

  /**
   * Reads until {@link LiveReader.close}, calling `onFrame` per frame and
   * `onIdle(nowMs)` after every read call (at least every `pollMs`).
   */
  run(onFrame: FrameHandler, onIdle: (nowMs: number) => void = () => {}): Promise<void> {
    if (this.#loop !== null) {
      throw new NativeNetError("run", this.name, 16, "reader already running");
    }
    this.#loop = this.#run(onFrame, onIdle);
    return this.#loop;
  }

  async #run(onFrame: FrameHandler, onIdle: (nowMs: number) => void): Promise<void> {
    const shim = this.#shim;
    const meta = this.#meta;
    const ts = this.#ts;
    while (!this.#closing) {
      const n = await shim.vmkit_net_read_batch(
        this.#fd,
        this.kind === "packet" ? 1 : 0,
        this.#buf,
        this.#buf.length,
        this.#snaplen,
        meta,
        ts,
        this.#batch,
        this.#pollMs,
      );
      if (n < 0) {
        if (this.#closing) break;
        // The interface is (or was) down: a TAP brought up after the watch began, or taken
        // down and up again. Its frames come again once it is up, so keep watching.
        if (-n === ENETDOWN) {
          onIdle(Date.now());
          continue;
        }
        throw new NativeNetError("read_batch", this.name, -n, netStrerror(shim, -n));
      }
      for (let i = 0; i < n; i++) {
        const m = i * NET_META_WORDS;
        onFrame(
          this.#buf,
          meta[m + 3] ?? 0,
          meta[m] ?? 0,
          meta[m + 1] ?? 0,
          ts[i] ?? 0,
          meta[m + 2] ?? -1,
        );
      }
      onIdle(Date.now());
    }
  }

  /** Stops reading (waits for the read in flight) and closes the descriptor. */
  async close(): Promise<void> {
    if (this.#fd < 0) return;
    this.#closing = true;
    if (this.#loop !== null) {
      try {
        await this.#loop;
      } finally {
        this.#loop = null;
      }
    }
    this.#shim.vmkit_net_close(this.#fd);
    this.#fd = -1;
  }

  /** Closes the reader; see {@link LiveReader.close}. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}

/**
 * Feeds a TAP reader into `guard` as VM `vmId`'s inbound traffic until the
 * reader is closed; idle ticks let attacks clear and VMs resume.
 */
export function watchTap(guard: NetGuard, reader: LiveReader, vmId: string): Promise<void> {
  return reader.run(
    (buf, off, len, wire, ts) =>
      void guard.ingest(vmId, "inbound", reader.name, buf, off, len, wire, ts, LINKTYPE_ETHERNET),
    (now) => guard.advance(now),
  );
}

/**
 * Feeds an interface reader into `guard`: VMs are found by address, and
 * traffic no VM address matches goes to the config's default VM.
 */
export function watchInterface(guard: NetGuard, reader: LiveReader): Promise<void> {
  return reader.run(
    (buf, off, len, wire, ts, pktType) =>
      guard.ingestHost(buf, off, len, wire, ts, LINKTYPE_ETHERNET, pktType, reader.name),
    (now) => guard.advance(now),
  );
}
