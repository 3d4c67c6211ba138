/**
 * virtio-net's formats and the machine side of a network interface: feature
 * bits, the configuration space (virtio 1.2 §5.1.4), the virtio-net header
 * (§5.1.6), MAC addresses, the device's counters (shared with the main
 * thread), where netguard's blocks reach it (`net_filter.ts`) and the
 * {@link VirtioDeviceConfig} a {@link NetConfig} becomes.
 *
 * @module
 */

import type { NetConfig, RateLimiterConfig } from "../../io_config.ts";
import type { VirtioDeviceConfig, VirtioDeviceHost } from "./host.ts";
import { Feature } from "./layout.ts";
import { NetBlockPort } from "./net_filter.ts";

/** virtio device id of a network card. */
export const NET_DEVICE_ID = 1;
/** Size of the receive and the transmit queue. */
export const NET_QUEUE_SIZE = 256;
/** Receive queue index. */
export const RX_QUEUE = 0;
/** Transmit queue index. */
export const TX_QUEUE = 1;
/** Bytes of `struct virtio_net_hdr` in virtio 1.x (with `num_buffers`, always). */
export const NET_HDR_BYTES = 12;
/** Largest frame without offloads: 1500-byte MTU + Ethernet header + one VLAN tag. */
export const MAX_PLAIN_FRAME = 1518;
/** Largest frame with segmentation offloads (a 64 KiB GSO frame and its headers). */
export const MAX_GSO_FRAME = 65550;

/** virtio-net feature bits (virtio 1.2 §5.1.3). */
export const NetFeature = {
  CSUM: 0,
  GUEST_CSUM: 1,
  MTU: 3,
  MAC: 5,
  GUEST_TSO4: 7,
  GUEST_TSO6: 8,
  GUEST_ECN: 9,
  HOST_TSO4: 11,
  HOST_TSO6: 12,
  HOST_ECN: 13,
  MRG_RXBUF: 15,
  STATUS: 16,
} as const;

/** virtio-net header fields (byte offsets). */
export const NetHdr = {
  FLAGS: 0,
  GSO_TYPE: 1,
  HDR_LEN: 2,
  GSO_SIZE: 4,
  CSUM_START: 6,
  CSUM_OFFSET: 8,
  NUM_BUFFERS: 10,
} as const;

/** `flags`: the checksum at csum_start + csum_offset is partial. */
export const HDR_F_NEEDS_CSUM = 1;
/** `gso_type` values. */
export const Gso = { NONE: 0, TCPV4: 1, UDP: 3, TCPV6: 4, UDP_L4: 5, ECN: 0x80 } as const;

/** Configuration space layout: mac[6], status, max_virtqueue_pairs, mtu (virtio 1.2 §5.1.4). */
export const NetConfigSpace = { MAC: 0, STATUS: 6, MAX_VQ_PAIRS: 8, MTU: 10, BYTES: 12 } as const;
/** The MTUs `VIRTIO_NET_F_MTU` allows (virtio 1.2 §5.1.4.1). */
export const MIN_MTU = 68;
/** Largest MTU. */
export const MAX_MTU = 65535;
/** `status`: the link is up. */
export const NET_S_LINK_UP = 1;

/** Counters of one network device, in a `Float64Array` over shared memory. */
export const NetStat = {
  /** Frames put on the receive ring. */
  RX_FRAMES: 0,
  /** Bytes of those frames (virtio-net headers not counted). */
  RX_BYTES: 1,
  /** Frames written to the TAP. */
  TX_FRAMES: 2,
  /** Bytes of those frames. */
  TX_BYTES: 3,
  /** Received frames dropped: larger than the guest's buffers. */
  RX_TOO_BIG: 4,
  /** Transmitted frames the TAP refused (e.g. a bad offload header). */
  TX_ERRORS: 5,
  /** Transmit chains dropped before the TAP: too short, too long, offloads not negotiated. */
  TX_BAD: 6,
  /** Times the receive rate limiter held frames back. */
  RX_THROTTLED: 7,
  /** Times the transmit rate limiter held frames back. */
  TX_THROTTLED: 8,
  /** Times frames waited in the TAP because the guest had no receive buffers. */
  RX_NO_BUFFERS: 9,
  /** Received frames dropped by a netguard `drop` decision (`net_filter.ts`). */
  RX_BLOCKED: 10,
  /** Received frames dropped over the rate of a netguard `rate_limit` decision. */
  RX_LIMITED: 11,
  /** Transmitted frames dropped by a netguard `drop` decision. */
  TX_BLOCKED: 12,
  /** Transmitted frames dropped over the rate of a netguard `rate_limit` decision. */
  TX_LIMITED: 13,
} as const;
/** Number of counters. */
export const NET_STAT_COUNT = 14;

/** Raised for a bad network-interface configuration. */
export class NetConfigError extends Error {
  /** Creates the error for interface `id`. */
  constructor(id: string, detail: string) {
    super(`network interface '${id}': ${detail}`);
    this.name = "NetConfigError";
  }
}

/** A device's counters, readable from any thread. */
export class NetStats {
  readonly #v: Float64Array;

  /** Counters over `buffer` (from {@link netDevice}). */
  constructor(readonly buffer: SharedArrayBuffer) {
    this.#v = new Float64Array(buffer);
  }

  /** A fresh zeroed counter block. */
  static create(): NetStats {
    return new NetStats(new SharedArrayBuffer(NET_STAT_COUNT * 8));
  }

  /** Adds `n` to counter `i` ({@link NetStat}); only the device's thread writes. */
  add(i: number, n = 1): void {
    this.#v[i] = (this.#v[i] ?? 0) + n;
  }

  /** Counter `i`. */
  get(i: number): number {
    return this.#v[i] ?? 0;
  }

  /** All counters by name, e.g. `{ rxFrames, txBytes, ... }`. */
  snapshot(): Record<string, number> {
    const out: Record<string, number> = {};
    for (const [k, i] of Object.entries(NetStat)) {
      const name = k.toLowerCase().replace(/_([a-z])/g, (_, c: string) => c.toUpperCase());
      out[name] = this.get(i);
    }
    return out;
  }
}

/** Parses `aa:bb:cc:dd:ee:ff` (a unicast MAC). */
export function parseMac(id: string, s: string): number[] {
  const m = /^([0-9a-f]{2}):([0-9a-f]{2}):([0-9a-f]{2}):([0-9a-f]{2}):([0-9a-f]{2}):([0-9a-f]{2})$/i
    .exec(s);
  if (m === null) throw new NetConfigError(id, `MAC '${s}' is not aa:bb:cc:dd:ee:ff`);
  const mac = m.slice(1).map((h) => parseInt(h, 16));
  if (((mac[0] ?? 0) & 1) !== 0) throw new NetConfigError(id, `MAC '${s}' is a multicast address`);
  return mac;
}

/** Formats a MAC as `aa:bb:cc:dd:ee:ff`. */
export function formatMac(mac: readonly number[]): string {
  return mac.map((b) => b.toString(16).padStart(2, "0")).join(":");
}

/**
 * A stable, locally administered unicast MAC for interface `ifaceId` of VM
 * `vmId` (02:xx:xx:xx:xx:xx from an FNV-1a hash), so a VM keeps its MAC
 * across runs without one being given.
 */
export function defaultMac(vmId: string, ifaceId: string): number[] {
  let h = 0x811c9dc5;
  for (const c of new TextEncoder().encode(`${vmId}/${ifaceId}`)) {
    h = Math.imul(h ^ c, 0x01000193) >>> 0;
  }
  let h2 = Math.imul(h ^ 0x5bd1e995, 0x01000193) >>> 0;
  h2 ^= h2 >>> 13;
  return [0x02, h >>> 24, (h >>> 16) & 0xff, (h >>> 8) & 0xff, h & 0xff, h2 & 0xff];
}

/** What the back end on the I/O Worker gets (structured-clone-able). */
export interface NetBackendConfig {
  /** Interface id. */
  readonly id: string;
  /** Host TAP name. */
  readonly tap: string;
  /** The TAP's network namespace (name or path), or "" for the VMM's own. */
  readonly netns: string;
  /** The guest's MAC. */
  readonly mac: readonly number[];
  /** Offer checksum and segmentation offloads. */
  readonly offloads: boolean;
  /** MTU offered with `VIRTIO_NET_F_MTU` (absent: the feature is not offered). */
  readonly mtu?: number;
  /** Guest receive rate limiter. */
  readonly rxRateLimiter?: RateLimiterConfig;
  /** Guest transmit rate limiter. */
  readonly txRateLimiter?: RateLimiterConfig;
  /** The counters ({@link NetStats}). */
  readonly stats: SharedArrayBuffer;
  /** netguard's blocks and the dropped-frame ring (`net_filter.ts`). */
  readonly filter: SharedArrayBuffer;
}

/** The back-end call (`VirtioDeviceHost.call`) that replaces a running interface's rate limiters. */
export const SET_RATE_LIMITERS = "setRateLimiters";

/**
 * New rate limiters for a running interface, per direction: a direction
 * left out keeps its limiter; within one, buckets follow
 * `RateLimiter.update` (left out: kept; 0-sized: removed; else replaced,
 * the budget carried over), as Firecracker's `PATCH /network-interfaces`.
 */
export interface NetRateLimiterUpdate {
  /** Guest receive limiter update. */
  readonly rx?: RateLimiterConfig;
  /** Guest transmit limiter update. */
  readonly tx?: RateLimiterConfig;
}

/**
 * Sends `update` to the back end of interface `id` (its device `host`) and
 * waits until it applies.
 *
 * @throws {NetConfigError} when the interface has no running device.
 */
export async function setNetRateLimiters(
  host: VirtioDeviceHost | undefined,
  id: string,
  update: NetRateLimiterUpdate,
): Promise<void> {
  if (host === undefined) throw new NetConfigError(id, "the interface has no running device");
  await host.call(SET_RATE_LIMITERS, update);
}

/** Options of {@link netDevice}. */
export interface NetDeviceOptions {
  /** The VM's id, for the default MAC (default "vm"). */
  vmId?: string;
  /** Offer CSUM/GUEST_CSUM and TSO4/TSO6/ECN both ways (default true). */
  offloads?: boolean;
}

/** A network interface as a virtio device of the machine, with its counters. */
export interface NetDevice {
  /** The virtio device to start. */
  readonly device: VirtioDeviceConfig;
  /** Its counters. */
  readonly stats: NetStats;
  /** Where netguard's blocks of this interface are published. */
  readonly blocks: NetBlockPort;
  /** The guest's MAC. */
  readonly mac: string;
}

/** The features a network device offers (`MTU` when `mtu` is given). */
export function netFeatures(offloads: boolean, mtu?: number): number[] {
  const f: number[] = [
    Feature.EVENT_IDX,
    Feature.INDIRECT_DESC,
    NetFeature.MAC,
    NetFeature.STATUS,
    NetFeature.MRG_RXBUF,
  ];
  if (mtu !== undefined) f.push(NetFeature.MTU);
  if (offloads) {
    f.push(
      NetFeature.CSUM,
      NetFeature.GUEST_CSUM,
      NetFeature.HOST_TSO4,
      NetFeature.HOST_TSO6,
      NetFeature.HOST_ECN,
      NetFeature.GUEST_TSO4,
      NetFeature.GUEST_TSO6,
      NetFeature.GUEST_ECN,
    );
  }
  return f;
}

/**
 * The virtio device for `net` (its back end is `net.ts`).
 *
 * @throws {NetConfigError} for a bad id, TAP name or MAC.
 */
export function netDevice(net: NetConfig, options: NetDeviceOptions = {}): NetDevice {
  if (!/^[A-Za-z0-9_.-]{1,32}$/.test(net.id)) {
    throw new NetConfigError(net.id, "the id must be 1..32 of A-Z a-z 0-9 _ . -");
  }
  if (!/^[^\s/:]{1,15}$/.test(net.tap)) {
    throw new NetConfigError(
      net.id,
      `TAP name '${net.tap}' must be 1..15 bytes, no '/', ':' or spaces`,
    );
  }
  const mac = net.mac === undefined
    ? defaultMac(options.vmId ?? "vm", net.id)
    : parseMac(net.id, net.mac);
  const offloads = options.offloads ?? true;
  if (
    net.mtu !== undefined && (!Number.isInteger(net.mtu) || net.mtu < MIN_MTU || net.mtu > MAX_MTU)
  ) {
    throw new NetConfigError(net.id, `MTU ${net.mtu} is not an integer in ${MIN_MTU}..${MAX_MTU}`);
  }
  const stats = NetStats.create();
  const blocks = NetBlockPort.create();
  const backendConfig: NetBackendConfig = {
    id: net.id,
    tap: net.tap,
    netns: net.netns ?? "",
    mac,
    offloads,
    ...(net.mtu === undefined ? {} : { mtu: net.mtu }),
    ...(net.rxRateLimiter === undefined ? {} : { rxRateLimiter: net.rxRateLimiter }),
    ...(net.txRateLimiter === undefined ? {} : { txRateLimiter: net.txRateLimiter }),
    stats: stats.buffer,
    filter: blocks.buffer,
  };
  return {
    device: {
      name: net.id,
      deviceId: NET_DEVICE_ID,
      features: netFeatures(offloads, net.mtu),
      queueSizes: [NET_QUEUE_SIZE, NET_QUEUE_SIZE],
      configBytes: NetConfigSpace.BYTES,
      backendModule: new URL("./net.ts", import.meta.url).href,
      backendConfig,
    },
    stats,
    blocks,
    mac: formatMac(mac),
  };
}

/** Writes the configuration space: the MAC, link up, one queue pair, the MTU if offered. */
export function writeNetConfig(cfg: Uint8Array, mac: readonly number[], mtu?: number): void {
  cfg.set(mac, NetConfigSpace.MAC);
  const v = new DataView(cfg.buffer, cfg.byteOffset, cfg.byteLength);
  v.setUint16(NetConfigSpace.STATUS, NET_S_LINK_UP, true);
  v.setUint16(NetConfigSpace.MAX_VQ_PAIRS, 1, true);
  if (mtu !== undefined) v.setUint16(NetConfigSpace.MTU, mtu, true);
}
