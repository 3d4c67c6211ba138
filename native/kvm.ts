/**
 * Typed KVM API over the shim: {@link Kvm} (the `/dev/kvm` system fd),
 * {@link Vm} (memory slots, irqchip, PIT, clock, IRQ lines) and {@link Vcpu}
 * (run, registers and every piece of vCPU state a checkpoint saves).
 *
 * State that vmkit does not interpret (FPU, LAPIC, XSAVE, XCRs, vCPU events,
 * MP state, debug registers, irqchip, PIT, clock, MSRs) is exchanged as the
 * kernel struct's bytes, which round-trip: get → set → get gives the same
 * bytes. Registers use the objects of `kvm_types.ts`.
 *
 * @module
 */

import { cString, shim, toBigInt } from "./ffi.ts";
import type { Shim } from "./ffi.ts";
import {
  CPUID2_HEADER,
  CPUID_ENTRY_SIZE,
  decodeCpuid,
  decodeMsrs,
  decodeRegs,
  decodeSregs,
  encodeCpuid,
  encodeIrqRouting,
  encodeMsrs,
  encodeRegs,
  encodeSregs,
  MSR_ENTRY_SIZE,
  MSRS_HEADER,
  REGS_SIZE,
  SREGS_SIZE,
} from "./kvm_codec.ts";
import type { CpuidEntry, IrqRoute, MsrEntry, Regs, Sregs } from "./kvm_types.ts";

/** `errno` values the bindings test for. */
export const EINTR = 4;
/** `EAGAIN`. */
export const EAGAIN = 11;

/** `KVM_EXIT_*` reasons found in `kvm_run.exit_reason`. */
export const KvmExit = {
  UNKNOWN: 0,
  EXCEPTION: 1,
  IO: 2,
  HYPERCALL: 3,
  DEBUG: 4,
  HLT: 5,
  MMIO: 6,
  IRQ_WINDOW_OPEN: 7,
  SHUTDOWN: 8,
  FAIL_ENTRY: 9,
  INTR: 10,
  SET_TPR: 11,
  TPR_ACCESS: 12,
  NMI: 16,
  INTERNAL_ERROR: 17,
  SYSTEM_EVENT: 24,
} as const;

/** `KVM_MEM_LOG_DIRTY_PAGES`: track writes to a slot for {@link Vm.getDirtyLog}. */
export const KVM_MEM_LOG_DIRTY_PAGES = 1;
/** `KVM_CAP_XSAVE2`. */
export const KVM_CAP_XSAVE2 = 208;
/** `KVM_CAP_IMMEDIATE_EXIT`. */
export const KVM_CAP_IMMEDIATE_EXIT = 136;
/** `KVM_PIT_SPEAKER_DUMMY`: the PIT's speaker port is emulated as a dummy. */
export const KVM_PIT_SPEAKER_DUMMY = 1;
/** `KVM_MP_STATE_RUNNABLE`, as the first u32 of the MP-state blob. */
export const KVM_MP_STATE_RUNNABLE = 0;

/** Irqchip ids for {@link Vm.getIrqchip}. */
export const IrqChip = { PIC_MASTER: 0, PIC_SLAVE: 1, IOAPIC: 2 } as const;
/** One of {@link IrqChip}. */
export type IrqChipId = typeof IrqChip[keyof typeof IrqChip];

/** Opaque per-vCPU state kinds (shared numbering with `vmkit_shim.c`). */
export const VcpuState = {
  REGS: 0,
  SREGS: 1,
  FPU: 2,
  LAPIC: 3,
  XSAVE: 4,
  XCRS: 5,
  EVENTS: 6,
  MP_STATE: 7,
  DEBUGREGS: 8,
} as const;
/** One of {@link VcpuState}. */
export type VcpuStateKind = typeof VcpuState[keyof typeof VcpuState];

/** Bytes of state `kind` (the kernel struct; for XSAVE see {@link Vcpu.xsaveSize}). */
export function vcpuStateSize(kind: VcpuStateKind): number {
  return check("vcpu state size", sym().vk_vcpu_state_size(kind));
}

/** VM-wide state kinds (shared numbering with `vmkit_shim.c`). */
const VmState = { IRQCHIP: 0, PIT2: 1, CLOCK: 2 } as const;

/** Offsets inside `struct kvm_run` (x86-64; asserted in `vmkit_shim.c`). */
export const RunOffset = {
  IMMEDIATE_EXIT: 1,
  EXIT_REASON: 8,
  IO_DIRECTION: 32,
  IO_SIZE: 33,
  IO_PORT: 34,
  IO_COUNT: 36,
  IO_DATA_OFFSET: 40,
  MMIO_PHYS_ADDR: 32,
  MMIO_DATA: 40,
  MMIO_LEN: 48,
  MMIO_IS_WRITE: 52,
  FAIL_ENTRY_REASON: 32,
  FAIL_ENTRY_CPU: 40,
  INTERNAL_SUBERROR: 32,
  INTERNAL_NDATA: 36,
  INTERNAL_DATA: 40,
  SYSTEM_EVENT_TYPE: 32,
  /** `kvm_valid_regs`: which of `s.regs` KVM stores on every return from KVM_RUN. */
  VALID_REGS: 288,
  /** `s.regs.regs` (`struct kvm_regs`), `.sregs` and `.events` (KVM_CAP_SYNC_REGS). */
  SYNC_REGS: 304,
  SYNC_SREGS: 448,
  SYNC_EVENTS: 760,
} as const;

/** `KVM_CAP_SYNC_REGS`: KVM_CHECK_EXTENSION gives the `KVM_SYNC_X86_*` bits it stores. */
export const KVM_CAP_SYNC_REGS = 74;
/** `KVM_SYNC_X86_REGS | KVM_SYNC_X86_SREGS | KVM_SYNC_X86_EVENTS`. */
export const KVM_SYNC_X86_ALL = 7;

/** A failed KVM call: names the call and the errno text. */
export class KvmError extends Error {
  /** The positive errno. */
  readonly errno: number;
  /** The shim call that failed, e.g. `KVM_SET_SREGS`. */
  readonly call: string;
  /** Creates the error for `call` failing with `-errno`. */
  constructor(call: string, errno: number, detail = "") {
    super(
      `kvm: ${call} failed: ${errnoText(errno)} (errno ${errno})${detail ? `: ${detail}` : ""}`,
    );
    this.name = "KvmError";
    this.errno = errno;
    this.call = call;
  }
}

/** The C library's text for a positive errno. */
export function errnoText(errno: number): string {
  const buf = new Uint8Array(128);
  const n = shim().symbols.vk_strerror(errno, buf, buf.length);
  return n < 0 ? `errno ${errno}` : new TextDecoder().decode(buf.subarray(0, n));
}

/** Throws a {@link KvmError} for a negative shim result; returns it otherwise. */
function check(call: string, r: number, detail = ""): number {
  if (r < 0) throw new KvmError(call, -r, detail);
  return r;
}

function checkBig(call: string, r: number | bigint, detail = ""): bigint {
  const v = toBigInt(r);
  if (v < 0n) throw new KvmError(call, Number(-v), detail);
  return v;
}

function sym(): Shim {
  return shim().symbols;
}

/** The `/dev/kvm` system handle. Open the shim first (`loadShim()` from `ffi.ts`). */
export class Kvm implements Disposable {
  /** The system fd. */
  readonly fd: number;
  #closed = false;

  private constructor(fd: number) {
    this.fd = fd;
  }

  /**
   * Opens `/dev/kvm` and checks the API version (12) and the capabilities
   * vmkit needs.
   *
   * @example
   * ```ts
   * import { loadShim } from "./ffi.ts";
   * import { Kvm } from "./kvm.ts";
   * await loadShim();
   * using kvm = Kvm.open();
   * using vm = kvm.createVm();
   * ```
   */
  static open(path = "/dev/kvm"): Kvm {
    const fd = check(
      `open(${path})`,
      sym().vk_open(cString(path)),
      "is KVM enabled and are you root?",
    );
    const kvm = new Kvm(fd);
    const version = check("KVM_GET_API_VERSION", sym().vk_get_api_version(fd));
    if (version !== 12) {
      kvm.close();
      throw new KvmError("KVM_GET_API_VERSION", 22, `API version ${version}, vmkit needs 12`);
    }
    if (kvm.checkExtension(KVM_CAP_IMMEDIATE_EXIT) <= 0) {
      kvm.close();
      throw new KvmError("KVM_CHECK_EXTENSION", 95, "KVM_CAP_IMMEDIATE_EXIT is required");
    }
    return kvm;
  }

  /** `KVM_CHECK_EXTENSION` on the system fd. */
  checkExtension(cap: number): number {
    return check("KVM_CHECK_EXTENSION", sym().vk_check_extension(this.fd, cap));
  }

  /** `KVM_GET_VCPU_MMAP_SIZE`: bytes of a vCPU's `kvm_run` mapping. */
  vcpuMmapSize(): number {
    return check("KVM_GET_VCPU_MMAP_SIZE", sym().vk_get_vcpu_mmap_size(this.fd));
  }

  /** `KVM_GET_SUPPORTED_CPUID`: every leaf KVM can expose to a guest. */
  supportedCpuid(): CpuidEntry[] {
    const max = 512;
    const buf = new Uint8Array(CPUID2_HEADER + max * CPUID_ENTRY_SIZE);
    const n = check(
      "KVM_GET_SUPPORTED_CPUID",
      sym().vk_get_supported_cpuid(this.fd, buf, buf.length),
    );
    return decodeCpuid(buf, n);
  }

  /** `KVM_GET_MSR_INDEX_LIST`: the MSRs KVM can save and restore. */
  msrIndexList(): number[] {
    const max = 4096;
    const buf = new Uint8Array(4 + max * 4);
    const n = check(
      "KVM_GET_MSR_INDEX_LIST",
      sym().vk_get_msr_index_list(this.fd, buf, buf.length),
    );
    const dv = new DataView(buf.buffer);
    return Array.from({ length: n }, (_, i) => dv.getUint32(4 + i * 4, true));
  }

  /** `KVM_CREATE_VM`. */
  createVm(): Vm {
    return new Vm(this, check("KVM_CREATE_VM", sym().vk_create_vm(this.fd)));
  }

  /** Closes the system fd (VMs keep working). */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    check("close(/dev/kvm)", sym().vk_close(this.fd));
  }

  /** Same as {@link Kvm.close}. */
  [Symbol.dispose](): void {
    this.close();
  }
}

/** A `KVM_SET_USER_MEMORY_REGION` request. */
export interface UserMemoryRegion {
  /** Slot number. */
  slot: number;
  /** `KVM_MEM_*` flags (e.g. {@link KVM_MEM_LOG_DIRTY_PAGES}). */
  flags: number;
  /** Guest-physical start. */
  guestAddr: number;
  /** Bytes (0 deletes the slot). */
  size: number;
  /** Host virtual address of the backing mapping. */
  hostAddr: bigint;
}

/** A virtual machine (`KVM_CREATE_VM` fd). */
export class Vm implements Disposable {
  /** The owning system handle. */
  readonly kvm: Kvm;
  /** The VM fd (workers receive this number to raise IRQ lines). */
  readonly fd: number;
  #closed = false;
  #xsaveSize: number | undefined;
  /** Registered memory slots: slot → bytes (sizes the dirty bitmap). */
  readonly #slots = new Map<number, number>();

  /** Wraps a VM fd; use {@link Kvm.createVm}. */
  constructor(kvm: Kvm, fd: number) {
    this.kvm = kvm;
    this.fd = fd;
  }

  /** `KVM_CHECK_EXTENSION` on the VM fd. */
  checkExtension(cap: number): number {
    return check("KVM_CHECK_EXTENSION(vm)", sym().vk_check_extension(this.fd, cap));
  }

  /** `KVM_SET_TSS_ADDR` (three pages below 4 GiB that no RAM or MMIO uses). */
  setTssAddr(addr: number): void {
    check("KVM_SET_TSS_ADDR", sym().vk_set_tss_addr(this.fd, BigInt(addr)));
  }

  /** `KVM_SET_IDENTITY_MAP_ADDR` (one page; call before creating vCPUs). */
  setIdentityMapAddr(addr: number): void {
    check("KVM_SET_IDENTITY_MAP_ADDR", sym().vk_set_identity_map_addr(this.fd, BigInt(addr)));
  }

  /** `KVM_CREATE_IRQCHIP`: in-kernel PIC pair, IOAPIC and per-vCPU LAPICs. */
  createIrqchip(): void {
    check("KVM_CREATE_IRQCHIP", sym().vk_create_irqchip(this.fd));
  }

  /** `KVM_CREATE_PIT2` with `flags` (e.g. {@link KVM_PIT_SPEAKER_DUMMY}). */
  createPit2(flags: number = KVM_PIT_SPEAKER_DUMMY): void {
    check("KVM_CREATE_PIT2", sym().vk_create_pit2(this.fd, flags));
  }

  /** `KVM_SET_USER_MEMORY_REGION`. */
  setUserMemoryRegion(r: UserMemoryRegion): void {
    check(
      "KVM_SET_USER_MEMORY_REGION",
      sym().vk_set_user_memory_region(
        this.fd,
        r.slot,
        r.flags,
        BigInt(r.guestAddr),
        BigInt(r.size),
        r.hostAddr,
      ),
      `slot ${r.slot} at 0x${r.guestAddr.toString(16)} size 0x${r.size.toString(16)}`,
    );
    if (r.size === 0) this.#slots.delete(r.slot);
    else this.#slots.set(r.slot, r.size);
  }

  /**
   * `KVM_GET_DIRTY_LOG` for a slot registered through
   * {@link Vm.setUserMemoryRegion}: one bit per 4 KiB page, LSB first; the
   * kernel clears its log. The bitmap is sized from the registered slot, never
   * from the caller, because KVM writes one bit for every page of the slot.
   */
  getDirtyLog(slot: number): Uint8Array<ArrayBuffer> {
    const size = this.#slots.get(slot);
    if (size === undefined) {
      throw new KvmError("KVM_GET_DIRTY_LOG", 22, `slot ${slot} is not registered on this VM`);
    }
    const pages = Math.ceil(size / 4096);
    const bitmap = new Uint8Array(Math.ceil(pages / 64) * 8);
    check(
      "KVM_GET_DIRTY_LOG",
      sym().vk_get_dirty_log(this.fd, slot, bitmap, BigInt(bitmap.length), BigInt(pages)),
      `slot ${slot}`,
    );
    return bitmap;
  }

  /** `KVM_IRQ_LINE`: sets the level of GSI `irq`. */
  irqLine(irq: number, level: boolean): void {
    check("KVM_IRQ_LINE", sym().vk_irq_line(this.fd, irq, level ? 1 : 0), `gsi ${irq}`);
  }

  /**
   * `KVM_SET_GSI_ROUTING`: replaces the whole GSI routing table (KVM's default
   * routes GSI n to PIC pin n for n < 16 and to IOAPIC pin n for n < 24) with
   * `routes`; a GSI may appear once per chip.
   */
  setGsiRouting(routes: readonly IrqRoute[]): void {
    const buf = encodeIrqRouting(routes);
    check(
      "KVM_SET_GSI_ROUTING",
      sym().vk_set_gsi_routing(this.fd, buf, buf.length),
      `${routes.length} routes`,
    );
  }

  /** `KVM_CREATE_VCPU` with APIC id `id`, mapping its `kvm_run`. */
  createVcpu(id: number): Vcpu {
    const fd = check("KVM_CREATE_VCPU", sym().vk_create_vcpu(this.fd, id), `vcpu ${id}`);
    const size = this.kvm.vcpuMmapSize();
    const addr = checkBig("mmap(kvm_run)", sym().vk_mmap_vcpu(fd, BigInt(size)));
    return new Vcpu(fd, id, addr, size, this.xsaveSize(), true);
  }

  /** Bytes of an XSAVE blob: `KVM_CAP_XSAVE2`'s size when available, else 4096. */
  xsaveSize(): number {
    if (this.#xsaveSize === undefined) {
      const r = sym().vk_check_extension(this.fd, KVM_CAP_XSAVE2);
      this.#xsaveSize = r >= 4096 ? r : 4096;
    }
    return this.#xsaveSize;
  }

  #get(kind: number, call: string, chip?: number): Uint8Array<ArrayBuffer> {
    const buf = new Uint8Array(check(call, sym().vk_vm_state_size(kind)));
    if (chip !== undefined) new DataView(buf.buffer).setUint32(0, chip, true);
    check(call, sym().vk_vm_get(this.fd, kind, buf, buf.length));
    return buf;
  }

  #set(kind: number, call: string, bytes: Uint8Array): void {
    const need = check(call, sym().vk_vm_state_size(kind));
    if (bytes.length !== need) {
      throw new KvmError(call, 22, `state is ${bytes.length} bytes, expected ${need}`);
    }
    check(call, sym().vk_vm_set(this.fd, kind, copy(bytes), need));
  }

  /** `KVM_GET_IRQCHIP`: `struct kvm_irqchip` bytes (chip id first). */
  getIrqchip(chip: IrqChipId): Uint8Array<ArrayBuffer> {
    return this.#get(VmState.IRQCHIP, "KVM_GET_IRQCHIP", chip);
  }

  /** `KVM_SET_IRQCHIP` from bytes of {@link Vm.getIrqchip} (the chip id travels inside). */
  setIrqchip(bytes: Uint8Array): void {
    this.#set(VmState.IRQCHIP, "KVM_SET_IRQCHIP", bytes);
  }

  /** `KVM_GET_PIT2`: `struct kvm_pit_state2` bytes. */
  getPit2(): Uint8Array<ArrayBuffer> {
    return this.#get(VmState.PIT2, "KVM_GET_PIT2");
  }

  /** `KVM_SET_PIT2`. */
  setPit2(bytes: Uint8Array): void {
    this.#set(VmState.PIT2, "KVM_SET_PIT2", bytes);
  }

  /** `KVM_GET_CLOCK`: `struct kvm_clock_data` bytes (kvmclock ns at offset 0). */
  getClock(): Uint8Array<ArrayBuffer> {
    return this.#get(VmState.CLOCK, "KVM_GET_CLOCK");
  }

  /** `KVM_SET_CLOCK` (flags the kernel only reports, like TSC_STABLE, are dropped). */
  setClock(bytes: Uint8Array): void {
    this.#set(VmState.CLOCK, "KVM_SET_CLOCK", bytes);
  }

  /** Closes the VM fd (the VM dies once its vCPUs are closed too). */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    check("close(vm)", sym().vk_close(this.fd));
  }

  /** Same as {@link Vm.close}. */
  [Symbol.dispose](): void {
    this.close();
  }
}

function copy(bytes: Uint8Array): Uint8Array<ArrayBuffer> {
  const out = new Uint8Array(bytes.length);
  out.set(bytes);
  return out;
}

/**
 * A vCPU: its fd and `kvm_run` page. Exit fields are read from the page
 * through one DataView made at construction, so {@link Vcpu.run} and the
 * exit getters allocate nothing.
 */
export class Vcpu implements Disposable {
  /** The vCPU fd. */
  readonly fd: number;
  /** vCPU (and initial APIC) id. */
  readonly id: number;
  /** Host address of the `kvm_run` mapping (hand it to a Worker with the fd). */
  readonly runAddr: bigint;
  /** Bytes of the `kvm_run` mapping. */
  readonly runSize: number;
  /** Bytes of an XSAVE blob for this VM. */
  readonly xsaveSize: number;
  /** The `kvm_run` page as bytes (I/O data lives at {@link Vcpu.ioDataOffset}). */
  readonly runBytes: Uint8Array;
  readonly #run: DataView;
  readonly #owner: boolean;
  #closed = false;

  /**
   * Wraps an fd and its mapped `kvm_run`. `owner` says whether {@link close}
   * unmaps and closes them (a Worker's view of a main-thread vCPU does not).
   */
  constructor(
    fd: number,
    id: number,
    runAddr: bigint,
    runSize: number,
    xsaveSize: number,
    owner: boolean,
  ) {
    this.fd = fd;
    this.id = id;
    this.runAddr = runAddr;
    this.runSize = runSize;
    this.xsaveSize = xsaveSize;
    this.#owner = owner;
    const ptr = Deno.UnsafePointer.create(runAddr);
    if (ptr === null) throw new KvmError("mmap(kvm_run)", 14, "null kvm_run address");
    const ab = Deno.UnsafePointerView.getArrayBuffer(ptr, runSize);
    this.#run = new DataView(ab);
    this.runBytes = new Uint8Array(ab);
  }

  /**
   * `KVM_RUN` once. Returns the exit reason ({@link KvmExit}); a kick or a
   * signal gives {@link KvmExit.INTR}. Throws {@link KvmError} for other errors.
   */
  run(): number {
    const r = sym().vk_run(this.fd);
    if (r === 0) return this.#run.getUint32(RunOffset.EXIT_REASON, true);
    if (r === -EINTR || r === -EAGAIN) return KvmExit.INTR;
    throw new KvmError("KVM_RUN", -r, `vcpu ${this.id}`);
  }

  /** `kvm_run.exit_reason` of the last exit. */
  get exitReason(): number {
    return this.#run.getUint32(RunOffset.EXIT_REASON, true);
  }

  /** Sets or clears `kvm_run.immediate_exit` (atomically, as the kick does). */
  setImmediateExit(on: boolean): void {
    Atomics.store(this.runBytes, RunOffset.IMMEDIATE_EXIT, on ? 1 : 0);
  }

  /**
   * Sets `kvm_valid_regs`: with `KVM_SYNC_X86_*` bits set, every return from
   * `KVM_RUN` leaves regs, sregs and events in `kvm_run` (no ioctl to read them).
   */
  setSyncRegs(mask: number): void {
    this.#run.setUint32(RunOffset.VALID_REGS, mask >>> 0, true);
    this.#run.setUint32(RunOffset.VALID_REGS + 4, 0, true);
  }

  /** I/O exit: 0 = in, 1 = out. */
  get ioDirection(): number {
    return this.#run.getUint8(RunOffset.IO_DIRECTION);
  }
  /** I/O exit: access size in bytes (1, 2, 4). */
  get ioSize(): number {
    return this.#run.getUint8(RunOffset.IO_SIZE);
  }
  /** I/O exit: port. */
  get ioPort(): number {
    return this.#run.getUint16(RunOffset.IO_PORT, true);
  }
  /** I/O exit: repeat count (string I/O). */
  get ioCount(): number {
    return this.#run.getUint32(RunOffset.IO_COUNT, true);
  }
  /**
   * I/O exit: offset of the data in the `kvm_run` page, or -1 when it (with
   * `count × size` bytes) would not lie inside the mapping.
   */
  get ioDataOffset(): number {
    const off = this.#run.getUint32(RunOffset.IO_DATA_OFFSET, true);
    const high = this.#run.getUint32(RunOffset.IO_DATA_OFFSET + 4, true);
    const len = this.ioSize * this.ioCount;
    return high !== 0 || off + len > this.runSize ? -1 : off;
  }
  /** MMIO exit: guest-physical address. */
  get mmioPhysAddr(): number {
    return this.#run.getUint32(RunOffset.MMIO_PHYS_ADDR, true) +
      this.#run.getUint32(RunOffset.MMIO_PHYS_ADDR + 4, true) * 0x1_0000_0000;
  }
  /** MMIO exit: length (1..8; larger values are hostile and must be rejected). */
  get mmioLen(): number {
    return this.#run.getUint32(RunOffset.MMIO_LEN, true);
  }
  /** MMIO exit: whether the guest writes. */
  get mmioIsWrite(): boolean {
    return this.#run.getUint8(RunOffset.MMIO_IS_WRITE) !== 0;
  }
  /** MMIO exit: the data little-endian (first `len` ≤ 4 bytes, as a uint32). */
  get mmioData32(): number {
    return this.#run.getUint32(RunOffset.MMIO_DATA, true);
  }
  /** MMIO read completion: stores `value` (little-endian) as the guest's data. */
  set mmioData32(value: number) {
    this.#run.setUint32(RunOffset.MMIO_DATA, value >>> 0, true);
  }
  /** Full 8 data bytes of an MMIO exit as a bigint. */
  get mmioData64(): bigint {
    return this.#run.getBigUint64(RunOffset.MMIO_DATA, true);
  }
  /** Stores 8 data bytes for an MMIO read. */
  set mmioData64(value: bigint) {
    this.#run.setBigUint64(RunOffset.MMIO_DATA, BigInt.asUintN(64, value), true);
  }
  /** FAIL_ENTRY exit: hardware reason. */
  get failEntryReason(): bigint {
    return this.#run.getBigUint64(RunOffset.FAIL_ENTRY_REASON, true);
  }
  /** INTERNAL_ERROR exit: suberror. */
  get internalSuberror(): number {
    return this.#run.getUint32(RunOffset.INTERNAL_SUBERROR, true);
  }
  /** INTERNAL_ERROR exit: its data words (at most 16). */
  internalData(): bigint[] {
    const n = Math.min(this.#run.getUint32(RunOffset.INTERNAL_NDATA, true), 16);
    return Array.from(
      { length: n },
      (_, i) => this.#run.getBigUint64(RunOffset.INTERNAL_DATA + i * 8, true),
    );
  }
  /** SYSTEM_EVENT exit: type (1 shutdown, 2 reset, 3 crash). */
  get systemEventType(): number {
    return this.#run.getUint32(RunOffset.SYSTEM_EVENT_TYPE, true);
  }

  #getState(kind: number, call: string, size?: number): Uint8Array<ArrayBuffer> {
    const buf = new Uint8Array(size ?? check(call, sym().vk_vcpu_state_size(kind)));
    check(call, sym().vk_vcpu_get(this.fd, kind, buf, buf.length), `vcpu ${this.id}`);
    return buf;
  }

  #setState(kind: number, call: string, bytes: Uint8Array, size?: number): void {
    const need = size ?? check(call, sym().vk_vcpu_state_size(kind));
    if (bytes.length !== need) {
      throw new KvmError(
        call,
        22,
        `vcpu ${this.id}: state is ${bytes.length} bytes, expected ${need}`,
      );
    }
    check(call, sym().vk_vcpu_set(this.fd, kind, copy(bytes), need), `vcpu ${this.id}`);
  }

  /**
   * Reads state `kind` into `into` (exactly its size; XSAVE: {@link Vcpu.xsaveSize}),
   * e.g. a slot of shared memory, without allocating.
   */
  readStateInto(kind: VcpuStateKind, into: Uint8Array): void {
    check("KVM_GET state", sym().vk_vcpu_get(this.fd, kind, into, into.length), `vcpu ${this.id}`);
  }

  /**
   * Sets state `kind` from `bytes` (exactly its size; XSAVE:
   * {@link Vcpu.xsaveSize}), e.g. a slot of shared memory, without copying.
   */
  writeStateFrom(kind: VcpuStateKind, bytes: Uint8Array): void {
    check(
      "KVM_SET state",
      sym().vk_vcpu_set(this.fd, kind, bytes, bytes.length),
      `vcpu ${this.id}`,
    );
  }

  /**
   * `KVM_SET_MSRS` from a `struct kvm_msrs` blob whose count fits it (e.g. in
   * shared memory); returns how many MSRs KVM set (it stops at one it refuses).
   */
  writeMsrsFrom(blob: Uint8Array): number {
    return check("KVM_SET_MSRS", sym().vk_set_msrs(this.fd, blob, blob.length), `vcpu ${this.id}`);
  }

  /** `KVM_SET_CPUID2` from a `struct kvm_cpuid2` blob whose count fits it. */
  writeCpuidFrom(blob: Uint8Array): void {
    check("KVM_SET_CPUID2", sym().vk_set_cpuid2(this.fd, blob, blob.length), `vcpu ${this.id}`);
  }

  /**
   * `KVM_GET_MSRS` into a prepared `struct kvm_msrs` blob (count and indices
   * filled in); returns how many MSRs KVM read (it stops at one it refuses).
   */
  readMsrsInto(blob: Uint8Array): number {
    return check("KVM_GET_MSRS", sym().vk_get_msrs(this.fd, blob, blob.length), `vcpu ${this.id}`);
  }

  /** `KVM_GET_REGS`. */
  getRegs(): Regs {
    return decodeRegs(this.#getState(VcpuState.REGS, "KVM_GET_REGS", REGS_SIZE));
  }
  /** `KVM_SET_REGS`. */
  setRegs(regs: Regs): void {
    this.#setState(VcpuState.REGS, "KVM_SET_REGS", encodeRegs(regs), REGS_SIZE);
  }
  /** `KVM_GET_SREGS`. */
  getSregs(): Sregs {
    return decodeSregs(this.#getState(VcpuState.SREGS, "KVM_GET_SREGS", SREGS_SIZE));
  }
  /** `KVM_SET_SREGS`. */
  setSregs(sregs: Sregs): void {
    this.#setState(VcpuState.SREGS, "KVM_SET_SREGS", encodeSregs(sregs), SREGS_SIZE);
  }
  /** `KVM_GET_FPU` bytes. */
  getFpu(): Uint8Array<ArrayBuffer> {
    return this.#getState(VcpuState.FPU, "KVM_GET_FPU");
  }
  /** `KVM_SET_FPU`. */
  setFpu(bytes: Uint8Array): void {
    this.#setState(VcpuState.FPU, "KVM_SET_FPU", bytes);
  }
  /** `KVM_GET_LAPIC` bytes (1 KiB register page). */
  getLapic(): Uint8Array<ArrayBuffer> {
    return this.#getState(VcpuState.LAPIC, "KVM_GET_LAPIC");
  }
  /** `KVM_SET_LAPIC`. */
  setLapic(bytes: Uint8Array): void {
    this.#setState(VcpuState.LAPIC, "KVM_SET_LAPIC", bytes);
  }
  /** `KVM_GET_XSAVE2` (or `KVM_GET_XSAVE`) bytes, {@link Vcpu.xsaveSize} long. */
  getXsave(): Uint8Array<ArrayBuffer> {
    return this.#getState(VcpuState.XSAVE, "KVM_GET_XSAVE", this.xsaveSize);
  }
  /** `KVM_SET_XSAVE`. */
  setXsave(bytes: Uint8Array): void {
    this.#setState(VcpuState.XSAVE, "KVM_SET_XSAVE", bytes, this.xsaveSize);
  }
  /** `KVM_GET_XCRS` bytes. */
  getXcrs(): Uint8Array<ArrayBuffer> {
    return this.#getState(VcpuState.XCRS, "KVM_GET_XCRS");
  }
  /** `KVM_SET_XCRS`. */
  setXcrs(bytes: Uint8Array): void {
    this.#setState(VcpuState.XCRS, "KVM_SET_XCRS", bytes);
  }
  /** `KVM_GET_VCPU_EVENTS` bytes (pending exceptions, interrupts, NMI, SMI). */
  getVcpuEvents(): Uint8Array<ArrayBuffer> {
    return this.#getState(VcpuState.EVENTS, "KVM_GET_VCPU_EVENTS");
  }
  /** `KVM_SET_VCPU_EVENTS`. */
  setVcpuEvents(bytes: Uint8Array): void {
    this.#setState(VcpuState.EVENTS, "KVM_SET_VCPU_EVENTS", bytes);
  }
  /** `KVM_GET_MP_STATE` bytes (one u32: runnable, uninitialized, init-received, halted, ...). */
  getMpState(): Uint8Array<ArrayBuffer> {
    return this.#getState(VcpuState.MP_STATE, "KVM_GET_MP_STATE");
  }
  /** `KVM_SET_MP_STATE`. */
  setMpState(bytes: Uint8Array): void {
    this.#setState(VcpuState.MP_STATE, "KVM_SET_MP_STATE", bytes);
  }
  /** `KVM_GET_DEBUGREGS` bytes. */
  getDebugRegs(): Uint8Array<ArrayBuffer> {
    return this.#getState(VcpuState.DEBUGREGS, "KVM_GET_DEBUGREGS");
  }
  /** `KVM_SET_DEBUGREGS`. */
  setDebugRegs(bytes: Uint8Array): void {
    this.#setState(VcpuState.DEBUGREGS, "KVM_SET_DEBUGREGS", bytes);
  }

  /**
   * `KVM_GET_MSRS` for `indices`: a `struct kvm_msrs` blob of the MSRs that
   * could be read (KVM stops at the first it refuses; that one is skipped and
   * the rest retried), ready for {@link Vcpu.setMsrs}.
   */
  getMsrs(indices: readonly number[]): Uint8Array<ArrayBuffer> {
    const got: MsrEntry[] = [];
    let rest = indices.slice();
    while (rest.length > 0) {
      const buf = encodeMsrs(rest.map((index) => ({ index, value: 0n })));
      const n = check(
        "KVM_GET_MSRS",
        sym().vk_get_msrs(this.fd, buf, buf.length),
        `vcpu ${this.id}`,
      );
      got.push(...decodeMsrs(buf).slice(0, n));
      rest = rest.slice(n + 1);
    }
    return encodeMsrs(got);
  }

  /** `KVM_SET_MSRS` from a `struct kvm_msrs` blob; throws naming the first MSR KVM refused. */
  setMsrs(blob: Uint8Array): void {
    const entries = decodeMsrs(blob);
    const buf = encodeMsrs(entries);
    const n = check("KVM_SET_MSRS", sym().vk_set_msrs(this.fd, buf, buf.length), `vcpu ${this.id}`);
    if (n < entries.length) {
      const bad = entries[n];
      throw new KvmError(
        "KVM_SET_MSRS",
        22,
        `vcpu ${this.id}: KVM refused MSR 0x${
          (bad?.index ?? 0).toString(16)
        } (set ${n} of ${entries.length})`,
      );
    }
  }

  /** `KVM_SET_CPUID2`. */
  setCpuid(entries: readonly CpuidEntry[]): void {
    const buf = encodeCpuid(entries);
    check("KVM_SET_CPUID2", sym().vk_set_cpuid2(this.fd, buf, buf.length), `vcpu ${this.id}`);
  }

  /** `KVM_GET_CPUID2`: the CPUID this vCPU shows its guest. */
  getCpuid(): CpuidEntry[] {
    const buf = new Uint8Array(CPUID2_HEADER + 512 * CPUID_ENTRY_SIZE);
    const n = check(
      "KVM_GET_CPUID2",
      sym().vk_get_cpuid2(this.fd, buf, buf.length),
      `vcpu ${this.id}`,
    );
    return decodeCpuid(buf, n);
  }

  /** Unmaps `kvm_run` and closes the fd (only for the owning handle). */
  close(): void {
    if (this.#closed || !this.#owner) return;
    this.#closed = true;
    check("munmap(kvm_run)", sym().vk_munmap(this.runAddr, BigInt(this.runSize)));
    check("close(vcpu)", sym().vk_close(this.fd));
  }

  /** Same as {@link Vcpu.close}. */
  [Symbol.dispose](): void {
    this.close();
  }
}

/** Size of `struct kvm_msrs` holding `n` entries. */
export function msrsBlobSize(n: number): number {
  return MSRS_HEADER + n * MSR_ENTRY_SIZE;
}

/** The entries of a `struct kvm_msrs` blob from {@link Vcpu.getMsrs}. */
export function msrEntries(blob: Uint8Array): MsrEntry[] {
  return decodeMsrs(blob);
}

/** A `struct kvm_msrs` blob holding `entries`, for {@link Vcpu.setMsrs}. */
export function msrsBlob(entries: readonly MsrEntry[]): Uint8Array<ArrayBuffer> {
  return encodeMsrs(entries);
}

/** Installs the kick signal handler (idempotent, process-wide); returns the signal number. */
export function installKickHandler(): number {
  return check("sigaction(kick)", sym().vk_install_kick_handler());
}

/** The calling thread's `pthread_t`, for {@link kick}. */
export function threadSelf(): bigint {
  return toBigInt(sym().vk_thread_self());
}

/**
 * Makes the vCPU whose `kvm_run` is at `runAddr`, running on `thread`, leave
 * `KVM_RUN` promptly (immediate_exit + signal).
 */
export function kick(thread: bigint, runAddr: bigint): void {
  check("pthread_kill(kick)", sym().vk_kick(thread, runAddr));
}
