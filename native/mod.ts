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

export type { CpuidEntry, DTable, MsrEntry, Regs, Segment, Sregs } from "./kvm_types.ts";
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
