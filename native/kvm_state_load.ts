/**
 * vCPU state loaded by each vCPU's own thread from shared memory (a
 * restore): the main thread writes every vCPU's kernel structs into its
 * slot and rings the vCPUs' gate; each vCPU thread then issues its own
 * `KVM_SET_*` ioctls, in parallel with the others and with the main
 * thread's work, and on the thread that will run the vCPU (where each
 * ioctl costs about half what it costs from another thread on this nested
 * host). The reverse of `kvm_state_slot.ts`.
 *
 * One `SharedArrayBuffer` holds a header (the requested epoch) and one slot
 * per vCPU: `[i32 loaded epoch, i32 result (0 or -errno), i32 failed piece,
 * i32 MSRs set, i32 skip CPUID]`, then CPUID (room for {@link MAX_CPUID_ENTRIES}), regs,
 * sregs, xsave, xcrs, msrs (room for the count given at creation), lapic,
 * events, MP state and debug registers, each 8-byte aligned. The order of
 * the ioctls is `restoreVcpuState`'s (`kvm_state.ts`): CPUID first, so that
 * the MSRs and XSAVE state it enables are accepted; skipped when the vCPU
 * has that very CPUID already (the machine set it at creation).
 *
 * @example
 * ```ts
 * import { loadShim } from "./ffi.ts";
 * import { Kvm } from "./kvm.ts";
 * import { saveVcpuState } from "./kvm_state.ts";
 * import { VcpuLoadSlots } from "./kvm_state_load.ts";
 * await loadShim();
 * using kvm = Kvm.open();
 * using vm = kvm.createVm();
 * vm.createIrqchip();
 * using vcpu = vm.createVcpu(0);
 * vcpu.setCpuid(kvm.supportedCpuid());
 * const state = saveVcpuState(vcpu, kvm.msrIndexList());
 * const slots = VcpuLoadSlots.create(1, vcpu.xsaveSize, kvm.msrIndexList().length);
 * if (slots.store(0, state)) {
 *   const epoch = slots.request();
 *   slots.loadOwn(vcpu); // on the vCPU's own thread
 *   console.log(slots.result(0, epoch)); // { errno: 0, ... }
 * }
 * ```
 *
 * @module
 */

import { KvmError, type Vcpu, VcpuState, type VcpuStateKind, vcpuStateSize } from "./kvm.ts";
import {
  CPUID2_HEADER,
  CPUID_ENTRY_SIZE,
  encodeCpuid,
  encodeRegs,
  encodeSregs,
  MSR_ENTRY_SIZE,
  MSRS_HEADER,
} from "./kvm_codec.ts";
import type { VcpuState as VcpuStateRecord } from "./kvm_state.ts";

/** Most CPUID entries a slot holds (KVM's `KVM_MAX_CPUID_ENTRIES`). */
export const MAX_CPUID_ENTRIES = 256;
/** Bytes before the first slot: i32 requested epoch (and padding). */
const HEADER_BYTES = 64;
/** Bytes of a slot's own header: loaded epoch, result, failed piece, MSRs set, skip CPUID. */
const SLOT_HEADER = 24;
/** Int32 index of the requested epoch. */
const REQUESTED = 0;

/** The pieces of a slot, in the order they are set. */
const PIECES = [
  "cpuid",
  "sregs",
  "regs",
  "xsave",
  "xcrs",
  "msrs",
  "lapic",
  "events",
  "mpState",
  "debugRegs",
] as const;

/** A piece of vCPU state, named as in `VcpuState` of `kvm_state.ts`. */
export type LoadPiece = typeof PIECES[number];

const KINDS: Partial<Record<LoadPiece, VcpuStateKind>> = {
  sregs: VcpuState.SREGS,
  regs: VcpuState.REGS,
  xsave: VcpuState.XSAVE,
  xcrs: VcpuState.XCRS,
  lapic: VcpuState.LAPIC,
  events: VcpuState.EVENTS,
  mpState: VcpuState.MP_STATE,
  debugRegs: VcpuState.DEBUGREGS,
};

interface Span {
  readonly off: number;
  readonly len: number;
}

const align8 = (n: number): number => (n + 7) & ~7;

function layout(
  xsaveSize: number,
  msrs: number,
): { spans: Record<LoadPiece, Span>; bytes: number } {
  const spans = {} as Record<LoadPiece, Span>;
  let off = SLOT_HEADER;
  for (const name of PIECES) {
    const kind = KINDS[name];
    const len = name === "cpuid"
      ? CPUID2_HEADER + MAX_CPUID_ENTRIES * CPUID_ENTRY_SIZE
      : name === "msrs"
      ? MSRS_HEADER + msrs * MSR_ENTRY_SIZE
      : kind === VcpuState.XSAVE
      ? xsaveSize
      : vcpuStateSize(kind ?? VcpuState.REGS);
    spans[name] = { off, len };
    off = align8(off + len);
  }
  return { spans, bytes: off };
}

/** The outcome of one vCPU's load. */
export interface LoadResult {
  /** 0, or the errno of the ioctl that failed. */
  readonly errno: number;
  /** The piece whose ioctl failed (undefined when none did). */
  readonly piece: LoadPiece | undefined;
  /** MSRs KVM accepted (all of them unless `piece` is `msrs`). */
  readonly msrsSet: number;
}

/** Per-vCPU load slots in one `SharedArrayBuffer`, shared by the machine and its vCPU threads. */
export class VcpuLoadSlots {
  /** The shared buffer (hand it to each vCPU thread with {@link VcpuLoadSlots.attach}). */
  readonly buffer: SharedArrayBuffer;
  /** Number of slots (vCPUs). */
  readonly count: number;
  /** MSRs a slot has room for. */
  readonly msrCapacity: number;
  readonly #words: Int32Array;
  readonly #bytes: Uint8Array;
  readonly #dv: DataView;
  readonly #spans: Record<LoadPiece, Span>;
  readonly #slotBytes: number;

  private constructor(buffer: SharedArrayBuffer, count: number, xsaveSize: number, msrs: number) {
    const { spans, bytes } = layout(xsaveSize, msrs);
    if (buffer.byteLength < HEADER_BYTES + count * bytes) {
      throw new KvmError("vcpu load slots", 22, `buffer of ${buffer.byteLength} bytes is short`);
    }
    this.buffer = buffer;
    this.count = count;
    this.msrCapacity = msrs;
    this.#words = new Int32Array(buffer);
    this.#bytes = new Uint8Array(buffer);
    this.#dv = new DataView(buffer);
    this.#spans = spans;
    this.#slotBytes = bytes;
  }

  /** Slots for `count` vCPUs of XSAVE size `xsaveSize`, with room for `msrs` MSRs each. */
  static create(count: number, xsaveSize: number, msrs: number): VcpuLoadSlots {
    const { bytes } = layout(xsaveSize, msrs);
    return new VcpuLoadSlots(
      new SharedArrayBuffer(HEADER_BYTES + count * bytes),
      count,
      xsaveSize,
      msrs,
    );
  }

  /** The slots of `buffer` as another thread made them (same sizes). */
  static attach(
    buffer: SharedArrayBuffer,
    count: number,
    xsaveSize: number,
    msrs: number,
  ): VcpuLoadSlots {
    return new VcpuLoadSlots(buffer, count, xsaveSize, msrs);
  }

  #at(i: number): number {
    return HEADER_BYTES + i * this.#slotBytes;
  }

  /**
   * (Main thread) writes `state` into slot `i`; false when it does not fit
   * (another XSAVE size, more MSRs or CPUID entries than the slot has room
   * for, a fixed-size struct of another size), and the caller sets the
   * state itself. `cpuidSet`: the vCPU has `state.cpuid` already (its
   * `KVM_SET_CPUID2` is skipped).
   */
  store(i: number, state: VcpuStateRecord, cpuidSet = false): boolean {
    if (i < 0 || i >= this.count || state.cpuid.length > MAX_CPUID_ENTRIES) return false;
    const base = this.#at(i);
    const msrCount = state.msrs.length >= MSRS_HEADER
      ? Math.min(
        new DataView(state.msrs.buffer, state.msrs.byteOffset, MSRS_HEADER).getUint32(0, true),
        Math.floor((state.msrs.length - MSRS_HEADER) / MSR_ENTRY_SIZE),
      )
      : -1;
    if (msrCount < 0 || msrCount > this.msrCapacity) return false;
    const blobs: Record<LoadPiece, Uint8Array> = {
      cpuid: encodeCpuid(state.cpuid),
      regs: encodeRegs(state.regs),
      sregs: encodeSregs(state.sregs),
      xsave: state.xsave,
      xcrs: state.xcrs,
      msrs: state.msrs.subarray(0, MSRS_HEADER + msrCount * MSR_ENTRY_SIZE),
      lapic: state.lapic,
      events: state.events,
      mpState: state.mpState,
      debugRegs: state.debugRegs,
    };
    for (const name of PIECES) {
      const b = blobs[name];
      const s = this.#spans[name];
      const fixed = name !== "cpuid" && name !== "msrs";
      if (fixed ? b.length !== s.len : b.length > s.len) return false;
    }
    for (const name of PIECES) this.#bytes.set(blobs[name], base + this.#spans[name].off);
    // The count the shim bounds-checks against the slot: what was copied.
    this.#dv.setUint32(base + this.#spans.msrs.off, msrCount, true);
    Atomics.store(this.#words, (base >> 2) + 4, cpuidSet ? 1 : 0);
    return true;
  }

  /** (Main thread) asks every vCPU to load its slot; returns the epoch to wait for. */
  request(): number {
    return Atomics.add(this.#words, REQUESTED, 1) + 1;
  }

  /** (vCPU thread) whether a load is asked for that slot `id` has not done yet. */
  wanted(id: number): boolean {
    if (id < 0 || id >= this.count) return false;
    const want = Atomics.load(this.#words, REQUESTED);
    return want !== 0 && Atomics.load(this.#words, this.#at(id) >> 2) !== want;
  }

  /**
   * (vCPU thread, vCPU not running) sets `vcpu`'s state from its slot if a
   * load is asked for. Never throws: the result is recorded in the slot and
   * the waiting main thread reports it.
   */
  loadOwn(vcpu: Vcpu): void {
    const id = vcpu.id;
    if (!this.wanted(id)) return;
    const want = Atomics.load(this.#words, REQUESTED);
    const base = this.#at(id);
    const w = base >> 2;
    let errno = 0;
    let failed = -1;
    let msrsSet = 0;
    const skipCpuid = Atomics.load(this.#words, w + 4) === 1;
    PIECES.every((name, k) => {
      const s = this.#spans[name];
      const view = this.#bytes.subarray(base + s.off, base + s.off + s.len);
      try {
        if (name === "cpuid") {
          if (!skipCpuid) vcpu.writeCpuidFrom(view);
        } else if (name === "msrs") {
          msrsSet = vcpu.writeMsrsFrom(view);
          if (msrsSet < this.#dv.getUint32(base + s.off, true)) errno = 22;
        } else vcpu.writeStateFrom(KINDS[name] ?? VcpuState.REGS, view);
      } catch (err) {
        errno = err instanceof KvmError ? err.errno : 22;
      }
      if (errno !== 0) failed = k;
      return errno === 0;
    });
    Atomics.store(this.#words, w + 1, -errno);
    Atomics.store(this.#words, w + 2, failed);
    Atomics.store(this.#words, w + 3, msrsSet);
    Atomics.store(this.#words, w, want);
    Atomics.notify(this.#words, w);
  }

  /** (Main thread) slot `i`'s result for `epoch`, or undefined while it is not loaded yet. */
  result(i: number, epoch: number): LoadResult | undefined {
    const w = this.#at(i) >> 2;
    if (Atomics.load(this.#words, w) !== epoch) return undefined;
    const k = Atomics.load(this.#words, w + 2);
    const e = Atomics.load(this.#words, w + 1);
    return {
      errno: e === 0 ? 0 : -e,
      piece: k >= 0 ? PIECES[k] : undefined,
      msrsSet: Atomics.load(this.#words, w + 3),
    };
  }

  /**
   * (Main thread) waits synchronously, at most until `deadline`
   * (`performance.now()` ms), for slot `i` to be loaded for `epoch`.
   */
  wait(i: number, epoch: number, deadline: number): LoadResult | undefined {
    const w = this.#at(i) >> 2;
    for (;;) {
      const r = this.result(i, epoch);
      if (r !== undefined) return r;
      const left = deadline - performance.now();
      if (left <= 0) return undefined;
      const seen = Atomics.load(this.#words, w);
      if (seen !== epoch) Atomics.wait(this.#words, w, seen, Math.min(left, 2));
    }
  }
}
