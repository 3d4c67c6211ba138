/**
 * How a VM's I/O devices are described: its virtio-blk drives, virtio-net
 * interfaces and the storage identity its SAN I/O goes out under. Plain,
 * structured-clone-able records: the machine hands them to each device's
 * own I/O thread, which opens the back end there (an image object or an
 * iSCSI session never crosses threads).
 *
 * The Firecracker-style API (`PUT /drives/{id}`, `PUT /network-interfaces/{id}`)
 * and the CLI (`--disk`, `--net`, `--vm-id`, `--sui-registry`) both build
 * these records.
 *
 * @module
 */

/** Where a drive's blocks live. */
export type DriveBackend =
  | {
    readonly kind: "file";
    /** Image path on the host. */
    readonly path: string;
    /**
     * Image format. Absent: probed from the qcow2 magic, else raw; a probed
     * raw image never gains a qcow2 header through guest writes.
     */
    readonly format?: "raw" | "qcow2";
  }
  | {
    readonly kind: "iscsi";
    /** `iscsi://HOST[:PORT]/TARGET-IQN/LUN`; the session logs in with the VM's own SUI. */
    readonly url: string;
  };

/** A token bucket as Firecracker describes one (`size`, `one_time_burst`, `refill_time`). */
export interface TokenBucketConfig {
  /** Tokens (bytes or operations) the bucket holds. */
  readonly size: number;
  /** Extra tokens available once, at start. */
  readonly oneTimeBurst?: number;
  /** Milliseconds to refill the whole bucket from empty. */
  readonly refillTimeMs: number;
}

/** Firecracker's rate limiter: a bandwidth bucket (bytes) and an ops bucket (requests). */
export interface RateLimiterConfig {
  /** Bytes per refill period. */
  readonly bandwidth?: TokenBucketConfig;
  /** Requests (or frames) per refill period. */
  readonly ops?: TokenBucketConfig;
}

/** One virtio-blk drive. */
export interface DriveConfig {
  /** Drive id (Firecracker's `drive_id`); also the device's name and checkpoint key. */
  readonly id: string;
  /** The back end. */
  readonly backend: DriveBackend;
  /** Expose the disk read-only (`VIRTIO_BLK_F_RO`; writes fail with `VIRTIO_BLK_S_IOERR`). */
  readonly readOnly?: boolean;
  /** The root device (Firecracker's `is_root_device`): first drive, `root=/dev/vda` on the cmdline. */
  readonly root?: boolean;
  /** Serial returned by `VIRTIO_BLK_T_GET_ID` (at most 20 bytes); default: the id. */
  readonly serial?: string;
  /** Optional rate limiter. */
  readonly rateLimiter?: RateLimiterConfig;
}

/** One virtio-net interface over a host TAP device. */
export interface NetConfig {
  /** Interface id (Firecracker's `iface_id`); also the device's name and checkpoint key. */
  readonly id: string;
  /** Host TAP device name (Firecracker's `host_dev_name`). */
  readonly tap: string;
  /**
   * Network namespace the TAP lives in: a name under /var/run/netns or a
   * path (vmkit's addition; Firecracker runs the whole VMM in the namespace).
   * Default: the VMM's own.
   */
  readonly netns?: string;
  /** Guest MAC `aa:bb:cc:dd:ee:ff` (Firecracker's `guest_mac`); default derived from the VM id. */
  readonly mac?: string;
  /**
   * MTU offered to the guest (`VIRTIO_NET_F_MTU`, Firecracker's `mtu`), 68..65535;
   * absent: not offered, the guest keeps its default.
   */
  readonly mtu?: number;
  /** Optional rate limiters, guest receive and transmit. */
  readonly rxRateLimiter?: RateLimiterConfig;
  /** Optional transmit rate limiter. */
  readonly txRateLimiter?: RateLimiterConfig;
}

/** The VM's own storage identity (seed US8166475B1): who its SAN I/O logs in as. */
export interface StorageIdentityConfig {
  /** VM id whose SUI (WWPN/WWNN, IQN, NQN) the registry holds (allocated on first use). */
  readonly vmId: string;
  /** SUI registry: a journal file path or an `etcd://HOST:PORT[/prefix]` URL. */
  readonly registry: string;
}
