/**
 * Starting a machine's I/O devices (what `MachineIo.start` loads on first
 * use): checks the drives, resolves an iSCSI drive's initiator name, builds
 * each virtio device's configuration (blk, net, extra devices), starts its
 * host on an I/O Worker in the window and GSI the allocator gives it, and
 * makes the drives' handles and the devices' metric families.
 *
 * @module
 */

import { CowError } from "../cow/errors.ts";
import { DiskHandle } from "./disk_handle.ts";
import { MmioAllocator } from "./devices/mmio_allocator.ts";
import { blkDeviceConfig } from "./devices/virtio/blk_format.ts";
import { type VirtioDeviceConfig, VirtioDeviceHost } from "./devices/virtio/host.ts";
import { type NetDevice, netDevice, setNetRateLimiters } from "./devices/virtio/net_format.ts";
import type { MemoryRegion } from "./guest_memory.ts";
import type { DriveConfig } from "./io_config.ts";
import {
  type MachineIoConfig,
  MachineIoError,
  type NetInterface,
  resolveInitiatorName,
} from "./machine_io.ts";
import { blkFamilies, netFamilies } from "./metrics/device_metrics.ts";
import type { MetricFamily } from "./metrics/prometheus.ts";

/** The started devices, for `MachineIo`. */
export interface StartedIo {
  /** One host per device, in slot order. */
  readonly hosts: VirtioDeviceHost[];
  /** The drives, a root drive first. */
  readonly drives: readonly DriveConfig[];
  /** The network interfaces by id. */
  readonly nets: ReadonlyMap<string, NetInterface>;
  /** The drives' handles by id. */
  readonly disks: ReadonlyMap<string, DiskHandle>;
  /** The devices' metric families. */
  readonly families: () => MetricFamily[];
}

/** Starts the I/O devices of `config` over guest RAM `regions` (a failure closes what started). */
export async function startIoDevices(
  config: MachineIoConfig,
  regions: readonly MemoryRegion[],
): Promise<StartedIo> {
  const drives = [...(config.drives ?? [])].sort((a, b) =>
    Number(b.root ?? false) - Number(a.root ?? false)
  );
  const ids = new Set<string>();
  for (const d of drives) {
    if (!/^[A-Za-z0-9_.-]{1,32}$/.test(d.id)) {
      throw new MachineIoError(`drive id '${d.id}' must be 1..32 of A-Z a-z 0-9 _ . -`);
    }
    if (ids.has(d.id)) throw new MachineIoError(`two drives have the id '${d.id}'`);
    ids.add(d.id);
  }
  if (drives.filter((d) => d.root === true).length > 1) {
    throw new MachineIoError("more than one drive is the root device");
  }
  let initiator: string | undefined;
  // A LUN below a file drive's qcow2 chain (a checkpoint's overlay over it) logs in too.
  // cow/'s chain code loads only for a VM that has an identity and image drives.
  const { remoteBacking } = config.identity === undefined || drives.length === 0
    ? { remoteBacking: undefined }
    : await import("../cow/chain.ts");
  const overLun = (d: DriveConfig): boolean => {
    if (d.backend.kind !== "file" || d.backend.format === "raw" || !remoteBacking) return false;
    try {
      return remoteBacking(d.backend.path) !== null;
    } catch (err) {
      if (err instanceof CowError) return false; // the drive's own open reports it
      throw err;
    }
  };
  if (drives.some((d) => d.backend.kind === "iscsi" || overLun(d))) {
    if (config.identity === undefined) {
      throw new MachineIoError(
        "an iSCSI drive needs the VM's storage identity: give a VM id and a SUI registry",
      );
    }
    initiator = await resolveInitiatorName(config.identity);
  }
  const vmId = config.identity?.vmId ?? "vm";
  const netDevices: NetDevice[] = (config.nets ?? []).map((n) => netDevice(n, { vmId }));
  const nets = new Map<string, NetInterface>();
  (config.nets ?? []).forEach((n, i) => {
    const d = netDevices[i];
    if (d === undefined) return;
    if (nets.has(n.id)) throw new MachineIoError(`two network interfaces have the id '${n.id}'`);
    nets.set(n.id, {
      id: n.id,
      tap: n.tap,
      mac: d.mac,
      stats: d.stats,
      blocks: d.blocks,
      setRateLimiters: (u) => setNetRateLimiters(hosts.find((h) => h.name === n.id), n.id, u),
    });
  });
  const devices: VirtioDeviceConfig[] = [
    ...drives.map((d) => blkDeviceConfig(d, initiator, config.uring ?? true)),
    ...netDevices.map((n) => n.device),
    ...(config.virtioDevices ?? []),
  ];
  const alloc = new MmioAllocator();
  const hosts: VirtioDeviceHost[] = [];
  try {
    for (const dev of devices) {
      if (hosts.some((h) => h.name === dev.name)) {
        throw new MachineIoError(`two devices are named '${dev.name}'`);
      }
      hosts.push(await VirtioDeviceHost.start(dev, regions, alloc.allocate(dev.name)));
    }
  } catch (err) {
    await Promise.all(hosts.map((h) => h.close()));
    throw err;
  }
  const disks = new Map<string, DiskHandle>();
  for (const d of drives) {
    const h = hosts.find((x) => x.name === d.id);
    if (h !== undefined) disks.set(d.id, new DiskHandle(h, d));
  }
  return {
    hosts,
    drives,
    nets,
    disks,
    families: () => [...netFamilies([...nets.values()]), ...blkFamilies([...disks.values()])],
  };
}
