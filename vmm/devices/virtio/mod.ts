/**
 * vmkit's virtio devices: the virtio-mmio transport (version 2), split
 * virtqueues, virtio-blk, and the I/O device model they run on: a register
 * file in shared state handled on the vCPU threads, one back end per device
 * on its own I/O Worker, guest notifications by ioeventfd and interrupts by
 * irqfd. See `README.md` beside this file for the design.
 *
 * A device from outside the tree is a module exporting
 * `createBackend(config, ctx)` ({@link BackendFactory}); pass a
 * {@link VirtioDeviceConfig} naming it in `MachineConfig.virtioDevices`.
 *
 * @example
 * ```ts
 * import type { VirtioBackend, VirtioBackendContext } from "./mod.ts";
 * // A device whose one queue returns every chain unused (a "null" device).
 * export function createBackend(_config: unknown, ctx: VirtioBackendContext): Promise<VirtioBackend> {
 *   const chain = new DescChain(256);
 *   return Promise.resolve({
 *     activate() {},
 *     reset() {},
 *     process(q: number) {
 *       const queue = ctx.queues[q];
 *       while (queue && ctx.canTake() && queue.pop(chain) === POP_OK) queue.pushUsed(chain.head, 0);
 *       ctx.interruptIfNeeded(q);
 *     },
 *     close: () => Promise.resolve(),
 *   });
 * }
 * import { DescChain, POP_OK } from "./mod.ts";
 * ```
 *
 * @module
 */

export {
  type BackendFactory,
  type VirtioBackend,
  type VirtioBackendContext,
  VirtioBackendError,
} from "./backend.ts";
export { GuestRam, joinAddr, type RamRegion } from "./guest_ram.ts";
export {
  Backend as VirtioBackendState,
  Ctrl as VirtioCtrl,
  Feature as VirtioFeature,
  featureBits,
  hasFeature,
  Interrupt as VirtioInterrupt,
  MAX_CONFIG_BYTES,
  MAX_QUEUES,
  MMIO_CONFIG,
  MMIO_MAGIC,
  MMIO_VERSION,
  MMIO_WINDOW,
  Q as VirtioQueueWord,
  queueWord,
  Reg as VirtioReg,
  Status as VirtioStatus,
  VENDOR_ID,
  W as VirtioStateWord,
} from "./layout.ts";
export {
  RESET_WAIT_MS,
  VIRTIO_MMIO_KIND,
  VIRTIO_STATE_VERSION,
  virtioMmioSpec,
  VirtioMmioTransport,
  type VirtioTransportOptions,
} from "./mmio.ts";
export { checkQueueConfig, DescChain, POP_EMPTY, POP_ERROR, POP_OK, SplitQueue } from "./queue.ts";
export { type VirtioDeviceConfig, VirtioDeviceError, VirtioDeviceHost } from "./host.ts";
export {
  BLK_DEVICE_ID,
  BLK_QUEUE_SIZE,
  type BlkBackendConfig,
  BlkConfig,
  blkDeviceConfig,
  BlkFeature,
  blkFeatures,
  BlkStatus,
  BlkType,
} from "./blk_format.ts";
export type { DiskDescription, DiskLayer } from "./blk_disk.ts";
export {
  defaultMac,
  formatMac,
  NET_DEVICE_ID,
  NET_HDR_BYTES,
  NET_QUEUE_SIZE,
  type NetBackendConfig,
  NetConfigError,
  NetConfigSpace,
  type NetDevice,
  netDevice,
  type NetDeviceOptions,
  NetFeature,
  netFeatures,
  type NetRateLimiterUpdate,
  NetStat,
  NetStats,
  parseMac,
  SET_RATE_LIMITERS,
  setNetRateLimiters,
} from "./net_format.ts";
export {
  type DroppedFrameHandler,
  FILTER_SNAP,
  FilterVerdict,
  NET_FILTER_BYTES,
  NET_INBOUND,
  NET_OUTBOUND,
  NetBlockPort,
  NetFilterError,
  NetFrameFilter,
} from "./net_filter.ts";
export { RateLimiter } from "./rate_limiter.ts";
