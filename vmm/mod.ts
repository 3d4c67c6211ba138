/**
 * vmkit `vmm`: the machine, vCPUs, devices and boot loaders.
 *
 * @example
 * ```ts ignore
 * // ignore: needs a kernel image (vmlinux) and /dev/kvm.
 * import { defaultDeviceSpecs, Machine } from "./mod.ts";
 * const kernel = await Deno.readFile("vmlinux");
 * await using m = await Machine.create({
 *   memMiB: 128,
 *   vcpus: 1,
 *   kernel,
 *   devices: defaultDeviceSpecs({ memMiB: 128 }),
 * });
 * await m.start();
 * console.log(await m.wait());
 * ```
 *
 * @module
 */

export type { AddressRange, Device, DeviceEnv, Suspendable } from "./devices/device.ts";
export {
  createDevices,
  type DefaultDeviceOptions,
  defaultDeviceSpecs,
  type DeviceSpec,
  type SerialOutput,
} from "./devices/mod.ts";
export type { GuestMemory, MemoryRegion } from "./guest_memory.ts";
export { GuestMemoryError, MMIO_GAP_END, MMIO_GAP_START, x86Layout } from "./guest_memory.ts";
export type { BootOptions, BootPlan, BootProtocol } from "./boot/types.ts";
export {
  IDENTITY_MAP_ADDR,
  type KernelLoader,
  Machine,
  type MachineConfig,
  type MachineCpuState,
  MachineError,
  type MachineExit,
  type MachineState,
  MAX_VCPUS,
  mergeSregs,
  resetRegs,
  type RestoreStateTimes,
  TSS_ADDR,
} from "./machine.ts";
export {
  HostMemory,
  type HostMemoryOptions,
  type HostMemoryRegion,
  MAX_MEMORY,
  type MemoryBacking,
  MemoryError,
  PAGE_SIZE,
} from "./memory.ts";
export { CPUID_1_ECX_CX16, guestCpuid } from "./cpuid.ts";
export { BootError, loadKernel } from "./boot/mod.ts";
export { DeviceBus } from "./devices/mod.ts";
export {
  FIRST_DEVICE_GSI,
  LAST_DEVICE_GSI,
  LEGACY_GSIS,
  MMIO_DEVICES_BASE,
  MMIO_SLOT_SIZE,
  MmioAllocator,
  MmioAllocatorError,
  type MmioAllocatorOptions,
  type MmioSlot,
  nextFreeGsi,
  virtioMmioCmdline,
} from "./devices/mmio_allocator.ts";
export * from "./devices/virtio/mod.ts";
export { DiskHandle } from "./disk_handle.ts";
export { type MachineIoConfig, MachineIoError, type NetInterface } from "./machine_io.ts";
export {
  type GuardedNic,
  type GuardedVm,
  VmNetWatch,
  VmNetWatchError,
  type VmNetWatchOptions,
} from "./net_guard.ts";
export type {
  DriveBackend,
  DriveConfig,
  NetConfig,
  RateLimiterConfig,
  StorageIdentityConfig,
  TokenBucketConfig,
} from "./io_config.ts";
export {
  ApiClientError,
  type ApiContext,
  ApiFault,
  type ApiMemoryRegion,
  type ApiObservability,
  type ApiReply,
  apiRequest,
  type ApiRoute,
  type ApiServer,
  type ApiServerOptions,
  type ApiTarget,
  type ApiVm,
  type DriveUpdate,
  type FcBootSource,
  type FcDrive,
  type FcLogger,
  type FcLogLevel,
  type FcMachineConfig,
  type FcMetrics,
  type FcNetworkInterface,
  type FcRateLimiter,
  type FcTokenBucket,
  type FullVmConfiguration,
  type HttpExchange,
  type HttpLimits,
  type InstanceState,
  launchMachine,
  type LaunchOptions,
  machineApiVm,
  type NetUpdate,
  startApiServer,
  VmConfigError,
  VmController,
  type VmControllerOptions,
  type VmLauncher,
  VmResources,
} from "./api/mod.ts";
export { EXIT_KINDS, type ExitKind, MachineMetrics } from "./metrics/machine_metrics.ts";
export {
  type MetricFamily,
  type MetricSample,
  type MetricsCollector,
  MetricsRegistry,
  renderPrometheus,
} from "./metrics/prometheus.ts";
export { SharedCounters } from "./metrics/shared_counters.ts";
export {
  ACPI_AREA_END,
  type AcpiConfig,
  acpiConfigFromSpecs,
  AcpiError,
  type AcpiLayout,
  type AcpiTable,
  buildAcpi,
  changeVmGenId,
  dumpTable,
  dumpTables,
  IOAPIC_ADDR,
  LOCAL_APIC_ADDR,
  type MmioDeviceInfo,
  newVmGenId,
  PC_SOURCE_OVERRIDES,
  pcIrqRoutes,
  readVmGenId,
  RSDP_ADDR,
  type SerialPortInfo,
  type SourceOverride,
  VMGENID_ADDR,
  VMGENID_SIZE,
  type VmGenIdLocation,
  writeAcpi,
  writeVmGenId,
} from "./acpi/mod.ts";
export { JsonLogger, type Level, LEVELS, type LoggerConfig, MAX_PENDING_BYTES } from "./log.ts";
export { METRICS_PERIOD_MS, MetricsFile } from "./metrics/metrics_file.ts";
export {
  listenMetrics,
  type MetricsEndpoint,
  MetricsEndpointError,
  parseListenAddress,
} from "./metrics/metrics_endpoint.ts";
export { netFamilies } from "./metrics/device_metrics.ts";
export {
  checkpointerFor,
  describeMachine,
  type MachineDescription,
  MachineTarget,
  RestoredMachine,
  restoreMachine,
  type RestoreOptions,
  type RestorePhases,
} from "./checkpoint.ts";
export { StandbyMachine, type StandbyOptions, type StandbyShape } from "./standby.ts";
export {
  type LoadRequest,
  loadSnapshot,
  restoredApiVm,
  setSnapshotHost,
  type SnapshotHost,
  snapshotRoutes,
} from "./snapshot_api.ts";
export { prewarmVcpuWorkers, releaseVcpuWorkers } from "./vcpu_pool.ts";
