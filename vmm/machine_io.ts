/**
 * The machine's I/O devices: one virtio-mmio device per drive (and per
 * extra virtio device a caller or a network interface adds), each with its
 * MMIO window and GSI from the allocator, its back end on its own I/O
 * Worker, its ioeventfds and irqfd registered with the VM, and the kernel
 * command-line entries that announce it.
 *
 * An iSCSI drive logs in under the VM's own storage identity: the SUI
 * (an IQN) the registry holds for the VM id, allocated on first use.
 *
 * @module
 */

import type { DiskHandle } from "./disk_handle.ts";
import { type MmioSlot, virtioMmioCmdline } from "./devices/mmio_allocator.ts";
import type { DeviceSpec } from "./devices/spec.ts";
import type { VirtioDeviceConfig, VirtioDeviceHost } from "./devices/virtio/host.ts";
import type { MemoryRegion } from "./guest_memory.ts";
import type { DriveConfig, NetConfig, StorageIdentityConfig } from "./io_config.ts";
import type { NetBlockPort } from "./devices/virtio/net_filter.ts";
import type { NetRateLimiterUpdate, NetStats } from "./devices/virtio/net_format.ts";
import type { MetricFamily } from "./metrics/prometheus.ts";

/** The I/O part of a machine's configuration. */
export interface MachineIoConfig {
  /** virtio-blk drives, in the order the guest sees them (`/dev/vda`, `vdb`, ...; a root drive first). */
  readonly drives?: readonly DriveConfig[];
  /** The VM's storage identity (needed by iSCSI drives). */
  readonly identity?: StorageIdentityConfig;
  /** virtio-net interfaces, after the drives. */
  readonly nets?: readonly NetConfig[];
  /** Further virtio devices (e.g. a device from outside the tree). */
  readonly virtioDevices?: readonly VirtioDeviceConfig[];
  /** Use io_uring for raw files (default true). */
  readonly uring?: boolean;
}

/** A network interface of the machine. */
export interface NetInterface {
  /** Interface id. */
  readonly id: string;
  /** Host TAP name. */
  readonly tap: string;
  /** The guest's MAC (`aa:bb:cc:dd:ee:ff`). */
  readonly mac: string;
  /** The device's frame and byte counters. */
  readonly stats: NetStats;
  /** Where netguard's drop and rate-limit decisions reach the device (`VmNetWatch` publishes them). */
  readonly blocks: NetBlockPort;
  /** Replaces the running interface's rate limiters (`PATCH /network-interfaces`). */
  setRateLimiters(update: NetRateLimiterUpdate): Promise<void>;
}

/** Raised for bad drive configuration. */
export class MachineIoError extends Error {
  /** Creates the error. */
  constructor(detail: string) {
    super(`machine: ${detail}`);
    this.name = "MachineIoError";
  }
}

/** The VM's SUI (IQN) from the registry, allocated on first use. */
export async function resolveInitiatorName(identity: StorageIdentityConfig): Promise<string> {
  // Loaded on use: a machine without iSCSI drives never loads san/ (a start costs less).
  const { openRegistry } = await import("../san/registry_open.ts");
  const reg = await openRegistry(identity.registry);
  try {
    return (await reg.alloc(identity.vmId, "iqn")).sui;
  } finally {
    await reg.close();
  }
}

/** The machine's running I/O devices. */
export class MachineIo {
  /** One host per device, in slot order. */
  readonly hosts: readonly VirtioDeviceHost[];
  readonly #drives: readonly DriveConfig[];
  readonly #disks: ReadonlyMap<string, DiskHandle>;

  /** The network interfaces: TAP, MAC and counters by interface id. */
  readonly nets: ReadonlyMap<string, NetInterface>;

  readonly #families: (() => MetricFamily[]) | undefined;

  private constructor(
    hosts: VirtioDeviceHost[],
    drives: readonly DriveConfig[],
    nets: ReadonlyMap<string, NetInterface> = new Map(),
    disks: ReadonlyMap<string, DiskHandle> = new Map(),
    families?: () => MetricFamily[],
  ) {
    this.hosts = hosts;
    this.nets = nets;
    this.#drives = drives;
    this.#disks = disks;
    this.#families = families;
  }

  /** No I/O devices. */
  static none(): MachineIo {
    return new MachineIo([], []);
  }

  /**
   * Allocates windows and GSIs and starts every device's Worker over guest
   * RAM `regions` (drives are opened there; a failure closes what started).
   * The device code (virtio hosts, blk and net formats, disk handles) loads
   * here, on first use: a machine without I/O devices never loads it.
   */
  static async start(
    config: MachineIoConfig,
    regions: readonly MemoryRegion[],
  ): Promise<MachineIo> {
    const { startIoDevices } = await import("./machine_io_start.ts");
    const p = await startIoDevices(config, regions);
    return new MachineIo(p.hosts, p.drives, p.nets, p.disks, p.families);
  }

  /** The devices' MMIO windows and GSIs (what ACPI and the command line announce). */
  get slots(): readonly MmioSlot[] {
    return this.hosts.map((h) => h.slot);
  }

  /** Transport specs for every thread's device bus. */
  get specs(): DeviceSpec[] {
    return this.hosts.map((h) => h.spec);
  }

  /**
   * The command-line entries: `virtio_mmio.device=` per device, and
   * `root=/dev/vdX rw|ro` for a root drive.
   */
  cmdline(): string {
    const parts: string[] = [];
    if (this.hosts.length > 0) parts.push(virtioMmioCmdline(this.slots));
    const i = this.#drives.findIndex((d) => d.root === true);
    const root = this.#drives[i];
    if (root !== undefined) {
      parts.push(`root=/dev/vd${String.fromCharCode(97 + i)} ${root.readOnly ? "ro" : "rw"}`);
    }
    return parts.join(" ");
  }

  /** Registers every device's ioeventfds and irqfd with VM `vmFd`. */
  attach(vmFd: number): void {
    for (const h of this.hosts) h.attach(vmFd);
  }

  /** The handle of drive `id`. */
  disk(id: string): DiskHandle | undefined {
    return this.#disks.get(id);
  }

  /** Every drive's handle. */
  disks(): DiskHandle[] {
    return [...this.#disks.values()];
  }

  /** The host of device `name`. */
  host(name: string): VirtioDeviceHost | undefined {
    return this.hosts.find((h) => h.name === name);
  }

  /** The devices' metric families (virtio-net and virtio-blk counters); none without devices. */
  metricFamilies(): MetricFamily[] {
    return this.#families?.() ?? [];
  }

  /** Closes every device (back ends flush and close). */
  async close(): Promise<void> {
    await Promise.all(this.hosts.map((h) => h.close()));
  }
}
