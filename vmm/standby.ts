/**
 * A standby machine: everything of a {@link Machine} that does not depend on
 * what it will run, built ahead: the KVM VM with its in-kernel irqchip, PIT
 * and GSI routing, guest RAM registered as memory slots, the vCPUs (CPUID,
 * MSR list, `kvm_run` mappings, state slots) and one vCPU Worker per vCPU,
 * set up and waiting for its devices. `Machine.fromStandby` turns it into a
 * machine (devices, I/O devices, a kernel or a checkpoint's state) without
 * any of those steps, which on this nested host take milliseconds each
 * (every memory-slot or IRQ-routing change waits for an SRCU grace period;
 * a Worker's start and first message round trip take milliseconds under
 * load).
 *
 * It is what QEMU's `-incoming defer` process is before the migration
 * stream arrives: a VMM built for a machine shape (`-m`, `-smp`) that waits
 * for its state. A checkpoint restore given a standby of the checkpoint's
 * shape (`restoreMachine(path, { standby })`) costs only reading the file,
 * mapping memory and loading state; `Machine.create` is a standby plus a
 * boot.
 *
 * @example
 * ```ts ignore
 * // ignore: needs /dev/kvm and a checkpoint file.
 * import { StandbyMachine } from "./standby.ts";
 * import { restoreMachine } from "./checkpoint.ts";
 * await using standby = await StandbyMachine.create({ memMiB: 1024, vcpus: 1 });
 * // ... later, when the snapshot is asked for:
 * await using r = await restoreMachine("/tmp/vm.ckpt", { standby });
 * await r.machine.start();
 * ```
 *
 * @module
 */

import { loadShim } from "../native/ffi.ts";
import {
  installKickHandler,
  Kvm,
  KVM_CAP_SYNC_REGS,
  msrEntries,
  msrsBlob,
  type Vcpu,
  type Vm,
} from "../native/kvm.ts";
import { VcpuLoadSlots } from "../native/kvm_state_load.ts";
import type { CpuidEntry } from "../native/kvm_types.ts";
import { pcIrqRoutes } from "./acpi/irq_routing.ts";
import { guestCpuid } from "./cpuid.ts";
import { CpuStateSaver } from "./cpu_state_saver.ts";
import { IDENTITY_MAP_ADDR, MachineError, TSS_ADDR, validate } from "./machine_config.ts";
import { HostMemory, type MemoryBacking } from "./memory.ts";
import { MachineMetrics } from "./metrics/machine_metrics.ts";
import {
  controlBytes,
  CTL_VCPU0,
  loadDeviceFactory,
  type VcpuInit,
  type VcpuMessage,
  VcpuRunState,
} from "./vcpu.ts";
import { DeviceBus } from "./devices/bus.ts";
import type { Device, DeviceEnv } from "./devices/device.ts";
import type { DeviceSpec } from "./devices/spec.ts";
import { takeVcpuWorkers } from "./vcpu_pool.ts";
import { traceStartup } from "./startup_trace.ts";

/** `MSR_IA32_MISC_ENABLE`; bit 0 = fast strings, as firmware leaves it. */
const MSR_IA32_MISC_ENABLE = 0x1a0;

/** The shape a standby is built for (what QEMU's command line gives before `-incoming`). */
export interface StandbyShape {
  /** Guest RAM in MiB (1..65536). */
  memMiB: number;
  /** vCPU count. */
  vcpus: number;
  /**
   * Whether the machine will have ACPI tables (default true): the PIT is
   * then routed to IOAPIC pin 2, as the MADT's IRQ0 override says.
   */
  acpi?: boolean;
  /** Backing of guest RAM (default anonymous). */
  memoryBacking?: MemoryBacking;
}

/** Options of {@link StandbyMachine.create}. */
export interface StandbyOptions extends StandbyShape {
  /** Guest RAM already mapped (it must hold `memMiB`); the standby owns it from then on. */
  memory?: HostMemory;
  /**
   * The VMM's own devices (e.g. `defaultDeviceSpecs(...)`: COM1 on its
   * console), built at once on every thread; a machine whose devices are
   * these very specs takes them as they are (a restore of a checkpoint with
   * the same devices does: see `restoreMachine`), any other builds its own.
   */
  devices?: DeviceSpec[];
  /** Module exporting `createDevices(specs, env)` for them; default `vmm/devices/mod.ts`. */
  deviceModule?: string;
  /**
   * The standby is for a fresh boot (what `Machine.create` with a kernel
   * builds), never a restore: the restore's own symbols are not opened ahead.
   */
  boot?: boolean;
}

/** What a machine takes over from its standby. */
export interface StandbyParts {
  /** Path of the built shim. */
  readonly libPath: string;
  /** The `/dev/kvm` handle. */
  readonly kvm: Kvm;
  /** The VM. */
  readonly vm: Vm;
  /** Guest RAM (registered as memory slots). */
  readonly memory: HostMemory;
  /** vCPUs, by id. */
  readonly vcpus: Vcpu[];
  /** The saver of their state in a checkpoint's pause. */
  readonly cpuSaver: CpuStateSaver;
  /** The slots each vCPU thread loads its state from (restores). */
  readonly loadSlots: VcpuLoadSlots;
  /** One Worker per vCPU, set up (state {@link VcpuRunState.STANDBY}). */
  readonly workers: Worker[];
  /** The control buffer the Workers watch. */
  readonly control: SharedArrayBuffer;
  /** The Workers' pthread ids. */
  readonly threads: BigInt64Array;
  /** When each vCPU thread left the start gate (see `VcpuInit.entered`; 0 before). */
  readonly entered: Float64Array;
  /** Exit counters and the metrics registry. */
  readonly metrics: MachineMetrics;
  /** The standby's own device specs (built on every thread). */
  readonly devices: DeviceSpec[];
  /** Their module (undefined: the built-in one). */
  readonly deviceModule: string | undefined;
  /** Their main-thread instances. */
  readonly mainDevices: Device[];
  /** Where their stop requests go (the machine sets it). */
  readonly owner: { stop?: (status: number, reason: string) => void };
  /** The device bus lock every thread's bus shares. */
  readonly busLock: SharedArrayBuffer;
  /** Whether the PIT is routed as with ACPI. */
  readonly acpi: boolean;
}

let takeParts: (s: StandbyMachine) => StandbyParts;

/**
 * (For `Machine.fromStandby`) hands `standby`'s parts to a machine, once;
 * the machine owns them from then on.
 */
export function takeStandbyParts(standby: StandbyMachine): StandbyParts {
  return takeParts(standby);
}

/** A machine built ahead of its guest; see the module doc. */
export class StandbyMachine implements AsyncDisposable {
  /** Guest RAM in MiB. */
  readonly memMiB: number;
  /** vCPU count. */
  readonly vcpus: number;
  /** Whether the PIT is routed as with ACPI. */
  readonly acpi: boolean;
  /** Backing of guest RAM. */
  readonly memoryBacking: MemoryBacking;
  #parts: StandbyParts | undefined;
  #failed: string | undefined;

  private constructor(shape: Required<StandbyShape>, parts: StandbyParts) {
    this.memMiB = shape.memMiB;
    this.vcpus = shape.vcpus;
    this.acpi = shape.acpi;
    this.memoryBacking = shape.memoryBacking;
    this.#parts = parts;
  }

  /**
   * Builds a standby of `opts`' shape; resolves once every vCPU Worker is
   * set up. Uses vCPU Workers started ahead (`prewarmVcpuWorkers`) first.
   */
  static async create(opts: StandbyOptions): Promise<StandbyMachine> {
    const shape: Required<StandbyShape> = {
      memMiB: opts.memMiB,
      vcpus: opts.vcpus,
      acpi: opts.acpi ?? true,
      memoryBacking: opts.memoryBacking ?? "anonymous",
    };
    validate(shape);
    traceStartup("standby: create");
    const lib = await loadShim();
    traceStartup("standby: shim loaded");
    // The restore's own symbols (userfaultfd, file I/O): opening them costs milliseconds.
    if (opts.boot !== true) await (await import("../native/uffd_ffi.ts")).openUffdShim();
    installKickHandler();
    traceStartup("standby: uffd shim, kick handler");
    // Workers load their modules on their own threads while the VM is built here.
    const workers = takeVcpuWorkers(shape.vcpus);
    traceStartup("standby: workers spawned");
    const undo: (() => void)[] = [() => workers.forEach((w) => w.terminate())];
    const release = (): void => {
      for (const f of undo.reverse()) f();
    };
    let standby: StandbyMachine;
    try {
      const kvm = Kvm.open();
      undo.push(() => kvm.close());
      const vm = kvm.createVm();
      undo.push(() => vm.close());
      vm.setTssAddr(TSS_ADDR);
      vm.setIdentityMapAddr(IDENTITY_MAP_ADDR);
      vm.createIrqchip();
      vm.createPit2();
      // The PIT on IOAPIC pin 2, as the MADT's IRQ0->GSI2 override says.
      if (shape.acpi) vm.setGsiRouting(pcIrqRoutes());
      const bytes = shape.memMiB * 1024 * 1024;
      const memory = opts.memory ?? HostMemory.create(bytes, { backing: shape.memoryBacking });
      undo.push(() => memory.close());
      if (memory.size !== bytes) {
        throw new MachineError(`the given memory is ${memory.size} bytes, not ${shape.memMiB} MiB`);
      }
      memory.register(vm);
      const supported = kvm.supportedCpuid();
      const vcpus: Vcpu[] = [];
      const cpuid: CpuidEntry[][] = [];
      for (let id = 0; id < shape.vcpus; id++) {
        const vcpu = vm.createVcpu(id);
        undo.push(() => vcpu.close());
        const entries = guestCpuid(supported, id, shape.vcpus);
        cpuid.push(entries);
        vcpu.setCpuid(entries);
        // Fast strings on, as firmware leaves it (when this KVM knows the MSR).
        if (msrEntries(vcpu.getMsrs([MSR_IA32_MISC_ENABLE])).length === 1) {
          vcpu.setMsrs(msrsBlob([{ index: MSR_IA32_MISC_ENABLE, value: 1n }]));
        }
        vcpus.push(vcpu);
      }
      const msrList = kvm.msrIndexList();
      const cpuSaver = CpuStateSaver.create(
        vcpus,
        cpuid,
        msrList,
        kvm.checkExtension(KVM_CAP_SYNC_REGS),
      );
      const loadSlots = VcpuLoadSlots.create(shape.vcpus, vm.xsaveSize(), msrList.length);
      const control = new SharedArrayBuffer(controlBytes(shape.vcpus));
      const threads = new BigInt64Array(new SharedArrayBuffer(8 * shape.vcpus));
      const entered = new Float64Array(new SharedArrayBuffer(8 * shape.vcpus));
      const metrics = new MachineMetrics(shape.vcpus);
      const devices = opts.devices ?? [];
      const owner: StandbyParts["owner"] = {};
      const env: DeviceEnv = {
        setIrq: (gsi, level) => vm.irqLine(gsi, level),
        requestStop: (status, reason) => owner.stop?.(status, reason),
      };
      traceStartup("standby: vm, memory, vcpus created");
      const mainDevices = (await loadDeviceFactory(opts.deviceModule))(devices, env);
      standby = new StandbyMachine(shape, {
        libPath: lib.path,
        kvm,
        vm,
        memory,
        vcpus,
        cpuSaver,
        loadSlots,
        workers,
        control,
        threads,
        entered,
        metrics,
        acpi: shape.acpi,
        devices,
        deviceModule: opts.deviceModule,
        mainDevices,
        owner,
        busLock: DeviceBus.createLock(),
      });
      traceStartup("standby: main devices built");
      await standby.#setUp();
      traceStartup("standby: workers set up");
    } catch (err) {
      release();
      throw err;
    }
    return standby;
  }

  /** Sends each Worker its vCPU; resolves when all are set up. */
  async #setUp(): Promise<void> {
    const p = this.#parts;
    if (p === undefined) throw new MachineError("standby already taken");
    const ready = p.vcpus.map((vcpu) => {
      const w = p.workers[vcpu.id];
      if (w === undefined) throw new MachineError(`no Worker for vcpu ${vcpu.id}`);
      const up = new Promise<void>((resolve, reject) => {
        w.onmessage = (e: MessageEvent<VcpuMessage>) => {
          const msg = e.data;
          if (msg.type === "ready") resolve();
          else if (msg.type === "stop") {
            this.#failed ??= msg.reason;
            reject(new MachineError(msg.reason));
          }
        };
        w.onerror = (e: ErrorEvent) => {
          e.preventDefault();
          const reason = `vcpu ${vcpu.id} worker failed: ${e.message}`;
          this.#failed ??= reason;
          reject(new MachineError(reason));
        };
      });
      const init: VcpuInit = {
        libPath: p.libPath,
        vmFd: p.vm.fd,
        vcpuFd: vcpu.fd,
        id: vcpu.id,
        runAddr: vcpu.runAddr,
        runSize: vcpu.runSize,
        xsaveSize: vcpu.xsaveSize,
        control: p.control,
        threads: p.threads.buffer as SharedArrayBuffer,
        entered: p.entered.buffer as SharedArrayBuffer,
        exitCounters: p.metrics.exits,
        stateSlots: p.cpuSaver.init,
        devices: p.devices,
        busLock: p.busLock,
        ...(p.deviceModule === undefined ? {} : { deviceModule: p.deviceModule }),
        loadSlots: {
          buffer: p.loadSlots.buffer,
          count: p.loadSlots.count,
          msrs: p.loadSlots.msrCapacity,
        },
      };
      w.postMessage(init);
      return up;
    });
    await Promise.all(ready);
  }

  /** Whether a machine of this shape can be built on this standby (and it is unused). */
  fits(shape: StandbyShape): boolean {
    return this.#parts !== undefined && this.#failed === undefined &&
      shape.memMiB === this.memMiB && shape.vcpus === this.vcpus &&
      (shape.acpi ?? true) === this.acpi &&
      (shape.memoryBacking ?? "anonymous") === this.memoryBacking &&
      this.#workersUp();
  }

  /** Every Worker still set up and waiting (none died since). */
  #workersUp(): boolean {
    const ctl = new Int32Array(this.#parts?.control ?? new SharedArrayBuffer(4));
    for (let i = 0; i < this.vcpus; i++) {
      if (Atomics.load(ctl, CTL_VCPU0 + i) !== VcpuRunState.STANDBY) return false;
    }
    return true;
  }

  /** The standby's own devices (empty when taken). */
  get devices(): readonly DeviceSpec[] {
    return this.#parts?.devices ?? [];
  }

  /** Their module (undefined: the built-in one). */
  get deviceModule(): string | undefined {
    return this.#parts?.deviceModule;
  }

  /** Whether the standby was given to a machine. */
  get taken(): boolean {
    return this.#parts === undefined;
  }

  static {
    takeParts = (s) => s.#take();
  }

  /** Hands the parts to a machine (once); the machine owns them from then on. */
  #take(): StandbyParts {
    const p = this.#parts;
    if (p === undefined) throw new MachineError("the standby machine was already used");
    if (this.#failed !== undefined) throw new MachineError(`standby failed: ${this.#failed}`);
    this.#parts = undefined;
    for (const w of p.workers) {
      w.onmessage = null;
      w.onerror = null;
    }
    return p;
  }

  /** Releases an unused standby (Workers, vCPUs, memory, VM); nothing when it was taken. */
  [Symbol.asyncDispose](): Promise<void> {
    const p = this.#parts;
    this.#parts = undefined;
    if (p !== undefined) releaseStandbyParts(p);
    return Promise.resolve();
  }
}

/**
 * Releases parts whose vCPU Workers never ran the guest (they wait for a
 * message or at the start gate, away from `kvm_run`, so ending them first
 * is safe): Workers, vCPUs, memory, the VM and `/dev/kvm`.
 */
export function releaseStandbyParts(p: StandbyParts): void {
  for (const w of p.workers) w.terminate();
  for (const v of p.vcpus) v.close();
  p.memory.close();
  p.vm.close();
  p.kvm.close();
}
