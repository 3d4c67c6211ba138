/**
 * Metric families of the machine's I/O devices, from the counters each
 * device keeps in shared memory (its I/O Worker writes them, the main thread
 * reads them at scrape time): virtio-net frames, bytes, drops and throttling
 * per interface.
 *
 * @module
 */

import { NetStat } from "../devices/virtio/net_format.ts";
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
