/**
 * Firecracker's configuration objects, with its JSON field names
 * (`firecracker.yaml`'s `MachineConfiguration`, `BootSource`, `Drive`,
 * `PartialDrive`, `NetworkInterface`, `PartialNetworkInterface`,
 * `RateLimiter`, `TokenBucket`, `Logger`, `Metrics`) and their defaults;
 * `vm_config_parse.ts` validates them.
 *
 * Where vmkit differs from Firecracker it says so: `vcpu_count` goes to 64
 * (the machine's limit), `smt`, CPU templates and huge pages are refused,
 * a drive's `path_on_host` may also be `iscsi://HOST[:PORT]/TARGET/LUN`, and a
 * network interface may name the `netns` its TAP lives in.
 *
 * @module
 */

/** A bad configuration value: the API answers 400 with this message; the CLI prints it. */
export class VmConfigError extends Error {
  /** Creates the error. */
  constructor(message: string) {
    super(message);
    this.name = "VmConfigError";
  }
}

/** Firecracker's `TokenBucket`. */
export interface FcTokenBucket {
  /** Tokens the bucket holds. */
  readonly size: number;
  /** Extra tokens available once, at start. */
  readonly one_time_burst?: number;
  /** Milliseconds to refill the bucket from empty. */
  readonly refill_time: number;
}

/** Firecracker's `RateLimiter`. */
export interface FcRateLimiter {
  /** Bytes. */
  readonly bandwidth?: FcTokenBucket;
  /** Operations. */
  readonly ops?: FcTokenBucket;
}

/** Firecracker's `MachineConfiguration`. */
export interface FcMachineConfig {
  /** vCPUs, 1..64 (Firecracker: 1..32). */
  readonly vcpu_count: number;
  /** Guest RAM in MiB, 1..65536. */
  readonly mem_size_mib: number;
  /** Always false: vmkit presents no SMT siblings. */
  readonly smt: boolean;
  /** Dirty page tracking for diff snapshots. */
  readonly track_dirty_pages: boolean;
  /** Always `"None"`. */
  readonly huge_pages: "None";
}

/** Firecracker's `BootSource`. */
export interface FcBootSource {
  /** Kernel image on the host. */
  readonly kernel_image_path: string;
  /** Kernel command line (absent: vmkit's default). */
  readonly boot_args?: string;
  /** Initial ramdisk on the host. */
  readonly initrd_path?: string;
}

/** Firecracker's `Drive` (virtio-blk). */
export interface FcDrive {
  /** Drive id: 1..64 of `[A-Za-z0-9_]`. */
  readonly drive_id: string;
  /** Image path, or an `iscsi://` URL (vmkit). */
  readonly path_on_host: string;
  /** The guest boots from it (`root=/dev/vda`, or `root=PARTUUID=…`). */
  readonly is_root_device: boolean;
  /** Read-only to the guest. */
  readonly is_read_only: boolean;
  /** Root partition's PARTUUID (root device only). */
  readonly partuuid?: string;
  /** `"Unsafe"` (flushes are no-ops in Firecracker) or `"Writeback"`. */
  readonly cache_type: "Unsafe" | "Writeback";
  /** `"Sync"` or `"Async"`; recorded, the I/O thread picks its engine. */
  readonly io_engine: "Sync" | "Async";
  /** Optional rate limiter. */
  readonly rate_limiter?: FcRateLimiter;
}

/** Firecracker's `PartialDrive` (`PATCH /drives/{id}` after boot). */
export interface FcPartialDrive {
  /** Drive id. */
  readonly drive_id: string;
  /** New image for the drive. */
  readonly path_on_host?: string;
  /** New rate limiter. */
  readonly rate_limiter?: FcRateLimiter;
}

/** Firecracker's `NetworkInterface` (virtio-net over a TAP). */
export interface FcNetworkInterface {
  /** Interface id: 1..64 of `[A-Za-z0-9_]`. */
  readonly iface_id: string;
  /** Host TAP device name (at most 15 bytes). */
  readonly host_dev_name: string;
  /** Guest MAC `aa:bb:cc:dd:ee:ff`. */
  readonly guest_mac?: string;
  /** MTU advertised to the guest (`VIRTIO_NET_F_MTU`), 68..65535 (Firecracker 1.16). */
  readonly mtu?: number;
  /** Receive rate limiter. */
  readonly rx_rate_limiter?: FcRateLimiter;
  /** Transmit rate limiter. */
  readonly tx_rate_limiter?: FcRateLimiter;
  /** vmkit: network namespace the TAP lives in (a name under /var/run/netns or a path). */
  readonly netns?: string;
}

/** Firecracker's `PartialNetworkInterface` (`PATCH /network-interfaces/{id}` after boot). */
export interface FcPartialNetworkInterface {
  /** Interface id. */
  readonly iface_id: string;
  /** New receive rate limiter. */
  readonly rx_rate_limiter?: FcRateLimiter;
  /** New transmit rate limiter. */
  readonly tx_rate_limiter?: FcRateLimiter;
}

/** Log levels, as Firecracker names them. */
export type FcLogLevel = "Error" | "Warning" | "Info" | "Debug" | "Trace" | "Off";
/** The levels in increasing verbosity. */
export const LOG_LEVELS: readonly FcLogLevel[] = [
  "Off",
  "Error",
  "Warning",
  "Info",
  "Debug",
  "Trace",
];

/** Firecracker's `Logger`. */
export interface FcLogger {
  /** File or named pipe the JSON log lines go to. */
  readonly log_path?: string;
  /** Most verbose level written. */
  readonly level: FcLogLevel;
  /** Kept for Firecracker clients; vmkit's JSON lines always carry the level. */
  readonly show_level: boolean;
  /** Kept for Firecracker clients; vmkit's JSON lines always name the module that logged. */
  readonly show_log_origin: boolean;
  /** Only lines from this module. */
  readonly module?: string;
}

/** Firecracker's `Metrics`. */
export interface FcMetrics {
  /** File or named pipe the Prometheus text is flushed to. */
  readonly metrics_path: string;
}

/** Firecracker's defaults before `PUT /machine-config`. */
export const DEFAULT_MACHINE_CONFIG: FcMachineConfig = {
  vcpu_count: 1,
  mem_size_mib: 128,
  smt: false,
  track_dirty_pages: false,
  huge_pages: "None",
};

/** Largest vCPU count (the machine's). */
export const MAX_VCPU_COUNT = 64;
/** Largest guest RAM in MiB (the machine's). */
export const MAX_MEM_MIB = 65536;
