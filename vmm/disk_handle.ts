/**
 * A drive as the main thread (a checkpoint, the API's `PATCH /drives`)
 * handles it. Every call runs on the drive's I/O Worker, where its image
 * lives; none is needed inside a checkpoint's pause window:
 *
 * 1. `armOverlay(path)` while the VM runs: creates a qcow2 overlay over the
 *    current top and arms it;
 * 2. `Machine.quiesceDevices()`: the drive finishes what is in flight and
 *    switches to the armed overlay (the parent is frozen from here on);
 * 3. pause the vCPUs, save, resume the vCPUs, `Machine.resumeDevices()`;
 * 4. later, `commit()` copies the overlay back into its parent while the VM
 *    runs and moves the drive onto the parent (copy-parent / active commit).
 *
 * @module
 */

import type { DiskDescription } from "./devices/virtio/blk_disk.ts";
import { BLK_STAT_NAMES, type BlkBackendConfig } from "./devices/virtio/blk_format.ts";
import type { VirtioDeviceHost } from "./devices/virtio/host.ts";
import type { DriveBackend, DriveConfig, RateLimiterConfig } from "./io_config.ts";
import { SharedCounters } from "./metrics/shared_counters.ts";
import type { LunIdentity } from "../san/lun_identity.ts";

export type { DiskDescription, DiskLayer } from "./devices/virtio/blk_disk.ts";

/** The main-thread handle of one virtio-blk drive. */
export class DiskHandle {
  /** The drive as configured. */
  readonly config: DriveConfig;
  /**
   * The drive's counters (`reads`, `read_bytes`, `writes`, `write_bytes`,
   * `flushes`, `discards`, `write_zeroes`, `get_ids`, `io_errors`,
   * `unsupported`, `throttled`), written by its I/O Worker.
   */
  readonly stats: SharedCounters;
  readonly #host: VirtioDeviceHost;

  /** Wraps the drive's device host (built by `blkDeviceConfig`). */
  constructor(host: VirtioDeviceHost, config: DriveConfig) {
    this.#host = host;
    this.config = config;
    const buf = (host.config.backendConfig as BlkBackendConfig).stats;
    this.stats = buf === undefined
      ? SharedCounters.create(BLK_STAT_NAMES)
      : SharedCounters.over(buf, BLK_STAT_NAMES);
  }

  /** Drive id. */
  get id(): string {
    return this.config.id;
  }

  /** The chain (paths, formats, sizes), iSCSI identity and armed overlay. */
  async describe(): Promise<DiskDescription> {
    return await this.#host.call("describe") as DiskDescription;
  }

  /**
   * The identity of the drive's iSCSI LUN (the drive, or the bottom of its
   * chain): size, VPD device id and serial, a digest of its first 64 KiB.
   */
  async lunIdentity(): Promise<LunIdentity> {
    return await this.#host.call("lunIdentity") as LunIdentity;
  }

  /**
   * Creates a qcow2 overlay at `path` over the current top while the VM
   * runs (over an iSCSI drive: an overlay whose backing is the LUN's URL);
   * the next quiesce switches the drive to it.
   */
  async armOverlay(path: string): Promise<DiskDescription> {
    return await this.#host.call("armOverlay", { path }) as DiskDescription;
  }

  /** Drops an armed overlay (its file is removed). */
  async disarm(): Promise<DiskDescription> {
    return await this.#host.call("disarm") as DiskDescription;
  }

  /** Commits the top overlay into its parent while the VM runs; the drive ends on the parent. */
  async commit(): Promise<DiskDescription> {
    return await this.#host.call("commit") as DiskDescription;
  }

  /**
   * Changes a running drive's rate limiter as Firecracker's `PATCH /drives`
   * does: a bucket left out is kept, a 0-sized one removes the limit, any
   * other replaces it with the budget carried over.
   */
  async setRateLimiter(update: RateLimiterConfig): Promise<void> {
    await this.#host.call("setRateLimiter", { rateLimiter: update });
  }

  /**
   * Replaces the drive's back end (Firecracker's `PATCH /drives/{id}`): the
   * drive is quiesced, switched, and resumed; the guest gets a
   * configuration-change interrupt with the new capacity.
   */
  async replace(backend: DriveBackend): Promise<DiskDescription> {
    const wasQuiesced = this.#host.quiesced;
    await this.#host.quiesce();
    try {
      return await this.#host.call("replace", { backend }) as DiskDescription;
    } finally {
      if (!wasQuiesced) this.#host.resume();
    }
  }
}
