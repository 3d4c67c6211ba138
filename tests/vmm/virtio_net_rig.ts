/**
 * A virtio-net device on its I/O Worker over a TAP in a fresh network
 * namespace, driven from the host by `virtio_driver.ts` (which plays the
 * guest): for the device tests and the net benchmark.
 *
 * @module
 */

import { loadShim } from "../../native/ffi.ts";
import { MmioAllocator } from "../../vmm/devices/mmio_allocator.ts";
import { VirtioDeviceHost } from "../../vmm/devices/virtio/host.ts";
import type { NetBlockPort } from "../../vmm/devices/virtio/net_filter.ts";
import { netDevice, type NetStats } from "../../vmm/devices/virtio/net_format.ts";
import type { NetConfig } from "../../vmm/io_config.ts";
import { HostMemory } from "../../vmm/memory.ts";
import { Netns } from "../netguard/helpers.ts";
import { HostDriver, queueLayout, S } from "./virtio_driver.ts";

/** Feature bits as the driver writes them. */
export const F = {
  CSUM: 1n << 0n,
  GUEST_CSUM: 1n << 1n,
  MAC: 1n << 5n,
  GUEST_TSO4: 1n << 7n,
  HOST_TSO4: 1n << 11n,
  MRG_RXBUF: 1n << 15n,
  STATUS: 1n << 16n,
  INDIRECT: 1n << 28n,
  EVENT_IDX: 1n << 29n,
  VERSION_1: 1n << 32n,
} as const;

/** Where the rig puts the receive and transmit queues, and the first buffer. */
export const RX_RING = 0x10000;
/** Transmit queue rings. */
export const TX_RING = 0x20000;
/** First buffer. */
export const BUFS = 0x100000;

/** A device, its driver, its TAP and the namespace around it. */
export interface NetRig {
  mem: HostMemory;
  host: VirtioDeviceHost;
  drv: HostDriver;
  ns: Netns;
  tap: string;
  stats: NetStats;
  /** Where netguard's blocks reach the device. */
  blocks: NetBlockPort;
  mac: number[];
  close(): Promise<void>;
}

let tapCounter = 0;

/**
 * Starts a net device whose TAP (up, 10.95.0.1/24, static neighbour
 * 10.95.0.2 = the device's MAC, IPv6 off) lives in a new namespace;
 * `persistentTap` creates the TAP first so it outlives the device.
 */
export async function netRig(
  net: Partial<NetConfig> = {},
  memBytes = 32 << 20,
  persistentTap = false,
): Promise<NetRig> {
  await loadShim();
  const ns = await Netns.create("n");
  const tap = `h8n${Deno.pid % 10000}x${tapCounter++}`;
  const mem = HostMemory.create(memBytes);
  let host: VirtioDeviceHost | undefined;
  try {
    await ns.exec(["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"]);
    await ns.exec(["sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1"]);
    // A persistent TAP outlives its device (a restored device opens it again).
    if (persistentTap) await ns.ip(`tuntap add dev ${tap} mode tap vnet_hdr`);
    const dev = netDevice({ id: "eth0", tap, netns: ns.name, mac: "02:00:00:00:95:02", ...net });
    host = await VirtioDeviceHost.start(
      dev.device,
      mem.regions,
      new MmioAllocator().allocate("eth0"),
    );
    await ns.ip(`link set ${tap} up`);
    await ns.ip(`addr add 10.95.0.1/24 dev ${tap}`);
    await ns.ip(`neigh add 10.95.0.2 lladdr ${dev.mac} dev ${tap}`);
    const h = host;
    return {
      mem,
      host: h,
      drv: new HostDriver(mem, h),
      ns,
      tap,
      stats: dev.stats,
      blocks: dev.blocks,
      mac: dev.mac.split(":").map((x) => parseInt(x, 16)),
      async close() {
        await h.close();
        mem.close();
        await ns.delete();
      },
    };
  } catch (err) {
    await host?.close();
    mem.close();
    await ns.delete();
    throw err;
  }
}

/** Negotiates `features`, sets up both queues of `size` and DRIVER_OK; throws if refused. */
export function startDriver(r: NetRig, features: bigint, size = 64): void {
  const st = r.drv.negotiate(features);
  if ((st & S.FEATURES_OK) === 0) throw new Error(`FEATURES_OK refused (status ${st})`);
  r.drv.setupQueue(0, queueLayout(RX_RING, size));
  r.drv.setupQueue(1, queueLayout(TX_RING, size));
  r.drv.driverOk();
}
