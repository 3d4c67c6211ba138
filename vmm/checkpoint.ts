/**
 * The VMM side of checkpoints: {@link MachineTarget} implements
 * `checkpoint/`'s {@link CheckpointTarget} for a {@link Machine}, and
 * {@link restoreMachine} rebuilds a machine from a checkpoint file with its
 * RAM filled lazily from the file.
 *
 * @example
 * ```ts
 * import { checkpointerFor, restoreMachine } from "./checkpoint.ts";
 * import type { Machine } from "./machine.ts";
 * declare const vm: Machine;
 * const cp = await checkpointerFor(vm);
 * const save = await cp.checkpoint({ path: "/tmp/vm.ckpt" });
 * await save.done;
 * await using restored = await restoreMachine("/tmp/vm.ckpt");
 * await restored.machine.start();
 * ```
 *
 * @module
 */

import { Checkpointer, type CheckpointerOptions } from "../checkpoint/live.ts";
import { CheckpointError } from "../checkpoint/errors.ts";
import { openCheckpoint } from "../checkpoint/reader.ts";
import { MemorySource } from "../checkpoint/restore.ts";
import type { CheckpointTarget, MachineCpuState, TargetRegion } from "../checkpoint/target.ts";
import type { DeviceSpec } from "./devices/spec.ts";
import { Machine, type MachineConfig } from "./machine.ts";
import { HostMemory, type MemoryBacking } from "./memory.ts";

/** What the `config` section records of a machine (enough to rebuild it). */
export interface MachineDescription {
  /** Guest RAM in MiB. */
  memMiB: number;
  /** vCPU count. */
  vcpus: number;
  /** Kernel command line it was booted with (informational). */
  cmdline: string;
  /** Devices: kind, name, config and the size of their shared state. */
  devices: Array<
    { kind: string; name: string; config: Record<string, unknown>; stateBytes: number }
  >;
  /** Module of the device factory, when not the built-in one. */
  deviceModule?: string;
}

/** Describes `m` for its checkpoint. */
export function describeMachine(m: Machine): MachineDescription {
  const c = m.config;
  return {
    memMiB: c.memMiB,
    vcpus: c.vcpus,
    cmdline: c.cmdline ?? "",
    devices: c.devices.map((d) => ({
      kind: d.kind,
      name: d.name,
      config: { ...d.config },
      stateBytes: d.state.byteLength,
    })),
    ...(c.deviceModule === undefined ? {} : { deviceModule: c.deviceModule }),
  };
}

/** A {@link Machine} as `checkpoint/` sees it. */
export class MachineTarget implements CheckpointTarget {
  readonly machine: Machine;
  readonly regions: readonly TargetRegion[];

  constructor(machine: Machine) {
    this.machine = machine;
    this.regions = machine.memory.regions.map((r) => ({
      guestAddr: r.guestAddr,
      size: r.size,
      hostAddr: r.hostAddr,
    }));
  }

  get paused(): boolean {
    return this.machine.state !== "Running";
  }

  describe(): Record<string, unknown> {
    return { ...describeMachine(this.machine) };
  }

  pause(): Promise<void> {
    return this.machine.pause({ saveCpuState: true });
  }

  resume(): Promise<void> {
    return this.machine.resume();
  }

  // The legacy devices do no I/O of their own; quiesce belongs to the I/O
  // device model (virtio), whose Machine hooks these will call.
  quiesceDevices(): Promise<void> {
    return Promise.resolve();
  }

  resumeDevices(): Promise<void> {
    return Promise.resolve();
  }

  saveCpuState(): MachineCpuState {
    return this.machine.saveCpuState();
  }

  saveDevices(): Record<string, Uint8Array> {
    return this.machine.saveDevices();
  }
}

const checkpointers = new WeakMap<Machine, Checkpointer>();

/** The machine's checkpointer (one per machine; created on first use). */
export async function checkpointerFor(
  m: Machine,
  opts: CheckpointerOptions = {},
): Promise<Checkpointer> {
  const have = checkpointers.get(m);
  if (have !== undefined) return have;
  const cp = await Checkpointer.create(new MachineTarget(m), opts);
  checkpointers.set(m, cp);
  return cp;
}

/** Options of {@link restoreMachine}. */
export interface RestoreOptions {
  /** Replaces a device's recorded config (e.g. the serial output), by device name. */
  deviceConfig?: Record<string, Record<string, unknown>>;
  /** Backing of the new RAM (default anonymous). */
  memoryBacking?: MemoryBacking;
  /** Options of the machine's checkpointer. */
  checkpointer?: Omit<CheckpointerOptions, "sources" | "restoredFrom">;
}

/** A machine restored from a checkpoint, with what keeps its RAM filling. */
export class RestoredMachine implements AsyncDisposable {
  /** The machine (Created: call `start()`). */
  readonly machine: Machine;
  /** Its checkpointer (owns the userfaultfd that fills RAM). */
  readonly checkpointer: Checkpointer;
  readonly #source: MemorySource;

  constructor(machine: Machine, checkpointer: Checkpointer, source: MemorySource) {
    this.machine = machine;
    this.checkpointer = checkpointer;
    this.#source = source;
  }

  /** Stops the machine, then releases its memory, the userfaultfd and the source mappings. */
  async [Symbol.asyncDispose](): Promise<void> {
    await this.machine[Symbol.asyncDispose]();
    this.checkpointer.close();
    this.#source.close();
  }
}

function isDescription(d: unknown): d is MachineDescription {
  if (typeof d !== "object" || d === null) return false;
  const m = d as Record<string, unknown>;
  return Number.isInteger(m.memMiB) && Number.isInteger(m.vcpus) && Array.isArray(m.devices) &&
    (m.devices as unknown[]).every((x) => {
      const e = x as Record<string, unknown>;
      return typeof e.kind === "string" && typeof e.name === "string" &&
        typeof e.config === "object" && e.config !== null && Number.isInteger(e.stateBytes) &&
        (e.stateBytes as number) > 0 && (e.stateBytes as number) <= 16 << 20;
    });
}

/**
 * Rebuilds the machine of the checkpoint at `path` (following a diff's
 * parents): fresh RAM filled lazily from the files, CPU and device state
 * restored; nothing is written to the checkpoint. Resolves before the guest
 * runs: call `start()` on the result's machine.
 */
export async function restoreMachine(
  path: string,
  opts: RestoreOptions = {},
): Promise<RestoredMachine> {
  const chain = await openCheckpoint(path);
  let source: MemorySource | undefined;
  let machine: Machine | undefined;
  try {
    const top = chain.top;
    const desc = top.config.machine;
    if (!isDescription(desc)) {
      throw new CheckpointError("not written by a vmkit machine", { path, section: "config" });
    }
    const memBytes = desc.memMiB * 1024 * 1024;
    if (memBytes !== top.header.memBytes) {
      throw new CheckpointError(`${desc.memMiB} MiB does not match the header`, {
        path,
        section: "config",
      });
    }
    const memory = HostMemory.create(
      memBytes,
      opts.memoryBacking === undefined ? {} : { backing: opts.memoryBacking },
    );
    if (
      memory.regions.length !== top.pages.length ||
      memory.regions.some((r, i) =>
        r.guestAddr !== top.pages[i]?.guestAddr || r.size !== top.pages[i]?.size
      )
    ) {
      memory.close();
      throw new CheckpointError("its memory layout is not this vmkit's", {
        path,
        section: "config",
      });
    }
    const specs: DeviceSpec[] = desc.devices.map((d) => ({
      kind: d.kind,
      name: d.name,
      config: opts.deviceConfig?.[d.name] ?? d.config,
      state: new SharedArrayBuffer(d.stateBytes),
    }));
    const config: MachineConfig = {
      memMiB: desc.memMiB,
      vcpus: desc.vcpus,
      cmdline: desc.cmdline,
      devices: specs,
      memory,
      ...(desc.deviceModule === undefined ? {} : { deviceModule: desc.deviceModule }),
    };
    source = MemorySource.map(chain);
    machine = await Machine.create(config);
    const target = new MachineTarget(machine);
    const cp = await Checkpointer.create(target, {
      ...opts.checkpointer,
      sources: source.addrs,
      restoredFrom: { path, id: top.header.id },
    });
    checkpointers.set(machine, cp);
    machine.restoreCpuState(top.cpuState());
    machine.restoreDevices(top.devices());
    return new RestoredMachine(machine, cp, source);
  } catch (err) {
    if (machine !== undefined) await machine[Symbol.asyncDispose]();
    source?.close();
    throw err;
  } finally {
    chain.close();
  }
}
