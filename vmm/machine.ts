/**
 * The machine: composes guest memory, the VM (in-kernel irqchip and PIT),
 * 1..N vCPUs each running `KVM_RUN` on its own Worker, the devices and the
 * boot loader, and drives the lifecycle Created → Running ⇄ Paused → Stopped.
 *
 * How a run ends ({@link Machine.wait}): a device's `requestStop(status,
 * reason)` (debug-exit, i8042 reset); a triple fault (KVM_EXIT_SHUTDOWN:
 * status 1, "guest shutdown (triple fault)"); KVM_EXIT_INTERNAL_ERROR or
 * FAIL_ENTRY (status 1, reason with the suberror or hardware reason and rip);
 * a failed vCPU Worker (status 1); or {@link Machine.stop} (status 0,
 * "stopped"). A vCPU that halts with interrupts off is not taken as
 * power-off: the in-kernel LAPIC keeps HLT inside KVM_RUN, where an NMI or
 * INIT can still wake it (see `vcpu_worker.ts`).
 *
 * @example
 * ```ts ignore
 * // ignore: needs a kernel image (vmlinux) and /dev/kvm.
 * import { Machine } from "./machine.ts";
 * import { defaultDeviceSpecs } from "./devices/mod.ts";
 * const kernel = await Deno.readFile("vmlinux");
 * await using m = await Machine.create({
 *   memMiB: 256,
 *   vcpus: 1,
 *   kernel,
 *   cmdline: "console=ttyS0",
 *   devices: defaultDeviceSpecs({ memMiB: 256 }),
 * });
 * await m.start();
 * console.log(await m.wait());
 * ```
 *
 * @module
 */

import {
  type AcpiConfig,
  type AcpiLayout,
  buildAcpi,
  VMGENID_ADDR,
  type VmGenIdLocation,
} from "./acpi/build.ts";
import { acpiConfigFromSpecs, writeAcpi } from "./acpi/install.ts";
import { kick, type Kvm, KvmError, msrEntries, type Vcpu, type Vm } from "../native/kvm.ts";
import { type MachineCpuState, restoreVcpuState, restoreVmState } from "../native/kvm_state.ts";
import type { LoadPiece, VcpuLoadSlots } from "../native/kvm_state_load.ts";
import { loadKernel } from "./boot/mod.ts";
import type { BootPlan } from "./boot/types.ts";
import type { CpuStateSaver } from "./cpu_state_saver.ts";
import {
  releaseStandbyParts,
  StandbyMachine,
  type StandbyParts,
  takeStandbyParts,
} from "./standby.ts";
import { DeviceBus } from "./devices/bus.ts";
import type { Device, DeviceEnv } from "./devices/device.ts";
import type { DeviceSpec } from "./devices/spec.ts";
import { type MmioSlot, nextFreeGsi } from "./devices/mmio_allocator.ts";
import type { DiskHandle } from "./disk_handle.ts";
import {
  type MachineConfig,
  MachineError,
  type MachineExit,
  type MachineState,
  mergeSregs,
  resetRegs,
  validate,
} from "./machine_config.ts";
import { MachineIo, type NetInterface } from "./machine_io.ts";
import type { HostMemory } from "./memory.ts";
import type { MachineMetrics } from "./metrics/machine_metrics.ts";
import { traceStartup } from "./startup_trace.ts";
import {
  CTL_GO,
  CTL_REQ,
  CTL_VCPU0,
  GO_EVENT,
  GO_RUN,
  loadDeviceFactory,
  REQ_PAUSE,
  REQ_STOP,
  type VcpuLoad,
  type VcpuMessage,
  VcpuRunState,
} from "./vcpu.ts";

export * from "./machine_config.ts";

/** How long stop() waits for Workers to leave their loops before terminating them. */
const STOP_TIMEOUT_MS = 2000;
/** Interval at which pause() repeats its kicks while a vCPU has not parked yet. */
const REKICK_MS = 2;
/** How long a pause for a checkpoint waits for its vCPUs synchronously before yielding. */
const SYNC_PAUSE_MS = 10;
/** How long building the devices on the vCPU threads, or loading their state, may take. */
const LOAD_TIMEOUT_MS = 10_000;
/** The ioctl each load piece is set with, for error messages. */
const LOAD_CALLS: Record<LoadPiece, string> = {
  cpuid: "CPUID2",
  regs: "REGS",
  sregs: "SREGS",
  xsave: "XSAVE",
  xcrs: "XCRS",
  msrs: "MSRS",
  lapic: "LAPIC",
  events: "VCPU_EVENTS",
  mpState: "MP_STATE",
  debugRegs: "DEBUGREGS",
};

/** The command line the kernel gets: the caller's, plus the I/O devices' entries unless told not to. */
function kernelCmdline(config: MachineConfig, io: MachineIo): string {
  const base = config.cmdline ?? "";
  if (config.announceOnCmdline === false) return base;
  const extra = io.cmdline();
  return extra === "" ? base : base === "" ? extra : `${base} ${extra}`;
}

/** The main thread's register files of the I/O devices (none: their module is not loaded). */
async function ioTransports(specs: DeviceSpec[]): Promise<Device[]> {
  if (specs.length === 0) return [];
  const { VirtioMmioTransport } = await import("./devices/virtio/mmio.ts");
  return specs.map((spec) => new VirtioMmioTransport(spec));
}

/** Whether `config`'s devices are the very specs (and module) the standby built. */
function standbyDevices(config: MachineConfig, parts: StandbyParts): boolean {
  return config.deviceModule === parts.deviceModule &&
    config.devices.length === parts.devices.length &&
    config.devices.every((d, i) => d === parts.devices[i]);
}

/** The ACPI description of `config`'s machine with I/O devices `io`. */
function acpiConfigOf(config: MachineConfig, io: MachineIo): AcpiConfig {
  // The generation id's notification takes the next line after the devices'.
  return acpiConfigFromSpecs(config.vcpus, config.devices, io.slots, nextFreeGsi(io.slots));
}

/** Where {@link Machine.restoreState}'s time went (ms, host clock), in order. */
export interface RestoreStateTimes {
  /** Writing each vCPU's state into its load slot and asking the vCPU threads to load it. */
  slotsMs: number;
  /** The irqchip, PIT and clock (and the vCPUs, when this thread sets them). */
  vmMs: number;
  /** The devices' state and the caller's `meanwhile`. */
  devicesMs: number;
  /** Waiting for the vCPU threads to finish setting their vCPUs. */
  vcpusMs: number;
}

/** A virtual machine with its vCPU Workers. */
export class Machine implements AsyncDisposable {
  /** Guest RAM (the memory table boot, devices and checkpoints read). */
  readonly memory: HostMemory;
  /** Number of vCPUs. */
  readonly vcpuCount: number;
  /** The KVM system handle. */
  readonly kvm: Kvm;
  /** The VM (irqchip, PIT, clock, dirty log). */
  readonly vm: Vm;
  /** vCPU handles; get/set their state only while paused or stopped. */
  readonly vcpus: readonly Vcpu[];
  /** What the boot loader did (undefined for a machine restored from a checkpoint). */
  readonly bootPlan: BootPlan | undefined;
  /** The configuration the machine was built from. */
  readonly config: Readonly<MachineConfig>;
  /** Exit and pause counters, and the registry devices add their metrics to. */
  readonly metrics: MachineMetrics;

  #state: MachineState = "Created";
  readonly #ctl: Int32Array;
  readonly #threads: BigInt64Array;
  readonly #entered: Float64Array;
  readonly #workers: Worker[];
  readonly #devices: Device[];
  readonly #bus: DeviceBus;
  readonly #io: MachineIo;
  /** The ACPI layout; null until first asked for (a restored machine's tables are in its RAM). */
  #acpi: AcpiLayout | undefined | null;
  #exit: MachineExit | undefined;
  #finishing: Promise<void> | undefined;
  #pausing: Promise<void> | undefined;
  #starting: Promise<void> | undefined;
  readonly #exitPromise: Promise<MachineExit>;
  #resolveExit: (e: MachineExit) => void = () => {};
  #exitedCount = 0;
  #onAllExited: (() => void) | undefined;
  #closed = false;
  readonly #cpuSaver: CpuStateSaver;
  readonly #loadSlots: VcpuLoadSlots;
  readonly #disposers: (() => void | Promise<void>)[] = [];

  private constructor(
    parts: StandbyParts,
    bootPlan: BootPlan | undefined,
    devices: Device[],
    bus: DeviceBus,
    io: MachineIo,
    config: MachineConfig,
    acpi: AcpiLayout | undefined | null,
  ) {
    this.config = config;
    this.#acpi = acpi;
    this.#workers = parts.workers;
    this.#io = io;
    this.kvm = parts.kvm;
    this.vm = parts.vm;
    this.memory = parts.memory;
    this.vcpus = parts.vcpus;
    this.vcpuCount = parts.vcpus.length;
    this.bootPlan = bootPlan;
    this.metrics = parts.metrics;
    this.metrics.registry.add(() => io.metricFamilies());
    this.#devices = devices;
    this.#bus = bus;
    this.#ctl = new Int32Array(parts.control);
    this.#threads = parts.threads;
    this.#entered = parts.entered;
    this.#cpuSaver = parts.cpuSaver;
    this.#loadSlots = parts.loadSlots;
    this.#exitPromise = new Promise((resolve) => this.#resolveExit = resolve);
  }

  /**
   * Builds the VM, memory, vCPUs and devices and loads the kernel; the vCPU
   * Workers are started and wait for {@link Machine.start}.
   */
  static async create(config: MachineConfig): Promise<Machine> {
    validate(config);
    if (config.kernel === undefined && config.memory === undefined) {
      throw new MachineError("a kernel is needed unless memory is given (a restore)");
    }
    const standby = await StandbyMachine.create({
      memMiB: config.memMiB,
      vcpus: config.vcpus,
      acpi: config.acpi !== false,
      ...(config.memoryBacking === undefined ? {} : { memoryBacking: config.memoryBacking }),
      ...(config.memory === undefined ? {} : { memory: config.memory }),
      devices: config.devices,
      ...(config.deviceModule === undefined ? {} : { deviceModule: config.deviceModule }),
      boot: config.kernel !== undefined,
    });
    let machine: Machine;
    try {
      machine = await Machine.fromStandby(standby, config);
    } catch (err) {
      await standby[Symbol.asyncDispose]();
      throw err;
    }
    try {
      await machine.#whenLoaded();
    } catch (err) {
      await machine[Symbol.asyncDispose]();
      throw err;
    }
    return machine;
  }

  /**
   * Builds the machine of `config` on `standby` (which must fit its memory,
   * vCPUs, ACPI and memory backing, and is used up): its I/O devices start,
   * its devices are built, the kernel (if any) is loaded, and each vCPU
   * Worker is sent its devices without waiting for it. Without a kernel the
   * machine is a restore: set its CPU and device state, then `start()`.
   */
  static async fromStandby(standby: StandbyMachine, config: MachineConfig): Promise<Machine> {
    validate(config);
    const shape = {
      memMiB: config.memMiB,
      vcpus: config.vcpus,
      acpi: config.acpi !== false,
      ...(config.memoryBacking === undefined ? {} : { memoryBacking: config.memoryBacking }),
    };
    if (!standby.fits(shape)) {
      throw new MachineError(
        `the standby machine (${standby.memMiB} MiB, ${standby.vcpus} vCPUs, acpi ` +
          `${standby.acpi}, ${standby.memoryBacking}${
            standby.taken ? ", used" : ""
          }) does not fit ${config.memMiB} MiB, ${config.vcpus} vCPUs, acpi ${shape.acpi}`,
      );
    }
    const parts = takeStandbyParts(standby);
    if (config.memory !== undefined && config.memory !== parts.memory) {
      releaseStandbyParts(parts);
      throw new MachineError("config.memory must be the standby's memory");
    }
    const loader = config.loader ?? loadKernel;
    const { vm, memory, vcpus } = parts;
    let io: MachineIo | undefined;
    let machine: Machine;
    try {
      io = config.drives === undefined && config.nets === undefined &&
          config.virtioDevices === undefined
        ? MachineIo.none()
        : await MachineIo.start(config, memory.regions);
      io.attach(vm.fd);
      let plan: BootPlan | undefined;
      // The tables are written for a fresh boot; restored memory already holds them.
      let acpi: AcpiLayout | undefined | null = null;
      if (config.kernel !== undefined) {
        acpi = config.acpi === false ? undefined : buildAcpi(acpiConfigOf(config, io));
        if (acpi !== undefined) writeAcpi(memory, acpi);
        plan = loader(memory, config.kernel, {
          cmdline: kernelCmdline(config, io),
          ...(config.initrd === undefined ? {} : { initrd: config.initrd }),
          ...(acpi === undefined ? {} : { acpiRsdp: acpi.rsdpAddr }),
        });
        const boot = vcpus[0];
        if (boot === undefined) throw new MachineError("no boot vCPU");
        boot.setRegs({ ...resetRegs(), ...plan.regs });
        boot.setSregs(mergeSregs(boot.getSregs(), plan.sregs));
      }
      // Main-thread devices may ask to stop once the machine exists.
      const owner = parts.owner;
      const env: DeviceEnv = {
        setIrq: (gsi, level) => vm.irqLine(gsi, level),
        requestStop: (status, reason) => owner.stop?.(status, reason),
      };
      const reuse = standbyDevices(config, parts);
      const devices = [
        ...(reuse ? parts.mainDevices : (await loadDeviceFactory(config.deviceModule))(
          config.devices,
          env,
        )),
        ...await ioTransports(io.specs),
      ];
      const bus = new DeviceBus(devices, parts.busLock);
      machine = new Machine(parts, plan, devices, bus, io, config, acpi);
      const m = machine;
      owner.stop = (status, reason) => void m.#finish({ status, reason });
      machine.#load(config, reuse);
      traceStartup("machine: kernel loaded, devices sent");
    } catch (err) {
      await io?.close();
      releaseStandbyParts(parts);
      throw err;
    }
    return machine;
  }

  /**
   * Hands every vCPU Worker its I/O devices, and its devices unless they are
   * the standby's it built already (`reuse`); no waiting: see
   * {@link Machine.#whenLoaded}.
   */
  #load(config: MachineConfig, reuse: boolean): void {
    const load: VcpuLoad = {
      type: "load",
      ioDevices: this.#io.specs,
      ...(reuse ? {} : { devices: config.devices }),
      ...(reuse || config.deviceModule === undefined ? {} : { deviceModule: config.deviceModule }),
    };
    for (const vcpu of this.vcpus) {
      const w = this.#workers[vcpu.id];
      if (w === undefined) throw new MachineError(`no Worker for vcpu ${vcpu.id}`);
      w.onmessage = (e: MessageEvent<VcpuMessage>) => {
        const msg = e.data;
        if (msg.type === "stop") this.#finish({ status: msg.status, reason: msg.reason });
        else if (msg.type === "exited") this.#workerExited();
      };
      w.onerror = (e: ErrorEvent) => {
        e.preventDefault();
        this.#finish({ status: 1, reason: `vcpu ${vcpu.id} worker failed: ${e.message}` });
        this.#workerExited();
      };
      w.postMessage(load);
    }
  }

  /** Whether every vCPU Worker has built its devices (or one has ended). */
  #loadedNow(): boolean {
    for (let i = 0; i < this.vcpuCount; i++) {
      const s = Atomics.load(this.#ctl, CTL_VCPU0 + i);
      if (s === VcpuRunState.STARTING || s === VcpuRunState.STANDBY) return false;
    }
    return true;
  }

  /** Resolves once every vCPU Worker has built its devices; rejects when the run ended first. */
  async #whenLoaded(): Promise<void> {
    const deadline = performance.now() + LOAD_TIMEOUT_MS;
    for (let i = 0; i < this.vcpuCount; i++) {
      const idx = CTL_VCPU0 + i;
      for (;;) {
        if (this.#exit !== undefined) throw new MachineError(this.#exit.reason);
        const s = Atomics.load(this.#ctl, idx);
        if (s === VcpuRunState.EXITED) {
          // Its "stop" message (the reason) may still be on its way.
          await new Promise((r) => setTimeout(r, 1));
          const exit = this.#exit as MachineExit | undefined; // set meanwhile, maybe
          throw new MachineError(exit?.reason ?? `vcpu ${i} ended while loading`);
        }
        if (s !== VcpuRunState.STARTING && s !== VcpuRunState.STANDBY) break;
        if (performance.now() > deadline) {
          throw new MachineError(`vcpu ${i} did not build its devices in ${LOAD_TIMEOUT_MS} ms`);
        }
        const r = Atomics.waitAsync(this.#ctl, idx, s, 20);
        if (r.async) await r.value;
      }
    }
  }

  /** Current lifecycle state. */
  get state(): MachineState {
    return this.#state;
  }

  /**
   * The ACPI tables and generation id page in guest memory (undefined with
   * `acpi: false`); for a restored machine, the layout its tables were
   * written with (computed when first asked for).
   */
  get acpi(): AcpiLayout | undefined {
    if (this.#acpi === null) {
      this.#acpi = this.config.acpi === false
        ? undefined
        : buildAcpi(acpiConfigOf(this.config, this.#io));
    }
    return this.#acpi;
  }

  /** Where the VM generation id is and its notification GSI (undefined with `acpi: false`). */
  get vmGenIdLocation(): VmGenIdLocation | undefined {
    if (this.#acpi !== null) return this.#acpi?.vmgenid;
    // The layout's own rule (buildAcpi): a fixed page, the GSI after the I/O devices'.
    return this.config.acpi === false
      ? undefined
      : { addr: VMGENID_ADDR, gsi: nextFreeGsi(this.#io.slots) };
  }

  /**
   * Lets every vCPU enter the guest (once each vCPU Worker has built its
   * devices; usually they have).
   */
  start(): Promise<void> {
    if (this.#state !== "Created" || this.#starting !== undefined) {
      return Promise.reject(
        new MachineError(`start() needs a Created machine, it is ${this.#state}`),
      );
    }
    traceStartup("machine: start");
    const go = (): void => {
      this.#state = "Running";
      Atomics.or(this.#ctl, CTL_GO, GO_RUN);
      Atomics.notify(this.#ctl, CTL_GO);
    };
    if (this.#loadedNow() && this.#exit === undefined) {
      go();
      return Promise.resolve();
    }
    this.#starting = this.#whenLoaded().then(go).finally(() => this.#starting = undefined);
    return this.#starting;
  }

  /**
   * When vCPU `i`'s thread left the start gate for its first `KVM_RUN`, as
   * `performance.timeOrigin + performance.now()` on that thread (so comparable
   * with the same sum on this one); undefined before. This is the end of a
   * restore's "time to running", without this thread's own wake-up.
   */
  enteredAt(i: number): number | undefined {
    const t = this.#entered[i];
    return t === undefined || t === 0 ? undefined : t;
  }

  /**
   * Waits (synchronously, at most `timeoutMs`) until every vCPU thread has
   * left the start gate for `KVM_RUN`, the moment a restore's "time to
   * running" ends; returns whether they all have.
   */
  waitEntered(timeoutMs = 1000): boolean {
    const deadline = performance.now() + timeoutMs;
    for (let i = 0; i < this.vcpuCount; i++) {
      const idx = CTL_VCPU0 + i;
      for (;;) {
        const s = Atomics.load(this.#ctl, idx);
        if (
          s !== VcpuRunState.STARTING && s !== VcpuRunState.STANDBY && s !== VcpuRunState.LOADED
        ) {
          break;
        }
        const left = deadline - performance.now();
        if (left <= 0) return false;
        Atomics.wait(this.#ctl, idx, s, left);
      }
    }
    return true;
  }

  /**
   * Takes every vCPU out of `KVM_RUN` and parks it; resolves once all have
   * acknowledged (no guest instruction runs until {@link resume}). With
   * `saveCpuState`, each vCPU thread also saves its own state as it parks,
   * which makes {@link saveCpuState} in this pause a copy (checkpoints).
   */
  pause(opts: { saveCpuState?: boolean } = {}): Promise<void> {
    if (this.#pausing !== undefined) return this.#pausing;
    if (this.#state === "Paused") return Promise.resolve();
    if (this.#state !== "Running") {
      return Promise.reject(
        new MachineError(`pause() needs a Running machine, it is ${this.#state}`),
      );
    }
    this.#pausing = this.#pause(opts.saveCpuState === true).finally(() =>
      this.#pausing = undefined
    );
    return this.#pausing;
  }

  async #pause(saveState: boolean): Promise<void> {
    const t0 = performance.now();
    const epoch = saveState ? this.#cpuSaver.request() : undefined;
    // A checkpoint's pause blocks this thread for its first milliseconds: an
    // event-loop wake-up per vCPU would add tens of µs to a pause of hundreds.
    const syncUntil = saveState ? t0 + SYNC_PAUSE_MS : 0;
    Atomics.or(this.#ctl, CTL_REQ, REQ_PAUSE);
    this.#kickAll();
    for (let i = 0; i < this.vcpuCount; i++) {
      const idx = CTL_VCPU0 + i;
      for (;;) {
        const s = Atomics.load(this.#ctl, idx);
        // A vCPU saving its own state (STOPPED) runs no guest code any more.
        if (
          s === VcpuRunState.PAUSED || s === VcpuRunState.EXITED ||
          (saveState && s === VcpuRunState.STOPPED)
        ) break;
        if (this.#exit !== undefined) break;
        if (performance.now() < syncUntil) Atomics.wait(this.#ctl, idx, s, REKICK_MS);
        else {
          const r = Atomics.waitAsync(this.#ctl, idx, s, REKICK_MS);
          if (r.async) await r.value;
        }
        if (Atomics.load(this.#ctl, idx) === s) this.#kickOne(i);
      }
    }
    if (this.#state === "Running") {
      this.#state = "Paused";
      if (epoch !== undefined) this.#cpuSaver.paused(epoch);
      this.metrics.recordPause(performance.now() - t0);
    }
  }

  /** Lets paused vCPUs run again (after a pause() in progress completes). */
  async resume(): Promise<void> {
    if (this.#pausing !== undefined) await this.#pausing;
    if (this.#state === "Running") return;
    if (this.#state !== "Paused") {
      throw new MachineError(`resume() needs a Paused machine, it is ${this.#state}`);
    }
    this.#cpuSaver.resumed();
    Atomics.and(this.#ctl, CTL_REQ, ~REQ_PAUSE);
    Atomics.notify(this.#ctl, CTL_REQ);
    this.#state = "Running";
  }

  /** Ends the run; {@link wait} resolves with `{ status: 0, reason: "stopped" }` unless it ended already. */
  async stop(): Promise<void> {
    await this.#finish({ status: 0, reason: "stopped" });
  }

  /** Resolves when the run ends: a device's stop request, a guest shutdown, an error or stop(). */
  wait(): Promise<MachineExit> {
    return this.#exitPromise;
  }

  /**
   * Quiesces every device with background work (the I/O devices): each
   * finishes its in-flight requests (and switches to an armed disk overlay)
   * and takes no new ones until {@link Machine.resumeDevices}. The vCPUs may
   * keep running; their notifications wait in the queues.
   */
  async quiesceDevices(): Promise<void> {
    await Promise.all(this.#devices.map((d) => d.quiesce?.()));
  }

  /** Lets quiesced devices work again (returns at once; no device round trip). */
  resumeDevices(): void {
    for (const d of this.#devices) d.resume?.();
  }

  /** The I/O devices' MMIO windows and GSIs (what ACPI tables and the command line announce). */
  get mmioDevices(): readonly MmioSlot[] {
    return this.#io.slots;
  }

  /** The handle of drive `id` (for checkpoints and drive replacement). */
  disk(id: string): DiskHandle | undefined {
    return this.#io.disk(id);
  }

  /** Network interface `id` (its TAP, MAC and counters), if the machine has it. */
  net(id: string): NetInterface | undefined {
    return this.#io.nets.get(id);
  }

  /** Every network interface, in configuration order. */
  nets(): NetInterface[] {
    return [...this.#io.nets.values()];
  }

  /** Every drive's handle. */
  disks(): DiskHandle[] {
    return this.#io.disks();
  }

  /**
   * Device states by name (the machine must not be running, and devices
   * with background work must be quiesced: {@link Machine.quiesceDevices}).
   */
  saveDevices(): Record<string, Uint8Array> {
    this.#requireStill("saveDevices()");
    const busy = this.#devices.find((d) => d.quiesced === false);
    if (busy !== undefined) {
      throw new MachineError(`device '${busy.name}' is not quiesced; call quiesceDevices() first`);
    }
    return this.#bus.withLock(() => {
      const out: Record<string, Uint8Array> = {};
      for (const d of this.#devices) out[d.name] = d.save();
      return out;
    });
  }

  /**
   * Restores device states from {@link saveDevices} (machine not running).
   * Throws naming the first device that has no saved state or rejects it.
   */
  restoreDevices(states: Record<string, Uint8Array>): void {
    this.#requireStill("restoreDevices()");
    this.#bus.withLock(() => {
      for (const d of this.#devices) {
        const bytes = states[d.name];
        if (bytes === undefined) throw new MachineError(`no saved state for device '${d.name}'`);
        d.restore(bytes);
      }
    });
  }

  /**
   * Saves every vCPU's KVM state and the VM's irqchip, PIT and clock (machine
   * not running). MSRs are those of KVM's index list that this host can read;
   * CPUID is what the machine set (see `cpu_state_saver.ts`).
   */
  saveCpuState(): MachineCpuState {
    this.#requireStill("saveCpuState()");
    return this.#cpuSaver.save(this.vm, this.vcpus, () => this.#waitParked());
  }

  /** Restores {@link saveCpuState}'s result (machine Created or Paused; same vCPU count). */
  restoreCpuState(state: MachineCpuState): void {
    this.restoreState(state);
  }

  /**
   * Restores a saved machine: CPU state ({@link saveCpuState}'s) and, when
   * given, device states ({@link saveDevices}'). Before the first start the
   * vCPU threads set their own vCPUs while this thread restores the devices
   * and runs `meanwhile` (e.g. writing guest memory); it returns once every
   * vCPU is set.
   */
  restoreState(
    state: MachineCpuState,
    opts: { devices?: Record<string, Uint8Array>; meanwhile?: () => void } = {},
  ): RestoreStateTimes {
    const devices = opts.devices;
    this.#requireStill("restoreCpuState()");
    if (state.vcpus.length !== this.vcpuCount) {
      throw new MachineError(
        `saved state has ${state.vcpus.length} vCPUs, this machine ${this.vcpuCount}`,
      );
    }
    state.vcpus.forEach((s, i) => {
      if (s.id !== this.vcpus[i]?.id) {
        throw new MachineError(`saved vCPU ${s.id} does not match vCPU ${i}`);
      }
    });
    const t0 = performance.now();
    // Before the first start each vCPU thread, waiting at the start gate, sets its own state.
    const slots = this.#loadSlots;
    const own = this.#state === "Created" && this.#exit === undefined &&
      state.vcpus.every((s, i) => slots.store(i, s, this.#cpuSaver.hasCpuid(i, s.cpuid)));
    const epoch = own ? slots.request() : 0;
    if (own) {
      Atomics.add(this.#ctl, CTL_GO, GO_EVENT);
      Atomics.notify(this.#ctl, CTL_GO);
    }
    const t1 = performance.now();
    restoreVmState(this.vm, state.vm);
    if (!own) {
      state.vcpus.forEach((s, i) => {
        const v = this.vcpus[i];
        if (v !== undefined) restoreVcpuState(v, s);
      });
    }
    const t2 = performance.now();
    if (devices !== undefined) this.restoreDevices(devices);
    opts.meanwhile?.();
    const t3 = performance.now();
    if (own) this.#waitVcpuLoads(state, epoch);
    state.vcpus.forEach((s, i) => this.#cpuSaver.setCpuid(i, s.cpuid));
    const t4 = performance.now();
    return { slotsMs: t1 - t0, vmMs: t2 - t1, devicesMs: t3 - t2, vcpusMs: t4 - t3 };
  }

  /** Waits (bounded) for every vCPU thread to load its slot for `epoch`; throws for a failure. */
  #waitVcpuLoads(state: MachineCpuState, epoch: number): void {
    const slots = this.#loadSlots;
    const deadline = performance.now() + LOAD_TIMEOUT_MS;
    for (let i = 0; i < this.vcpuCount; i++) {
      let r;
      for (;;) {
        r = slots.wait(i, epoch, Math.min(deadline, performance.now() + REKICK_MS));
        if (r !== undefined) break;
        if (Atomics.load(this.#ctl, CTL_VCPU0 + i) === VcpuRunState.EXITED) {
          throw new MachineError(`vcpu ${i} ended before it loaded its state`);
        }
        if (performance.now() > deadline) {
          throw new MachineError(`vcpu ${i} did not load its state in ${LOAD_TIMEOUT_MS} ms`);
        }
      }
      if (r.errno !== 0) {
        const detail = r.piece === "msrs"
          ? `KVM refused MSR 0x${
            (msrEntries(state.vcpus[i]?.msrs ?? new Uint8Array())[r.msrsSet]?.index ?? 0)
              .toString(16)
          }`
          : `KVM_SET_${LOAD_CALLS[r.piece ?? "regs"]} failed`;
        throw new KvmError(`restore vcpu ${i}`, r.errno, detail);
      }
    }
  }

  /** Waits (synchronously, bounded) until no vCPU is still saving its own state. */
  #waitParked(): void {
    const deadline = performance.now() + STOP_TIMEOUT_MS;
    for (let i = 0; i < this.vcpuCount; i++) {
      const idx = CTL_VCPU0 + i;
      while (Atomics.load(this.#ctl, idx) === VcpuRunState.STOPPED) {
        if (performance.now() > deadline) {
          throw new MachineError(`vcpu ${i} did not finish saving its state`);
        }
        Atomics.wait(this.#ctl, idx, VcpuRunState.STOPPED, REKICK_MS);
      }
    }
  }

  #requireStill(what: string): void {
    if (this.#state === "Running" || this.#pausing !== undefined) {
      throw new MachineError(`${what} needs a machine that is not running; call pause() first`);
    }
    if (this.#closed) throw new MachineError(`${what} on a disposed machine`);
  }

  /** Main-thread instance of a device, e.g. to push serial input. */
  device(name: string): Device | undefined {
    return this.#bus.device(name);
  }

  /** The pthread ids of the vCPU Workers (distinct threads; 0n before a Worker is up). */
  threadIds(): bigint[] {
    return Array.from(this.#threads, (t) => BigInt.asUintN(64, t));
  }

  /** The main-thread device bus (its lock guards host-side device work). */
  get bus(): DeviceBus {
    return this.#bus;
  }

  #kickOne(i: number): void {
    const tid = this.#threads[i] ?? 0n;
    const vcpu = this.vcpus[i];
    const s = Atomics.load(this.#ctl, CTL_VCPU0 + i);
    if (tid === 0n || vcpu === undefined || s === VcpuRunState.EXITED) return;
    kick(BigInt.asUintN(64, tid), vcpu.runAddr);
  }

  #kickAll(): void {
    for (let i = 0; i < this.vcpuCount; i++) this.#kickOne(i);
  }

  #workerExited(): void {
    this.#exitedCount++;
    if (this.#exitedCount >= this.vcpuCount) this.#onAllExited?.();
  }

  /** Stops every vCPU (once) and resolves the exit with the first cause. */
  #finish(exit: MachineExit): Promise<void> {
    if (this.#exit === undefined) this.#exit = exit;
    if (this.#finishing !== undefined) return this.#finishing;
    this.#finishing = (async () => {
      Atomics.or(this.#ctl, CTL_REQ, REQ_STOP);
      Atomics.notify(this.#ctl, CTL_REQ);
      Atomics.add(this.#ctl, CTL_GO, GO_EVENT);
      Atomics.notify(this.#ctl, CTL_GO);
      traceStartup("machine: finish");
      this.#kickAll();
      await this.#terminateWorkers();
      traceStartup("machine: workers terminated");
      // Output a vCPU thread buffered (in shared state) reaches its sink before wait() resolves.
      for (const d of this.#devices) d.flush?.();
      this.#state = "Stopped";
      this.#resolveExit(this.#exit ?? exit);
    })();
    return this.#finishing;
  }

  /** Waits (bounded) for every Worker to leave its loop, re-kicking, then terminates them. */
  async #terminateWorkers(): Promise<void> {
    Atomics.or(this.#ctl, CTL_REQ, REQ_STOP);
    Atomics.notify(this.#ctl, CTL_REQ);
    Atomics.add(this.#ctl, CTL_GO, GO_EVENT);
    Atomics.notify(this.#ctl, CTL_GO);
    const deadline = Date.now() + STOP_TIMEOUT_MS;
    while (this.#exitedCount < this.#workers.length && Date.now() < deadline) {
      this.#kickAll();
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, 5);
        this.#onAllExited = () => {
          clearTimeout(t);
          resolve();
        };
      });
    }
    this.#onAllExited = undefined;
    for (const w of this.#workers) w.terminate();
  }

  /** Stops the run if needed and releases vCPUs, memory, the VM and /dev/kvm. */
  async [Symbol.asyncDispose](): Promise<void> {
    if (this.#closed) return;
    await this.#finish({ status: 0, reason: "stopped" });
    this.#closed = true;
    // A vCPU whose Worker never left KVM_RUN (it ignored every kick) keeps its
    // kvm_run mapping: unmapping it under the thread could crash the process.
    let stuck = 0;
    this.vcpus.forEach((v, i) => {
      if (Atomics.load(this.#ctl, CTL_VCPU0 + i) === VcpuRunState.EXITED) v.close();
      else stuck++;
    });
    if (stuck > 0) {
      console.error(`machine: ${stuck} vCPU thread(s) did not stop; their mappings are leaked`);
      return;
    }
    await this.#io.close();
    this.memory.close();
    this.vm.close();
    this.kvm.close();
    for (const f of this.#disposers.splice(0).reverse()) await f();
    traceStartup("machine: disposed");
  }

  /**
   * Runs `fn` when the machine is disposed, after its memory is unmapped
   * (what a restore keeps for the machine's lifetime: the userfaultfd that
   * fills RAM, the source mappings, the shared page store).
   */
  onDispose(fn: () => void | Promise<void>): void {
    this.#disposers.push(fn);
  }
}
