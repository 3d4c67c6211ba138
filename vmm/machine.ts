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

import { loadShim } from "../native/ffi.ts";
import { type AcpiLayout, buildAcpi } from "./acpi/build.ts";
import { acpiConfigFromSpecs, writeAcpi } from "./acpi/install.ts";
import { pcIrqRoutes } from "./acpi/irq_routing.ts";
import {
  installKickHandler,
  kick,
  Kvm,
  KVM_CAP_SYNC_REGS,
  msrEntries,
  msrsBlob,
  type Vcpu,
  type Vm,
} from "../native/kvm.ts";
import {
  type MachineCpuState,
  restoreVcpuState,
  restoreVmState,
  saveVcpuState,
  saveVmState,
} from "../native/kvm_state.ts";
import { loadKernel } from "./boot/mod.ts";
import type { BootPlan } from "./boot/types.ts";
import { guestCpuid } from "./cpuid.ts";
import { CpuStateSaver } from "./cpu_state_saver.ts";
import { takeVcpuWorkers } from "./vcpu_pool.ts";
import { DeviceBus } from "./devices/bus.ts";
import type { Device, DeviceEnv } from "./devices/device.ts";
import { type MmioSlot, nextFreeGsi } from "./devices/mmio_allocator.ts";
import { VirtioMmioTransport } from "./devices/virtio/mmio.ts";
import type { DiskHandle } from "./disk_handle.ts";
import {
  IDENTITY_MAP_ADDR,
  type MachineConfig,
  MachineError,
  type MachineExit,
  type MachineState,
  mergeSregs,
  resetRegs,
  TSS_ADDR,
  validate,
} from "./machine_config.ts";
import { MachineIo, type NetInterface } from "./machine_io.ts";
import { HostMemory } from "./memory.ts";
import { blkFamilies, netFamilies } from "./metrics/device_metrics.ts";
import { MachineMetrics } from "./metrics/machine_metrics.ts";
import {
  controlBytes,
  CTL_GO,
  CTL_REQ,
  CTL_VCPU0,
  loadDeviceFactory,
  REQ_PAUSE,
  REQ_STOP,
  type VcpuInit,
  type VcpuMessage,
  VcpuRunState,
} from "./vcpu.ts";

export * from "./machine_config.ts";

/** `MSR_IA32_MISC_ENABLE`; bit 0 = fast strings, as firmware leaves it. */
const MSR_IA32_MISC_ENABLE = 0x1a0;
/** How long stop() waits for Workers to leave their loops before terminating them. */
const STOP_TIMEOUT_MS = 2000;
/** Interval at which pause() repeats its kicks while a vCPU has not parked yet. */
const REKICK_MS = 2;
/** How long a pause for a checkpoint waits for its vCPUs synchronously before yielding. */
const SYNC_PAUSE_MS = 10;

/** The command line the kernel gets: the caller's, plus the I/O devices' entries unless told not to. */
function kernelCmdline(config: MachineConfig, io: MachineIo): string {
  const base = config.cmdline ?? "";
  if (config.announceOnCmdline === false) return base;
  const extra = io.cmdline();
  return extra === "" ? base : base === "" ? extra : `${base} ${extra}`;
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
  /** The ACPI tables and generation id page in guest memory (undefined with `acpi: false`). */
  readonly acpi: AcpiLayout | undefined;

  #state: MachineState = "Created";
  readonly #control: SharedArrayBuffer;
  readonly #ctl: Int32Array;
  readonly #threads: BigInt64Array;
  readonly #workers: Worker[];
  readonly #devices: Device[];
  readonly #bus: DeviceBus;
  readonly #io: MachineIo;
  #exit: MachineExit | undefined;
  #finishing: Promise<void> | undefined;
  #pausing: Promise<void> | undefined;
  readonly #exitPromise: Promise<MachineExit>;
  #resolveExit: (e: MachineExit) => void = () => {};
  #exitedCount = 0;
  #onAllExited: (() => void) | undefined;
  #closed = false;
  #cpuSaver: CpuStateSaver | undefined;
  readonly #disposers: (() => void | Promise<void>)[] = [];

  private constructor(
    kvm: Kvm,
    vm: Vm,
    memory: HostMemory,
    vcpus: Vcpu[],
    bootPlan: BootPlan | undefined,
    devices: Device[],
    bus: DeviceBus,
    workers: Worker[],
    io: MachineIo,
    config: MachineConfig,
    acpi: AcpiLayout | undefined,
  ) {
    this.config = config;
    this.acpi = acpi;
    this.#workers = workers;
    this.#io = io;
    this.kvm = kvm;
    this.vm = vm;
    this.memory = memory;
    this.vcpus = vcpus;
    this.vcpuCount = vcpus.length;
    this.bootPlan = bootPlan;
    this.metrics = new MachineMetrics(vcpus.length);
    this.metrics.registry.add(() => netFamilies(this.nets()));
    this.metrics.registry.add(() => blkFamilies(this.disks()));
    this.#devices = devices;
    this.#bus = bus;
    this.#control = new SharedArrayBuffer(controlBytes(vcpus.length));
    this.#ctl = new Int32Array(this.#control);
    this.#threads = new BigInt64Array(new SharedArrayBuffer(8 * vcpus.length));
    this.#exitPromise = new Promise((resolve) => this.#resolveExit = resolve);
  }

  /**
   * Builds the VM, memory, vCPUs and devices and loads the kernel; the vCPU
   * Workers are started and wait for {@link Machine.start}.
   */
  static async create(config: MachineConfig): Promise<Machine> {
    validate(config);
    const lib = await loadShim();
    const loader = config.loader ?? loadKernel;
    installKickHandler();
    // Workers load their modules on their own threads while the VM is built here
    // (pooled ones, started ahead by `prewarmVcpuWorkers`, have done so already).
    const workers = takeVcpuWorkers(config.vcpus);
    const cleanup: (() => void)[] = [() => workers.forEach((w) => w.terminate())];
    let kvm: Kvm;
    try {
      kvm = Kvm.open();
    } catch (err) {
      workers.forEach((w) => w.terminate());
      throw err;
    }
    cleanup.push(() => kvm.close());
    let io: MachineIo | undefined;
    const undo = async (): Promise<void> => {
      await io?.close();
      for (const f of cleanup.reverse()) f();
    };
    let machine: Machine;
    try {
      const vm = kvm.createVm();
      cleanup.push(() => vm.close());
      vm.setTssAddr(TSS_ADDR);
      vm.setIdentityMapAddr(IDENTITY_MAP_ADDR);
      vm.createIrqchip();
      vm.createPit2();
      // The PIT on IOAPIC pin 2, as the MADT's IRQ0->GSI2 override says.
      if (config.acpi !== false) vm.setGsiRouting(pcIrqRoutes());
      const memory = config.memory ?? HostMemory.create(
        config.memMiB * 1024 * 1024,
        config.memoryBacking === undefined ? {} : { backing: config.memoryBacking },
      );
      if (memory.size !== config.memMiB * 1024 * 1024) {
        throw new MachineError(
          `the given memory is ${memory.size} bytes, not ${config.memMiB} MiB`,
        );
      }
      cleanup.push(() => memory.close());
      memory.register(vm);
      io = config.drives === undefined && config.nets === undefined &&
          config.virtioDevices === undefined
        ? MachineIo.none()
        : await MachineIo.start(config, memory.regions);
      io.attach(vm.fd);

      const supported = kvm.supportedCpuid();
      const vcpus: Vcpu[] = [];
      const cpuid = [];
      for (let id = 0; id < config.vcpus; id++) {
        const vcpu = vm.createVcpu(id);
        cleanup.push(() => vcpu.close());
        cpuid.push(guestCpuid(supported, id, config.vcpus));
        vcpu.setCpuid(cpuid[id] ?? []);
        // Fast strings on, as firmware leaves it (when this KVM knows the MSR).
        if (msrEntries(vcpu.getMsrs([MSR_IA32_MISC_ENABLE])).length === 1) {
          vcpu.setMsrs(msrsBlob([{ index: MSR_IA32_MISC_ENABLE, value: 1n }]));
        }
        vcpus.push(vcpu);
      }

      // The tables are written for a fresh boot; restored memory already holds them.
      // The generation id's notification takes the next line after the devices'.
      const acpiConfig = acpiConfigFromSpecs(
        config.vcpus,
        config.devices,
        io.slots,
        nextFreeGsi(io.slots),
      );
      const acpi = config.acpi === false ? undefined : buildAcpi(acpiConfig);
      let plan: BootPlan | undefined;
      if (config.kernel !== undefined) {
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
      } else if (config.memory === undefined) {
        throw new MachineError("a kernel is needed unless memory is given (a restore)");
      }

      const busLock = DeviceBus.createLock();
      // Main-thread devices may ask to stop once the machine exists.
      const owner: { machine?: Machine } = {};
      const env: DeviceEnv = {
        setIrq: (gsi, level) => vm.irqLine(gsi, level),
        requestStop: (status, reason) => {
          const m = owner.machine;
          if (m !== undefined) void m.#finish({ status, reason });
        },
      };
      const devices = [
        ...(await loadDeviceFactory(config.deviceModule))(config.devices, env),
        ...io.specs.map((spec) => new VirtioMmioTransport(spec)),
      ];
      const bus = new DeviceBus(devices, busLock);
      machine = new Machine(kvm, vm, memory, vcpus, plan, devices, bus, workers, io, config, acpi);
      machine.#cpuSaver = CpuStateSaver.create(
        vcpus,
        cpuid,
        kvm.msrIndexList(),
        kvm.checkExtension(KVM_CAP_SYNC_REGS),
      );
      owner.machine = machine;
      await machine.#init(lib.path, config, busLock);
    } catch (err) {
      await undo();
      throw err;
    }
    return machine;
  }

  async #init(libPath: string, config: MachineConfig, busLock: SharedArrayBuffer): Promise<void> {
    const ready: Promise<void>[] = [];
    for (const vcpu of this.vcpus) {
      const w = this.#workers[vcpu.id];
      if (w === undefined) throw new MachineError(`no Worker for vcpu ${vcpu.id}`);
      ready.push(
        new Promise<void>((resolve, reject) => {
          w.onmessage = (e: MessageEvent<VcpuMessage>) => {
            const msg = e.data;
            if (msg.type === "ready") resolve();
            else if (msg.type === "stop") {
              reject(new MachineError(msg.reason));
              this.#finish({ status: msg.status, reason: msg.reason });
            } else if (msg.type === "exited") this.#workerExited();
          };
          w.onerror = (e: ErrorEvent) => {
            e.preventDefault();
            const reason = `vcpu ${vcpu.id} worker failed: ${e.message}`;
            reject(new MachineError(reason));
            this.#finish({ status: 1, reason });
            this.#workerExited();
          };
        }),
      );
      const init: VcpuInit = {
        libPath,
        vmFd: this.vm.fd,
        vcpuFd: vcpu.fd,
        id: vcpu.id,
        runAddr: vcpu.runAddr,
        runSize: vcpu.runSize,
        xsaveSize: vcpu.xsaveSize,
        control: this.#control,
        threads: this.#threads.buffer as SharedArrayBuffer,
        devices: config.devices,
        ioDevices: this.#io.specs,
        busLock,
        exitCounters: this.metrics.exits,
        ...(config.deviceModule === undefined ? {} : { deviceModule: config.deviceModule }),
        ...(this.#cpuSaver === undefined ? {} : { stateSlots: this.#cpuSaver.init }),
      };
      w.postMessage(init);
    }
    try {
      await Promise.all(ready);
    } catch (err) {
      await this.#terminateWorkers();
      throw err;
    }
  }

  /** Current lifecycle state. */
  get state(): MachineState {
    return this.#state;
  }

  /** Lets every vCPU enter the guest. */
  start(): Promise<void> {
    if (this.#state !== "Created") {
      return Promise.reject(
        new MachineError(`start() needs a Created machine, it is ${this.#state}`),
      );
    }
    this.#state = "Running";
    Atomics.store(this.#ctl, CTL_GO, 1);
    Atomics.notify(this.#ctl, CTL_GO);
    return Promise.resolve();
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
    const epoch = saveState ? this.#cpuSaver?.request() : undefined;
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
      if (epoch !== undefined) this.#cpuSaver?.paused(epoch);
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
    this.#cpuSaver?.resumed();
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
    const saver = this.#cpuSaver;
    if (saver !== undefined) return saver.save(this.vm, this.vcpus, () => this.#waitParked());
    const msrs = this.kvm.msrIndexList();
    return { vcpus: this.vcpus.map((v) => saveVcpuState(v, msrs)), vm: saveVmState(this.vm) };
  }

  /** Restores {@link saveCpuState}'s result (machine Created or Paused; same vCPU count). */
  restoreCpuState(state: MachineCpuState): void {
    this.#requireStill("restoreCpuState()");
    if (state.vcpus.length !== this.vcpuCount) {
      throw new MachineError(
        `saved state has ${state.vcpus.length} vCPUs, this machine ${this.vcpuCount}`,
      );
    }
    restoreVmState(this.vm, state.vm);
    state.vcpus.forEach((s, i) => {
      const v = this.vcpus[i];
      if (v === undefined || s.id !== v.id) {
        throw new MachineError(`saved vCPU ${s.id} does not match vCPU ${i}`);
      }
      restoreVcpuState(v, s);
      this.#cpuSaver?.setCpuid(i, s.cpuid);
    });
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
      Atomics.notify(this.#ctl, CTL_GO);
      this.#kickAll();
      await this.#terminateWorkers();
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
