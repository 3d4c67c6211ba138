/**
 * vmkit `native`: the C shim over /dev/kvm and its typed bindings.
 *
 * `loadShim()` builds (cached) and opens `vmkit_shim.c`; `Kvm`, `Vm` and
 * `Vcpu` wrap the system, VM and vCPU fds; `saveVcpuState`/`saveVmState`
 * gather everything a checkpoint needs.
 *
 * @example
 * ```ts
 * import { Kvm, loadShim } from "./mod.ts";
 * await loadShim();
 * using kvm = Kvm.open();
 * using vm = kvm.createVm();
 * vm.createIrqchip();
 * using vcpu = vm.createVcpu(0);
 * console.log(vcpu.getRegs().rip);
 * ```
 *
 * @module
 */

export type { CpuidEntry, DTable, IrqRoute, MsrEntry, Regs, Segment, Sregs } from "./kvm_types.ts";
export {
  buildShim,
  type BuildShimOptions,
  type EnvLookup,
  ShimBuildError,
  shimCacheDir,
} from "./build.ts";
export { type LoadedShim, loadShim, openShim, type Shim, SHIM_SYMBOLS } from "./ffi.ts";
export {
  errnoText,
  installKickHandler,
  IrqChip,
  type IrqChipId,
  kick,
  Kvm,
  KVM_CAP_IMMEDIATE_EXIT,
  KVM_CAP_XSAVE2,
  KVM_MEM_LOG_DIRTY_PAGES,
  KVM_MP_STATE_RUNNABLE,
  KVM_PIT_SPEAKER_DUMMY,
  KvmError,
  KvmExit,
  msrEntries,
  msrsBlob,
  RunOffset,
  threadSelf,
  type UserMemoryRegion,
  Vcpu,
  VcpuState as VcpuStateKinds,
  type VcpuStateKind,
  vcpuStateSize,
  Vm,
} from "./kvm.ts";
export {
  type MachineCpuState,
  restoreVcpuState,
  restoreVmState,
  saveVcpuState,
  saveVmState,
  type VcpuState,
  type VmState,
} from "./kvm_state.ts";
export {
  closeFd,
  EventFd,
  FALLOC_KEEP_SIZE,
  FALLOC_PUNCH_HOLE,
  FdWaiter,
  IO_SYMBOLS,
  IOEVENTFD_DATAMATCH,
  IOEVENTFD_DEASSIGN,
  IOEVENTFD_PIO,
  type IoShim,
  ioShim,
  IoUring,
  IRQFD_DEASSIGN,
  MAX_WAIT_FDS,
  O_RDONLY,
  O_RDWR,
  openFd,
  registerIoeventfd,
  registerIrqfd,
  signalEventFd,
  unregisterIoeventfd,
  unregisterIrqfd,
  URING_CQE_BYTES,
  URING_FSYNC_DATASYNC,
  URING_REQ_BYTES,
  UringOp,
  UringReq,
} from "./io_ffi.ts";
