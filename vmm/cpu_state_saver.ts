/**
 * How a {@link Machine} saves its vCPUs' state for a checkpoint inside a
 * short pause: each vCPU thread saves its own state into shared slots as it
 * parks (`native/kvm_state_slot.ts`), and what cannot change while the guest
 * runs is not read in the pause at all.
 *
 * - **CPUID** changes only when the VMM calls `KVM_SET_CPUID2` (at creation
 *   and at a restore), so the saver keeps what was set, and a restore sets
 *   exactly what the original machine was given. The few bits KVM derives at
 *   run time (OSXSAVE and OSPKE from CR4, the APIC bit from the APIC base,
 *   leaf 0xD sizes from XCR0) are derived again on restore, when the saved
 *   CR4, XCR0 and APIC base are set after the CPUID. (`KVM_GET_CPUID2` is
 *   also not a faithful record everywhere: on this project's nested host it
 *   answers the host's feature bits, CX16 included, which neither the VMM
 *   set nor the guest sees; restoring that would change the guest's CPU.)
 * - **regs, sregs and events** come back in `kvm_run` from the one `KVM_RUN`
 *   a parking vCPU makes with `immediate_exit` set (KVM_CAP_SYNC_REGS; that
 *   run also completes a pending I/O exit, which KVM otherwise leaves half
 *   done until the next run).
 * - **The MSR list** is KVM's index list filtered once, at creation, to the
 *   MSRs this host reads, so one `KVM_GET_MSRS` reads them all. Their values
 *   are read in the pause: the guest may write any of them at any time.
 *
 * @module
 */

import { KVM_SYNC_X86_ALL, msrEntries, type Vcpu, type Vm } from "../native/kvm.ts";
import {
  type MachineCpuState,
  saveVcpuState,
  saveVmState,
  type VcpuState,
} from "../native/kvm_state.ts";
import { VcpuStateSlots } from "../native/kvm_state_slot.ts";
import type { CpuidEntry } from "../native/kvm_types.ts";

/** The init fields a vCPU thread needs to attach to the slots. */
export interface StateSlotsInit {
  /** The slots' shared buffer. */
  readonly buffer: SharedArrayBuffer;
  /** Number of vCPUs. */
  readonly count: number;
  /** MSRs per slot. */
  readonly msrCount: number;
  /** KVM stores regs, sregs and events in `kvm_run` on request (KVM_CAP_SYNC_REGS). */
  readonly sync: boolean;
}

/** Per-machine: the CPUID set, the readable MSRs, the slots and which pause they belong to. */
export class CpuStateSaver {
  readonly #cpuid: CpuidEntry[][];
  readonly #msrs: number[];
  readonly #slots: VcpuStateSlots;
  readonly #sync: boolean;
  #epoch = 0;
  #valid = false;

  private constructor(
    cpuid: CpuidEntry[][],
    msrs: number[],
    slots: VcpuStateSlots,
    sync: boolean,
  ) {
    this.#sync = sync;
    this.#cpuid = cpuid;
    this.#msrs = msrs;
    this.#slots = slots;
  }

  /**
   * A saver for `vcpus` (created, not yet run), `cpuid[i]` being what vCPU i
   * was given, `msrIndexList` KVM's list (filtered here to what vCPU 0 reads),
   * `syncRegs` what `KVM_CHECK_EXTENSION(KVM_CAP_SYNC_REGS)` answered.
   */
  static create(
    vcpus: readonly Vcpu[],
    cpuid: CpuidEntry[][],
    msrIndexList: readonly number[],
    syncRegs: number,
  ): CpuStateSaver {
    const first = vcpus[0];
    const msrs = first === undefined
      ? []
      : msrEntries(first.getMsrs(msrIndexList)).map((e) => e.index);
    const slots = VcpuStateSlots.create(vcpus.length, first?.xsaveSize ?? 0, msrs);
    const sync = (syncRegs & KVM_SYNC_X86_ALL) === KVM_SYNC_X86_ALL;
    return new CpuStateSaver(cpuid, msrs, slots, sync);
  }

  /** What each vCPU thread attaches to. */
  get init(): StateSlotsInit {
    return {
      buffer: this.#slots.buffer,
      count: this.#slots.count,
      msrCount: this.#slots.msrCount,
      sync: this.#sync,
    };
  }

  /** Before a pause that will save state: asks the vCPU threads to save as they park. */
  request(): number {
    this.#valid = false;
    return this.#slots.request();
  }

  /** After that pause completed: the slots of `epoch` now hold the paused state. */
  paused(epoch: number): void {
    this.#epoch = epoch;
    this.#valid = true;
  }

  /** The machine runs again: the slots are stale. */
  resumed(): void {
    this.#valid = false;
  }

  /** Whether vCPU `i` was given exactly `cpuid` (entry by entry, in order). */
  hasCpuid(i: number, cpuid: readonly CpuidEntry[]): boolean {
    const have = this.#cpuid[i];
    return have !== undefined && have.length === cpuid.length &&
      have.every((a, k) => {
        const b = cpuid[k];
        return b !== undefined && a.function === b.function && a.index === b.index &&
          a.flags === b.flags && a.eax === b.eax && a.ebx === b.ebx && a.ecx === b.ecx &&
          a.edx === b.edx;
      });
  }

  /** vCPU `i` was given `cpuid` (a restore). */
  setCpuid(i: number, cpuid: readonly CpuidEntry[]): void {
    this.#cpuid[i] = cpuid.map((e) => ({ ...e }));
  }

  /**
   * The machine's state (it is paused): from the slots when the vCPU threads
   * saved it in this pause (`waitSlots` waits until they are done), else read
   * here, vCPU after vCPU.
   */
  save(vm: Vm, vcpus: readonly Vcpu[], waitSlots: () => void = () => {}): MachineCpuState {
    // The VM's state first: the vCPU threads may still be writing their slots.
    const vmState = saveVmState(vm);
    if (this.#valid) waitSlots();
    const fromSlots = this.#valid ? this.#slots.collect(this.#epoch, this.#cpuid) : undefined;
    if (fromSlots !== undefined) return { vcpus: fromSlots, vm: vmState };
    const states: VcpuState[] = vcpus.map((v) => saveVcpuState(v, this.#msrs, this.#cpuid[v.id]));
    return { vcpus: states, vm: vmState };
  }
}
