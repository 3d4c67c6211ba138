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
import { DEFAULT_PAGE_STORE_DIR, PageStore } from "../checkpoint/page_store.ts";
import { idHex } from "../checkpoint/format.ts";
import { check, uffd, UffdError } from "../native/uffd_ffi.ts";
import type { CheckpointTarget, MachineCpuState, TargetRegion } from "../checkpoint/target.ts";
import type { DeviceSpec } from "./devices/spec.ts";
import { Machine, type MachineConfig } from "./machine.ts";
import { HostMemory, type MemoryBacking } from "./memory.ts";
import { changeVmGenId, newVmGenId } from "./acpi/install.ts";

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
  checkpointer?: Omit<CheckpointerOptions, "sources" | "stores" | "restoredFrom">;
  /**
   * Folder of the shared page store (a tmpfs, default `/dev/shm`) through
   * which clones of one checkpoint share the pages they only read; `false`
   * fills RAM privately (each VM its own copy of every page it touches).
   * Ignored with a memfd backing.
   */
  pageStore?: string | false;
  /**
   * The VM generation id the restored guest sees (16 bytes), written to the
   * vmgenid page and announced by its interrupt; default a new random one,
   * so every restore and every clone gets its own. `false` keeps the
   * checkpoint's (a plain resume of the same VM).
   */
  vmGenId?: Uint8Array | false;
}

/** A machine restored from a checkpoint, with what keeps its RAM filling. */
export class RestoredMachine implements AsyncDisposable {
  /** The machine (Created: call `start()`). */
  readonly machine: Machine;
  /** Its checkpointer (owns the userfaultfd that fills RAM). */
  readonly checkpointer: Checkpointer;
  /** The shared page store its RAM is mapped from (undefined: RAM filled privately). */
  readonly pageStore: PageStore | undefined;
  /** The VM generation id given at the restore (undefined: unchanged, or no vmgenid device). */
  readonly vmGenId: Uint8Array | undefined;
  readonly #source: MemorySource;

  constructor(
    machine: Machine,
    checkpointer: Checkpointer,
    source: MemorySource,
    pageStore: PageStore | undefined,
    vmGenId: Uint8Array | undefined,
  ) {
    this.vmGenId = vmGenId;
    this.machine = machine;
    this.checkpointer = checkpointer;
    this.#source = source;
    this.pageStore = pageStore;
  }

  /** Stops the machine, then releases its memory, the userfaultfd, the sources and the store. */
  async [Symbol.asyncDispose](): Promise<void> {
    await this.machine[Symbol.asyncDispose]();
    this.checkpointer.close();
    this.#source.close();
    this.pageStore?.close();
  }
}

/** Maps each region of `memory` MAP_PRIVATE from `store` (regions back to back, as in the image). */
function mapStore(memory: HostMemory, store: PageStore): { fd: number; offset: number }[] {
  let offset = 0;
  return memory.regions.map((r) => {
    check(
      "mmap(page store)",
      uffd().vk_map_file_fixed(r.hostAddr, BigInt(r.size), store.fd, BigInt(offset)),
    );
    const at = { fd: store.fd, offset };
    offset += r.size;
    return at;
  });
}

/** Maps fresh anonymous memory over `[addr, addr+size)`. */
function mapAnon(addr: bigint, size: number): void {
  check("mmap(anonymous RAM)", uffd().vk_map_anon_fixed(addr, BigInt(size)));
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
  let store: PageStore | undefined;
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
    let stores: { fd: number; offset: number }[] | undefined;
    try {
      if (opts.pageStore !== false && opts.memoryBacking !== "memfd") {
        const dir = opts.pageStore ?? DEFAULT_PAGE_STORE_DIR;
        store = PageStore.open(dir, idHex(top.header.id), memBytes);
        if (store !== undefined) stores = mapStore(memory, store);
      }
    } catch (err) {
      memory.close(); // the machine owns it only once created
      throw err;
    }
    machine = await Machine.create(config);
    const target = new MachineTarget(machine);
    const cpOpts = {
      ...opts.checkpointer,
      sources: source.addrs,
      restoredFrom: { path, id: top.header.id },
    };
    let cp: Checkpointer;
    try {
      cp = await Checkpointer.create(target, stores === undefined ? cpOpts : { ...cpOpts, stores });
    } catch (err) {
      // A kernel without minor faults on shmem: fall back to private fills.
      if (stores === undefined || !(err instanceof UffdError)) throw err;
      for (const r of memory.regions) mapAnon(r.hostAddr, r.size);
      store?.close();
      store = undefined;
      cp = await Checkpointer.create(target, cpOpts);
    }
    checkpointers.set(machine, cp);
    machine.restoreCpuState(top.cpuState());
    machine.restoreDevices(top.devices());
    // After the irqchip state: the notification's edge must not be overwritten by it.
    const loc = machine.acpi?.vmgenid;
    const m = machine;
    const genId = opts.vmGenId === false || loc === undefined
      ? undefined
      : opts.vmGenId ?? newVmGenId();
    if (genId !== undefined && loc !== undefined) {
      changeVmGenId(m.memory, loc, genId, (gsi, level) => m.vm.irqLine(gsi, level));
    }
    return new RestoredMachine(machine, cp, source, store, genId);
  } catch (err) {
    if (machine !== undefined) await machine[Symbol.asyncDispose]();
    source?.close();
    store?.close();
    throw err;
  } finally {
    chain.close();
  }
}
