/**
 * vCPU state saved by each vCPU's own thread into shared memory, so that a
 * checkpoint's pause does not wait for the main thread to issue a dozen
 * ioctls per vCPU one after another: every vCPU thread reads its own state
 * as it parks (in parallel, and on the thread that last ran the vCPU, where
 * each ioctl costs about half as much: KVM need not move the vCPU's VMCS to
 * another CPU), and the main thread only decodes the slots.
 *
 * One `SharedArrayBuffer` holds a header (the requested epoch) and one slot
 * per vCPU: `[i32 saved epoch, i32 result (0 or -errno)]`, then regs, sregs,
 * xsave, xcrs, msrs (a `struct kvm_msrs` whose indices are filled in when the
 * slots are made), lapic, events, MP state and debug registers, each 8-byte
 * aligned. CPUID is not saved here: it changes only when the VMM sets it, so
 * the machine keeps what it set (see `vmm/machine.ts`).
 *
 * @example
 * ```ts
 * import { loadShim } from "./ffi.ts";
 * import { Kvm, VcpuState } from "./kvm.ts";
 * import { VcpuStateSlots } from "./kvm_state_slot.ts";
 * await loadShim();
 * using kvm = Kvm.open();
 * using vm = kvm.createVm();
 * vm.createIrqchip();
 * using vcpu = vm.createVcpu(0);
 * const slots = VcpuStateSlots.create(1, vcpu.xsaveSize, kvm.msrIndexList());
 * const epoch = slots.request();
 * slots.saveOwn(vcpu); // on the vCPU's thread, as it parks (prepare() first to sync regs)
 * const state = slots.collect(epoch, [vcpu.getCpuid()]);
 * console.log(state?.[0]?.regs.rip, VcpuState.REGS);
 * ```
 *
 * @module
 */

import {
  KVM_SYNC_X86_ALL,
  KvmError,
  RunOffset,
  type Vcpu,
  VcpuState,
  type VcpuStateKind,
  vcpuStateSize,
} from "./kvm.ts";
import { decodeRegs, decodeSregs, MSR_ENTRY_SIZE, MSRS_HEADER } from "./kvm_codec.ts";
import type { VcpuState as VcpuStateRecord } from "./kvm_state.ts";
import type { CpuidEntry } from "./kvm_types.ts";

/** Bytes before the first slot: i32 requested epoch (and padding). */
const HEADER_BYTES = 64;
/** Bytes of a slot's own header: i32 saved epoch, i32 result. */
const SLOT_HEADER = 8;
/** Int32 index of the requested epoch. */
const REQUESTED = 0;

/** The pieces of a slot, in order, with their state kinds (msrs has none). */
const PIECES = [
  ["regs", VcpuState.REGS],
  ["sregs", VcpuState.SREGS],
  ["xsave", VcpuState.XSAVE],
  ["xcrs", VcpuState.XCRS],
  ["msrs", undefined],
  ["lapic", VcpuState.LAPIC],
  ["events", VcpuState.EVENTS],
  ["mpState", VcpuState.MP_STATE],
  ["debugRegs", VcpuState.DEBUGREGS],
] as const;

type Piece = typeof PIECES[number][0];

/** Pieces KVM_CAP_SYNC_REGS leaves in `kvm_run`, at these offsets. */
const SYNCED: Partial<Record<Piece, number>> = {
  regs: RunOffset.SYNC_REGS,
  sregs: RunOffset.SYNC_SREGS,
  events: RunOffset.SYNC_EVENTS,
};

/** Where one piece lies inside a slot. */
interface Span {
  readonly off: number;
  readonly len: number;
  readonly kind: VcpuStateKind | undefined;
}

const align8 = (n: number): number => (n + 7) & ~7;

/** Where every piece lies in a slot, and the slot's size. */
function layout(
  xsaveSize: number,
  msrs: number,
): { spans: Record<Piece, Span>; slotBytes: number } {
  const spans = {} as Record<Piece, Span>;
  let off = SLOT_HEADER;
  for (const [name, kind] of PIECES) {
    const len = kind === undefined
      ? MSRS_HEADER + msrs * MSR_ENTRY_SIZE
      : kind === VcpuState.XSAVE
      ? xsaveSize
      : vcpuStateSize(kind);
    spans[name] = { off, len, kind };
    off = align8(off + len);
  }
  return { spans, slotBytes: off };
}

/** Per-vCPU state slots in one `SharedArrayBuffer`, shared by the machine and its vCPU threads. */
export class VcpuStateSlots {
  /** The shared buffer (hand it to each vCPU thread with {@link VcpuStateSlots.attach}). */
  readonly buffer: SharedArrayBuffer;
  /** Number of slots (vCPUs). */
  readonly count: number;
  readonly #words: Int32Array;
  readonly #bytes: Uint8Array;
  readonly #spans: Record<Piece, Span>;
  readonly #slotBytes: number;
  readonly #msrCount: number;
  /** This host stores regs, sregs and events in `kvm_run` on request. */
  #sync = false;
  /** (vCPU thread) storing is on for the coming `KVM_RUN`. */
  #synced = false;

  private constructor(buffer: SharedArrayBuffer, count: number, xsaveSize: number, msrs: number) {
    const { spans, slotBytes } = layout(xsaveSize, msrs);
    if (buffer.byteLength < HEADER_BYTES + count * slotBytes) {
      throw new KvmError("vcpu state slots", 22, `buffer of ${buffer.byteLength} bytes is short`);
    }
    this.buffer = buffer;
    this.count = count;
    this.#msrCount = msrs;
    this.#words = new Int32Array(buffer);
    this.#bytes = new Uint8Array(buffer);
    this.#spans = spans;
    this.#slotBytes = slotBytes;
  }

  /** Slots for `count` vCPUs that save the MSRs `msrIndices` (all of them readable). */
  static create(count: number, xsaveSize: number, msrIndices: readonly number[]): VcpuStateSlots {
    const { slotBytes } = layout(xsaveSize, msrIndices.length);
    const buffer = new SharedArrayBuffer(HEADER_BYTES + count * slotBytes);
    const slots = new VcpuStateSlots(buffer, count, xsaveSize, msrIndices.length);
    const dv = new DataView(buffer);
    for (let i = 0; i < count; i++) {
      const at = slots.#at(i) + slots.#spans.msrs.off;
      dv.setUint32(at, msrIndices.length, true);
      msrIndices.forEach((index, k) =>
        dv.setUint32(at + MSRS_HEADER + k * MSR_ENTRY_SIZE, index, true)
      );
    }
    return slots;
  }

  /**
   * The slots of `buffer` as another thread made them (same sizes); `sync`:
   * the host has KVM_CAP_SYNC_REGS with every `KVM_SYNC_X86_*` bit.
   */
  static attach(
    buffer: SharedArrayBuffer,
    count: number,
    xsaveSize: number,
    msrCount: number,
    sync: boolean,
  ): VcpuStateSlots {
    const slots = new VcpuStateSlots(buffer, count, xsaveSize, msrCount);
    slots.#sync = sync;
    return slots;
  }

  /** MSRs each slot holds. */
  get msrCount(): number {
    return this.#msrCount;
  }

  #at(i: number): number {
    return HEADER_BYTES + i * this.#slotBytes;
  }

  /** Asks every vCPU to save its state when it next parks; returns the epoch to collect. */
  request(): number {
    return Atomics.add(this.#words, REQUESTED, 1) + 1;
  }

  /** Whether a save is asked for that `vcpu`'s slot does not hold yet. */
  wanted(id: number): boolean {
    const want = Atomics.load(this.#words, REQUESTED);
    return want !== 0 && Atomics.load(this.#words, this.#at(id) >> 2) !== want;
  }

  /**
   * On `vcpu`'s own thread, about to park: when a save is asked for, turns on
   * KVM_CAP_SYNC_REGS storing and returns true; the caller then enters
   * `KVM_RUN` once with `immediate_exit` set, which completes any pending
   * I/O and leaves regs, sregs and events in `kvm_run` (three ioctls saved).
   */
  prepare(vcpu: Vcpu): boolean {
    if (!this.#sync || this.#synced || !this.wanted(vcpu.id)) return false;
    vcpu.setSyncRegs(KVM_SYNC_X86_ALL);
    this.#synced = true;
    return true;
  }

  /**
   * On `vcpu`'s own thread (out of `KVM_RUN`, pending I/O completed): saves
   * its state into its slot if a save is asked for. Never throws: a failed
   * ioctl is recorded in the slot, and the main thread then reads the state
   * itself (and reports the error).
   */
  saveOwn(vcpu: Vcpu): void {
    const synced = this.#synced;
    if (synced) {
      vcpu.setSyncRegs(0);
      this.#synced = false;
    }
    const id = vcpu.id;
    if (id < 0 || id >= this.count || !this.wanted(id)) return;
    const want = Atomics.load(this.#words, REQUESTED);
    const base = this.#at(id);
    let result = 0;
    try {
      for (const [name] of PIECES) {
        const s = this.#spans[name];
        const view = this.#bytes.subarray(base + s.off, base + s.off + s.len);
        const from = synced ? SYNCED[name] : undefined;
        if (from !== undefined) view.set(vcpu.runBytes.subarray(from, from + s.len));
        else if (s.kind !== undefined) vcpu.readStateInto(s.kind, view);
        else if (vcpu.readMsrsInto(view) !== this.#msrCount) result = -22;
      }
    } catch (err) {
      result = err instanceof KvmError ? -err.errno : -22;
    }
    Atomics.store(this.#words, (base >> 2) + 1, result);
    Atomics.store(this.#words, base >> 2, want);
  }

  /**
   * Every vCPU's state saved for `epoch`, with the CPUID the machine set
   * (`cpuid[i]` for vCPU i), or undefined when a slot is missing or failed.
   */
  collect(epoch: number, cpuid: readonly (readonly CpuidEntry[])[]): VcpuStateRecord[] | undefined {
    const out: VcpuStateRecord[] = [];
    for (let i = 0; i < this.count; i++) {
      const base = this.#at(i);
      if (Atomics.load(this.#words, base >> 2) !== epoch) return undefined;
      if (Atomics.load(this.#words, (base >> 2) + 1) !== 0) return undefined;
      const ids = cpuid[i];
      if (ids === undefined) return undefined;
      const piece = (name: Piece): Uint8Array<ArrayBuffer> => {
        const s = this.#spans[name];
        return this.#bytes.slice(base + s.off, base + s.off + s.len);
      };
      out.push({
        id: i,
        cpuid: ids as CpuidEntry[], // never changed: shared, not copied, inside the pause
        regs: decodeRegs(piece("regs")),
        sregs: decodeSregs(piece("sregs")),
        xsave: piece("xsave"),
        xcrs: piece("xcrs"),
        msrs: piece("msrs"),
        lapic: piece("lapic"),
        events: piece("events"),
        mpState: piece("mpState"),
        debugRegs: piece("debugRegs"),
      });
    }
    return out;
  }
}
