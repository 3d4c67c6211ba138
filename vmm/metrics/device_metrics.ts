/**
 * Metric families of the machine's I/O devices, from the counters each
 * device keeps in shared memory (its I/O Worker writes them, the main thread
 * reads them at scrape time): virtio-net frames, bytes, drops and throttling
 * per interface, and virtio-blk requests by type, bytes, errors and
 * throttling per drive.
 *
 * @module
 */

import { BlkStat } from "../devices/virtio/blk_format.ts";
import { NetStat } from "../devices/virtio/net_format.ts";
import type { DiskHandle } from "../disk_handle.ts";
import type { NetInterface } from "../machine_io.ts";
import type { MetricFamily } from "./prometheus.ts";

/** Prometheus name, type and help of each virtio-net counter. */
const NET_FAMILIES: ReadonlyArray<[number, string, string]> = [
  [NetStat.RX_FRAMES, "vmkit_net_rx_frames_total", "Frames delivered to the guest."],
  [NetStat.RX_BYTES, "vmkit_net_rx_bytes_total", "Bytes of frames delivered to the guest."],
  [NetStat.TX_FRAMES, "vmkit_net_tx_frames_total", "Frames the guest sent to the TAP."],
  [NetStat.TX_BYTES, "vmkit_net_tx_bytes_total", "Bytes of frames the guest sent to the TAP."],
  [
    NetStat.RX_TOO_BIG,
    "vmkit_net_rx_too_big_total",
    "Received frames larger than the guest's buffers.",
  ],
  [NetStat.TX_ERRORS, "vmkit_net_tx_errors_total", "Transmitted frames the TAP refused."],
  [NetStat.TX_BAD, "vmkit_net_tx_bad_total", "Transmit chains dropped before the TAP (malformed)."],
  [
    NetStat.RX_THROTTLED,
    "vmkit_net_rx_throttled_total",
    "Times the receive rate limiter held frames.",
  ],
  [
    NetStat.TX_THROTTLED,
    "vmkit_net_tx_throttled_total",
    "Times the transmit rate limiter held frames.",
  ],
  [
    NetStat.RX_NO_BUFFERS,
    "vmkit_net_rx_no_buffers_total",
    "Times frames waited for guest buffers.",
  ],
  [NetStat.RX_BLOCKED, "vmkit_net_rx_blocked_total", "Received frames a netguard drop dropped."],
  [
    NetStat.RX_LIMITED,
    "vmkit_net_rx_limited_total",
    "Received frames dropped over a netguard rate_limit.",
  ],
  [NetStat.TX_BLOCKED, "vmkit_net_tx_blocked_total", "Transmitted frames a netguard drop dropped."],
  [
    NetStat.TX_LIMITED,
    "vmkit_net_tx_limited_total",
    "Transmitted frames dropped over a netguard rate_limit.",
  ],
];

/** The virtio-net families of `nets`, one sample per interface (labels `iface`, `tap`). */
export function netFamilies(nets: readonly NetInterface[]): MetricFamily[] {
  if (nets.length === 0) return [];
  return NET_FAMILIES.map(([stat, name, help]) => ({
    name,
    help,
    type: "counter" as const,
    samples: nets.map((n) => ({ labels: { iface: n.id, tap: n.tap }, value: n.stats.get(stat) })),
  }));
}

/** Prometheus name, type and help of each virtio-blk counter. */
const BLK_FAMILIES: ReadonlyArray<[number, string, string]> = [
  [BlkStat.READS, "vmkit_blk_read_requests_total", "Read requests the guest made."],
  [BlkStat.READ_BYTES, "vmkit_blk_read_bytes_total", "Bytes the guest read."],
  [BlkStat.WRITES, "vmkit_blk_write_requests_total", "Write requests the guest made."],
  [BlkStat.WRITE_BYTES, "vmkit_blk_write_bytes_total", "Bytes the guest wrote."],
  [BlkStat.FLUSHES, "vmkit_blk_flush_requests_total", "Flush requests (made durable)."],
  [BlkStat.DISCARDS, "vmkit_blk_discard_requests_total", "Discard requests."],
  [BlkStat.WRITE_ZEROES, "vmkit_blk_write_zeroes_requests_total", "Write-zeroes requests."],
  [BlkStat.GET_IDS, "vmkit_blk_get_id_requests_total", "GET_ID (serial) requests."],
  [BlkStat.IO_ERRORS, "vmkit_blk_io_errors_total", "Requests answered VIRTIO_BLK_S_IOERR."],
  [BlkStat.UNSUPPORTED, "vmkit_blk_unsupported_total", "Requests of an unsupported type."],
  [BlkStat.THROTTLED, "vmkit_blk_throttled_total", "Requests the rate limiter held."],
];

/** The virtio-blk families of `disks`, one sample per drive (label `drive`). */
export function blkFamilies(disks: readonly DiskHandle[]): MetricFamily[] {
  if (disks.length === 0) return [];
  return BLK_FAMILIES.map(([stat, name, help]) => ({
    name,
    help,
    type: "counter" as const,
    samples: disks.map((d) => ({ labels: { drive: d.id }, value: d.stats.values[stat] ?? 0 })),
  }));
}
