/**
 * Whole-vCPU and VM-wide KVM state as plain data, for checkpoints: every
 * piece a paused vCPU, the in-kernel irqchip, the PIT and kvmclock need to
 * resume elsewhere, saved and restored in the order KVM requires.
 *
 * @example
 * ```ts
 * import { loadShim } from "./ffi.ts";
 * import { Kvm } from "./kvm.ts";
 * import { restoreVcpuState, saveVcpuState } from "./kvm_state.ts";
 * await loadShim();
 * using kvm = Kvm.open();
 * using vm = kvm.createVm();
 * vm.createIrqchip();
 * using vcpu = vm.createVcpu(0);
 * const state = saveVcpuState(vcpu, kvm.msrIndexList());
 * restoreVcpuState(vcpu, state);
 * ```
 *
 * @module
 */

import { IrqChip, type Vcpu, type Vm } from "./kvm.ts";
import type { CpuidEntry, Regs, Sregs } from "./kvm_types.ts";

/** Everything of one vCPU that KVM holds. Blobs are the kernel structs' bytes. */
export interface VcpuState {
  /** vCPU id. */
  id: number;
  /** CPUID the guest sees (KVM_GET_CPUID2). */
  cpuid: CpuidEntry[];
  /** General registers. */
  regs: Regs;
  /** Segment and control registers. */
  sregs: Sregs;
  /** `struct kvm_xsave` (covers the FPU/SSE/AVX state). */
  xsave: Uint8Array;
  /** `struct kvm_xcrs`. */
  xcrs: Uint8Array;
  /** `struct kvm_msrs` of every MSR KVM could read. */
  msrs: Uint8Array;
  /** `struct kvm_lapic_state`. */
  lapic: Uint8Array;
  /** `struct kvm_vcpu_events`. */
  events: Uint8Array;
  /** `struct kvm_mp_state`. */
  mpState: Uint8Array;
  /** `struct kvm_debugregs`. */
  debugRegs: Uint8Array;
}

/** VM-wide state of the in-kernel devices and clock. */
export interface VmState {
  /** `struct kvm_irqchip` of the master PIC. */
  picMaster: Uint8Array;
  /** `struct kvm_irqchip` of the slave PIC. */
  picSlave: Uint8Array;
  /** `struct kvm_irqchip` of the IOAPIC. */
  ioapic: Uint8Array;
  /** `struct kvm_pit_state2`. */
  pit: Uint8Array;
  /** `struct kvm_clock_data`. */
  clock: Uint8Array;
}

/** Every vCPU's KVM state and the VM-wide in-kernel state (what a machine checkpoint holds). */
export interface MachineCpuState {
  /** One entry per vCPU, in id order. */
  vcpus: VcpuState[];
  /** Irqchip, PIT and kvmclock. */
  vm: VmState;
}

/**
 * Saves a paused vCPU's whole state; `msrIndices` is usually
 * `kvm.msrIndexList()`. A caller that knows the CPUID it set passes it as
 * `cpuid` and saves the `KVM_GET_CPUID2` call.
 */
export function saveVcpuState(
  vcpu: Vcpu,
  msrIndices: readonly number[],
  cpuid?: readonly CpuidEntry[],
): VcpuState {
  return {
    id: vcpu.id,
    cpuid: cpuid === undefined ? vcpu.getCpuid() : cpuid.map((e) => ({ ...e })),
    regs: vcpu.getRegs(),
    sregs: vcpu.getSregs(),
    xsave: vcpu.getXsave(),
    xcrs: vcpu.getXcrs(),
    msrs: vcpu.getMsrs(msrIndices),
    lapic: vcpu.getLapic(),
    events: vcpu.getVcpuEvents(),
    mpState: vcpu.getMpState(),
    debugRegs: vcpu.getDebugRegs(),
  };
}

/**
 * Restores a state from {@link saveVcpuState} into a vCPU that is not running.
 * Order matters: CPUID first (it shapes what the rest may hold), sregs (APIC
 * base) before the LAPIC, MSRs after XSAVE, events and MP state last.
 */
export function restoreVcpuState(vcpu: Vcpu, s: VcpuState): void {
  vcpu.setCpuid(s.cpuid);
  vcpu.setSregs(s.sregs);
  vcpu.setRegs(s.regs);
  vcpu.setXsave(s.xsave);
  vcpu.setXcrs(s.xcrs);
  vcpu.setMsrs(s.msrs);
  vcpu.setLapic(s.lapic);
  vcpu.setVcpuEvents(s.events);
  vcpu.setMpState(s.mpState);
  vcpu.setDebugRegs(s.debugRegs);
}

/** Saves the irqchip (both PICs and the IOAPIC), PIT and kvmclock. */
export function saveVmState(vm: Vm): VmState {
  return {
    picMaster: vm.getIrqchip(IrqChip.PIC_MASTER),
    picSlave: vm.getIrqchip(IrqChip.PIC_SLAVE),
    ioapic: vm.getIrqchip(IrqChip.IOAPIC),
    pit: vm.getPit2(),
    clock: vm.getClock(),
  };
}

/** Restores a state from {@link saveVmState} (vCPUs not running). */
export function restoreVmState(vm: Vm, s: VmState): void {
  vm.setIrqchip(s.picMaster);
  vm.setIrqchip(s.picSlave);
  vm.setIrqchip(s.ioapic);
  vm.setPit2(s.pit);
  vm.setClock(s.clock);
}
