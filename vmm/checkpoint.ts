/**
 * The VMM side of checkpoints: {@link MachineTarget} implements
 * `checkpoint/`'s {@link CheckpointTarget} for a {@link Machine}, and
 * {@link restoreMachine} rebuilds a machine from a checkpoint file with its
 * RAM filled lazily from the file.
 *
 * @example
 * ```ts ignore
 * import { checkpointerFor, restoreMachine } from "./checkpoint.ts";
 * import type { Machine } from "./machine.ts";
 * declare const vm: Machine; // a running machine: not available to a doc test
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
import type {
  CheckpointDisk,
  CheckpointTarget,
  DiskInfo,
  MachineCpuState,
  TargetRegion,
} from "../checkpoint/target.ts";
import type { DeviceSpec } from "./devices/spec.ts";
import { Machine, type MachineConfig } from "./machine.ts";
import type { HostMemory, MemoryBacking } from "./memory.ts";
import { x86Layout } from "./guest_memory.ts";
import { StandbyMachine } from "./standby.ts";
import type { MetricFamily } from "./metrics/prometheus.ts";
import type { DriveConfig, NetConfig, StorageIdentityConfig } from "./io_config.ts";
import { defaultMac, formatMac, NetConfigSpace, parseMac } from "./devices/virtio/net_format.ts";
import { configOffset, W } from "./devices/virtio/layout.ts";
import { STATE_HEADER_BYTES } from "./devices/state.ts";
import { checkLayer, checkLunLayer, parseDisksRecord } from "../checkpoint/disks.ts";
import type { RecordedLayer } from "../checkpoint/disks.ts";
import { IscsiBlockDevice } from "../san/iscsi_block_device.ts";
import { parseIscsiUrl } from "../san/iscsi_url.ts";
import { lunIdentity } from "../san/lun_identity.ts";
import { resolveInitiatorName } from "./machine_io.ts";
import { dirOf } from "../checkpoint/file_io.ts";
import { Qcow2Image } from "../cow/qcow2.ts";
import { newVmGenId } from "./acpi/install.ts";
import { VMGENID_SIZE } from "./acpi/build.ts";

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
  /** virtio-blk drives as configured (their images at the pause are in the `disks` section). */
  drives?: DriveConfig[];
  /** virtio-net interfaces (host TAPs: reattached at restore unless overridden). */
  nets?: NetConfig[];
  /** The storage identity (VM id and SUI registry). */
  identity?: StorageIdentityConfig;
  /** Whether the machine has ACPI tables (false when turned off). */
  acpi?: boolean;
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
    ...(c.drives === undefined || c.drives.length === 0 ? {} : { drives: [...c.drives] }),
    ...(c.nets === undefined || c.nets.length === 0 ? {} : { nets: [...c.nets] }),
    ...(c.identity === undefined ? {} : { identity: c.identity }),
    ...(c.acpi === false ? { acpi: false } : {}),
  };
}

/** A {@link Machine} as `checkpoint/` sees it. */
export class MachineTarget implements CheckpointTarget {
  /** The machine. */
  readonly machine: Machine;
  /** Its RAM regions as host ranges. */
  readonly regions: readonly TargetRegion[];

  /** The target of `machine`. */
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

  quiesceDevices(): Promise<void> {
    return this.machine.quiesceDevices();
  }

  resumeDevices(): Promise<void> {
    this.machine.resumeDevices();
    return Promise.resolve();
  }

  disks(): CheckpointDisk[] {
    return this.machine.disks().map((h) => ({
      id: h.id,
      describe: async (): Promise<DiskInfo> => {
        const d = await h.describe();
        return {
          id: d.id,
          kind: d.kind,
          readOnly: d.readOnly,
          size: d.size,
          layers: d.layers.map((l) => ({
            path: l.path,
            format: l.format,
            size: l.size,
            ...(l.lun === undefined ? {} : { lun: l.lun }),
          })),
          ...(d.url === undefined ? {} : { url: d.url }),
        };
      },
      lunIdentity: () => h.lunIdentity(),
      armOverlay: async (path: string): Promise<void> => {
        await h.armOverlay(path);
      },
      disarm: async (): Promise<void> => {
        await h.disarm();
      },
      commit: async (): Promise<void> => {
        await h.commit();
      },
    }));
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
  addMetrics(m, cp);
  return cp;
}

/** The checkpoint families of `GET /metrics` for `m`. */
function addMetrics(m: Machine, cp: Checkpointer): void {
  m.metrics.registry.add((): MetricFamily[] => {
    const p = cp.progress();
    const c = cp.counters();
    const rows: Array<[string, "gauge" | "counter", string, number]> = [
      [
        "vmkit_checkpoint_in_progress",
        "gauge",
        "1 while a checkpoint is being written.",
        cp.busy ? 1 : 0,
      ],
      [
        "vmkit_checkpoint_bytes_written",
        "gauge",
        "Bytes of the current or last checkpoint handled so far.",
        p?.bytesWritten ?? 0,
      ],
      [
        "vmkit_checkpoint_bytes_total",
        "gauge",
        "Bytes of the current or last checkpoint.",
        p?.bytesTotal ?? 0,
      ],
      [
        "vmkit_checkpoint_pause_seconds",
        "gauge",
        "How long the last checkpoint stopped the VM.",
        (p?.pauseUs ?? 0) / 1e6,
      ],
      [
        "vmkit_checkpoint_write_faults_total",
        "counter",
        "Write-protect faults taken by guest writes (tracking and copy-before-write).",
        c?.faults ?? 0,
      ],
      [
        "vmkit_checkpoint_copied_pages_total",
        "counter",
        "Pages copied before the guest changed them during a save.",
        c?.copies ?? 0,
      ],
      [
        "vmkit_restore_filled_pages_total",
        "counter",
        "Pages of restored RAM filled from the checkpoint on first access.",
        c?.missing ?? 0,
      ],
      [
        "vmkit_restore_shared_pages_total",
        "counter",
        "Pages mapped from the page store another clone already filled.",
        c?.minor ?? 0,
      ],
    ];
    return rows.map(([name, type, help, value]) => ({ name, type, help, samples: [{ value }] }));
  });
}

/** Options of {@link restoreMachine}. */
export interface RestoreOptions {
  /**
   * A machine built ahead for the checkpoint's shape (memory, vCPUs, ACPI,
   * memory backing), as a VMM waiting for a snapshot has it: used up when it
   * fits; one that does not fit is left alone and a new one is built (see
   * {@link RestoredMachine.usedStandby}).
   */
  standby?: StandbyMachine;
  /** Replaces a device's recorded config (e.g. the serial output), by device name. */
  deviceConfig?: Record<string, Record<string, unknown>>;
  /**
   * The restoring VMM's own legacy devices for a guest of `memMiB` MiB: a
   * recorded device with the same name and kind takes its config (its host
   * side: COM1 on this VMM's console); `deviceConfig` still wins.
   */
  hostDevices?: (memMiB: number) => DeviceSpec[];
  /** Backing of the new RAM (default anonymous; a given standby's must match). */
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
  /**
   * Folder of the fresh qcow2 overlays the restored VM's writable disks run
   * in (default: the checkpoint's folder); the checkpoint's images are never
   * written. They are the restored VM's disks: kept after it stops.
   */
  diskDir?: string;
  /**
   * A new VM id (a clone's): its own storage identity (SUI) and, for NICs
   * without an override, its own MAC. Default: the recorded one.
   */
  vmId?: string;
  /** Host side of NICs by interface id (e.g. another TAP for a clone); default as recorded. */
  nets?: Record<string, Partial<Pick<NetConfig, "tap" | "netns" | "mac">>>;
}

/**
 * Where a restore's time went (ms, host clock), in order; the phases not
 * marked as parts add up to {@link RestorePhases.totalMs}, from the call to
 * the machine ready to start.
 */
export interface RestorePhases {
  /** Opening the file (and a diff's parents): header, commit record, sections checked. */
  openMs: number;
  /** Building a standby machine (0 when a fitting one was given). */
  standbyMs: number;
  /** Checking and opening the disks (a fresh overlay per writable one), the page store. */
  disksMs: number;
  /** Devices on the main thread and sent to the vCPU threads, I/O devices started. */
  machineMs: number;
  /** Mapping memory: the checkpoint's source mappings, RAM over the page store, the userfaultfd. */
  memoryMs: number;
  /** Reading and decoding the CPU and device state sections. */
  decodeMs: number;
  /**
   * Machine state, in all: {@link RestorePhases.slotsMs},
   * {@link RestorePhases.vmMs}, {@link RestorePhases.devicesMs} and
   * {@link RestorePhases.vcpusMs}.
   */
  stateMs: number;
  /** (Part of `stateMs`) vCPU state into the load slots, the vCPU threads asked to load it. */
  slotsMs: number;
  /** (Part of `stateMs`) irqchip, PIT and clock, while the vCPU threads set their vCPUs. */
  vmMs: number;
  /** (Part of `stateMs`) device state and the new VM generation id written into RAM. */
  devicesMs: number;
  /** (Part of `stateMs`) waiting for the vCPU threads to finish setting their vCPUs. */
  vcpusMs: number;
  /** The generation id's notification (its interrupt). */
  vmGenIdMs: number;
  /** All of it. */
  totalMs: number;
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
  /** Whether the given standby machine was used (false: none given, or it did not fit). */
  readonly usedStandby: boolean;
  /** Where the restore's time went. */
  readonly phases: RestorePhases;
  readonly #source: MemorySource;

  /** Wraps what {@link restoreMachine} built. */
  constructor(
    machine: Machine,
    checkpointer: Checkpointer,
    source: MemorySource,
    pageStore: PageStore | undefined,
    vmGenId: Uint8Array | undefined,
    usedStandby = false,
    phases?: RestorePhases,
  ) {
    this.usedStandby = usedStandby;
    this.phases = phases ?? {
      openMs: 0,
      standbyMs: 0,
      disksMs: 0,
      machineMs: 0,
      memoryMs: 0,
      decodeMs: 0,
      stateMs: 0,
      slotsMs: 0,
      vmMs: 0,
      devicesMs: 0,
      vcpusMs: 0,
      vmGenIdMs: 0,
      totalMs: 0,
    };
    this.vmGenId = vmGenId;
    this.machine = machine;
    this.checkpointer = checkpointer;
    this.#source = source;
    this.pageStore = pageStore;
  }

  /**
   * Stops the machine, then releases its memory, the userfaultfd, the sources
   * and the store (disposing the machine itself does the same).
   */
  async [Symbol.asyncDispose](): Promise<void> {
    await this.machine[Symbol.asyncDispose]();
  }
}

/**
 * The saved device states with each NIC whose MAC changed (a clone's
 * `vmId`, an override) showing the new MAC in its virtio-net config space
 * and a new config generation, so a guest that re-reads the space (the
 * vmgenid notification is its cue) finds it.
 */
function withMacs(
  states: Record<string, Uint8Array>,
  recorded: readonly NetConfig[],
  now: readonly NetConfig[],
): Record<string, Uint8Array> {
  const out = { ...states };
  for (const n of now) {
    const was = recorded.find((r) => r.id === n.id)?.mac;
    const state = out[n.id];
    if (n.mac === undefined || n.mac === was || state === undefined) continue;
    const copy = state.slice();
    const cfg = STATE_HEADER_BYTES + configOffset() + NetConfigSpace.MAC;
    if (copy.length < cfg + 6) continue;
    copy.set(parseMac(n.id, n.mac), cfg);
    const dv = new DataView(copy.buffer);
    const gen = STATE_HEADER_BYTES + W.CONFIG_GENERATION * 4;
    dv.setUint32(gen, dv.getUint32(gen, true) + 1, true);
    out[n.id] = copy;
  }
  return out;
}

/**
 * The restored machine's device specs: each recorded device with the
 * restoring VMM's config where it has a device of that name and kind
 * (`hostDevices`, else the standby's own), `deviceConfig` winning. When
 * they are exactly the standby's devices (names, kinds, configs, state
 * sizes), the standby's own specs, which its threads have built already.
 */
function restoredDeviceSpecs(
  desc: MachineDescription,
  opts: RestoreOptions,
  standby: StandbyMachine,
): DeviceSpec[] {
  const own = standby.devices;
  const hostList = opts.hostDevices?.(desc.memMiB) ?? own;
  const host = new Map(hostList.map((d) => [d.name, d]));
  const configs = desc.devices.map((d) => {
    const h = host.get(d.name);
    return opts.deviceConfig?.[d.name] ??
      (h !== undefined && h.kind === d.kind ? { ...h.config } : d.config);
  });
  if (own.length === desc.devices.length) {
    const byName = new Map(own.map((d) => [d.name, d]));
    const same = desc.devices.every((d, i) => {
      const o = byName.get(d.name);
      return o !== undefined && o.kind === d.kind && o.state.byteLength === d.stateBytes &&
        sameValue(o.config, configs[i]);
    });
    if (same) return [...own];
  }
  return desc.devices.map((d, i) => ({
    kind: d.kind,
    name: d.name,
    config: configs[i] ?? d.config,
    state: new SharedArrayBuffer(d.stateBytes),
  }));
}

/** Structural equality of JSON-like values (key order ignored). */
function sameValue(a: unknown, b: unknown): boolean {
  if (a === b) return true;
  if (typeof a !== "object" || typeof b !== "object" || a === null || b === null) return false;
  if (Array.isArray(a) !== Array.isArray(b)) return false;
  const ka = Object.keys(a);
  const kb = Object.keys(b);
  const ra = a as Record<string, unknown>;
  const rb = b as Record<string, unknown>;
  return ka.length === kb.length && ka.every((k) => k in rb && sameValue(ra[k], rb[k]));
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

/**
 * Logs in to a recorded LUN under the restored VM's SUI, read-only, and
 * refuses it unless it is the LUN the checkpoint recorded (same identity).
 */
async function checkRecordedLun(
  driveId: string,
  layer: RecordedLayer,
  identity: StorageIdentityConfig | undefined,
  checkpoint: string,
): Promise<void> {
  const url = layer.lun?.url ?? layer.path;
  if (identity === undefined) {
    throw new CheckpointError(
      `drive '${driveId}' is over the iSCSI LUN ${url}, and the checkpoint records no storage ` +
        "identity to log in with",
      { path: checkpoint, section: "disks" },
    );
  }
  const u = parseIscsiUrl(url);
  let dev: IscsiBlockDevice;
  try {
    dev = await IscsiBlockDevice.open({
      host: u.host,
      port: u.port,
      targetName: u.target ?? "",
      lun: u.lun ?? 0,
      initiatorName: await resolveInitiatorName(identity),
      readOnly: true,
    });
  } catch (err) {
    throw new CheckpointError(
      `drive '${driveId}': cannot open the iSCSI LUN ${url} as VM '${identity.vmId}' ` +
        `(${(err as Error).message})`,
      { path: checkpoint, section: "disks" },
    );
  }
  try {
    checkLunLayer(driveId, layer, await lunIdentity(dev), checkpoint);
  } finally {
    await dev.close();
  }
}

/**
 * The restored VM's drives: each recorded chain checked against its
 * identities (a LUN logged in to under the restored VM's SUI), a writable
 * disk given a fresh qcow2 overlay over the recorded top (the checkpoint's
 * images are only read; over a LUN its backing file is the LUN's URL), a
 * read-only one opened as is.
 */
async function restoredDrives(
  path: string,
  desc: MachineDescription,
  disksSection: Record<string, unknown> | undefined,
  opts: RestoreOptions,
  identity: StorageIdentityConfig | undefined,
  made: string[],
): Promise<DriveConfig[]> {
  const configured = desc.drives ?? [];
  if (configured.length === 0) return [];
  if (disksSection === undefined) {
    throw new CheckpointError("the machine has drives but the checkpoint records no disks", {
      path,
      section: "disks",
    });
  }
  const record = parseDisksRecord(disksSection, path);
  const byId = new Map(record.disks.map((d) => [d.id, d]));
  for (const d of configured) {
    const r = byId.get(d.id);
    if (r === undefined) {
      throw new CheckpointError(`drive '${d.id}' is not among the recorded disks`, {
        path,
        section: "disks",
      });
    }
    for (const layer of r.layers) {
      if (layer.lun === undefined) checkLayer(d.id, layer, path);
      else await checkRecordedLun(d.id, layer, identity, path);
    }
  }
  const dir = opts.diskDir ?? dirOf(path);
  const base = path.slice(path.lastIndexOf("/") + 1);
  return configured.map((d): DriveConfig => {
    const r = byId.get(d.id);
    const top = r?.layers[0];
    if (r === undefined || top === undefined) throw new CheckpointError(`no image for '${d.id}'`);
    if (r.readOnly) {
      if (top.lun !== undefined) return { ...d, backend: { kind: "iscsi", url: top.lun.url } };
      return { ...d, backend: { kind: "file", path: top.path, format: top.format } };
    }
    const overlay = `${dir}/${base}.${d.id}.${crypto.randomUUID().slice(0, 8)}.qcow2`;
    Qcow2Image.create(overlay, {
      size: r.size,
      backingFile: top.lun !== undefined ? top.lun.url : relativePath(dir, top.path),
      backingFormat: top.format,
    });
    made.push(overlay);
    return { ...d, backend: { kind: "file", path: overlay, format: "qcow2" } };
  });
}

/** `to` relative to folder `from` (both made absolute). */
function relativePath(from: string, to: string): string {
  const abs = (p: string): string[] =>
    (p.startsWith("/") ? p : `${Deno.cwd()}/${p}`).split("/").filter((x) => x !== "" && x !== ".");
  const a = abs(from);
  const b = abs(to);
  let i = 0;
  while (i < a.length && i < b.length && a[i] === b[i]) i++;
  return [...a.slice(i).map(() => ".."), ...b.slice(i)].join("/") || ".";
}

function isDescription(d: unknown): d is MachineDescription {
  if (typeof d !== "object" || d === null) return false;
  const m = d as Record<string, unknown>;
  const records = (x: unknown, ok: (e: Record<string, unknown>) => boolean): boolean =>
    x === undefined ||
    (Array.isArray(x) &&
      x.every((e) => typeof e === "object" && e !== null && ok(e as Record<string, unknown>)));
  const drivesOk = records(m.drives, (d) => {
    const b = d.backend as Record<string, unknown> | undefined;
    return typeof d.id === "string" && typeof b === "object" && b !== null &&
      (b.kind === "file" || b.kind === "iscsi");
  });
  const netsOk = records(m.nets, (n) => typeof n.id === "string" && typeof n.tap === "string");
  return drivesOk && netsOk && Number.isInteger(m.memMiB) && Number.isInteger(m.vcpus) &&
    Array.isArray(m.devices) &&
    (m.devices as unknown[]).every((x) => {
      const e = x as Record<string, unknown>;
      return typeof e.kind === "string" && typeof e.name === "string" &&
        typeof e.config === "object" && e.config !== null && Number.isInteger(e.stateBytes) &&
        (e.stateBytes as number) > 0 && (e.stateBytes as number) <= 16 << 20;
    });
}

/**
 * Rebuilds the machine of the checkpoint at `path` (following a diff's
 * parents) on a standby machine (`opts.standby` when it fits, else one
 * built here): fresh RAM filled lazily from the files, CPU and device state
 * restored; nothing is written to the checkpoint. Resolves before the guest
 * runs: call `start()` on the result's machine.
 */
export async function restoreMachine(
  path: string,
  opts: RestoreOptions = {},
): Promise<RestoredMachine> {
  const clock = new PhaseClock();
  const chain = await openCheckpoint(path, { pageCrcs: false });
  let source: MemorySource | undefined;
  let machine: Machine | undefined;
  let store: PageStore | undefined;
  let own: StandbyMachine | undefined;
  const overlays: string[] = [];
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
    const layout = x86Layout(memBytes);
    if (
      layout.length !== top.pages.length ||
      layout.some(([guestAddr, size], i) =>
        guestAddr !== top.pages[i]?.guestAddr || size !== top.pages[i]?.size
      )
    ) {
      throw new CheckpointError("its memory layout is not this vmkit's", {
        path,
        section: "config",
      });
    }
    const openMs = clock.lap();
    const shape = {
      memMiB: desc.memMiB,
      vcpus: desc.vcpus,
      acpi: desc.acpi !== false,
      ...(opts.memoryBacking === undefined ? {} : { memoryBacking: opts.memoryBacking }),
    };
    const given = opts.standby !== undefined && opts.standby.fits(shape);
    const standby = given && opts.standby !== undefined
      ? opts.standby
      : (own = await StandbyMachine.create(shape));
    const standbyMs = clock.lap();
    const specs = restoredDeviceSpecs(desc, opts, standby);
    const identity = desc.identity === undefined
      ? undefined
      : { ...desc.identity, ...(opts.vmId === undefined ? {} : { vmId: opts.vmId }) };
    const drives = await restoredDrives(path, desc, top.disks(), opts, identity, overlays);
    const nets = (desc.nets ?? []).map((n): NetConfig => {
      const o = opts.nets?.[n.id] ?? {};
      const mac = o.mac ??
        (opts.vmId === undefined ? n.mac : formatMac(defaultMac(opts.vmId, n.id)));
      return { ...n, ...o, ...(mac === undefined ? {} : { mac }) };
    });
    const config: MachineConfig = {
      memMiB: desc.memMiB,
      vcpus: desc.vcpus,
      cmdline: desc.cmdline,
      devices: specs,
      announceOnCmdline: false,
      ...(opts.memoryBacking === undefined ? {} : { memoryBacking: opts.memoryBacking }),
      ...(desc.deviceModule === undefined ? {} : { deviceModule: desc.deviceModule }),
      ...(drives.length === 0 ? {} : { drives }),
      ...(nets.length === 0 ? {} : { nets }),
      ...(identity === undefined ? {} : { identity }),
      ...(desc.acpi === false ? { acpi: false } : {}),
    };
    if (opts.pageStore !== false && opts.memoryBacking !== "memfd") {
      const dir = opts.pageStore ?? DEFAULT_PAGE_STORE_DIR;
      store = PageStore.open(dir, idHex(top.header.id), memBytes);
    }
    const disksMs = clock.lap();
    machine = await Machine.fromStandby(standby, config);
    own = undefined; // the machine owns it now
    const machineMs = clock.lap();
    // No vCPU has run: the memory slots stay, their pages now come from the store.
    const memory = machine.memory;
    source = MemorySource.map(chain);
    const stores = store === undefined ? undefined : mapStore(memory, store);
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
    addMetrics(machine, cp);
    const src = source;
    const st = store;
    machine.onDispose(() => {
      cp.close();
      src.close();
      st?.close();
    });
    const memoryMs = clock.lap();
    const devices = withMacs(top.devices(), desc.nets ?? [], nets);
    const cpu = top.cpuState();
    const decodeMs = clock.lap();
    const loc = machine.vmGenIdLocation;
    const genId = opts.vmGenId === false || loc === undefined
      ? undefined
      : opts.vmGenId ?? newVmGenId();
    const m = machine;
    // The vCPU threads set their vCPUs while this thread restores the devices and writes the id.
    const times = machine.restoreState(cpu, {
      devices,
      meanwhile: () => {
        if (genId !== undefined && loc !== undefined) writeGenId(m, cp, loc.addr, genId);
      },
    });
    const stateMs = clock.lap();
    // After the irqchip and LAPIC state: the notification must not be overwritten by them.
    if (genId !== undefined && loc?.gsi !== undefined) {
      machine.vm.irqLine(loc.gsi, true);
      machine.vm.irqLine(loc.gsi, false);
    }
    const vmGenIdMs = clock.lap();
    return new RestoredMachine(machine, cp, source, store, genId, given, {
      openMs,
      standbyMs,
      disksMs,
      machineMs,
      memoryMs,
      decodeMs,
      stateMs,
      ...times,
      vmGenIdMs,
      totalMs: clock.total(),
    });
  } catch (err) {
    if (machine !== undefined) await machine[Symbol.asyncDispose]();
    await own?.[Symbol.asyncDispose]();
    source?.close();
    store?.close();
    for (const f of overlays) {
      try {
        Deno.removeSync(f);
      } catch (e) {
        if (!(e instanceof Deno.errors.NotFound)) throw e;
      }
    }
    throw err;
  } finally {
    chain.close();
  }
}

/**
 * Writes the new VM generation id into restored RAM through the
 * checkpointer: on this thread, with no userfaultfd round trip (its page is
 * lazily restored, and the fault thread may wait for a core under load).
 */
function writeGenId(m: Machine, cp: Checkpointer, gpa: number, id: Uint8Array): void {
  if (id.length !== VMGENID_SIZE) {
    throw new CheckpointError(`a VM generation id is ${VMGENID_SIZE} bytes, got ${id.length}`);
  }
  const r = m.memory.regions[m.memory.regionIndex(gpa, id.length)];
  if (r === undefined || !cp.writeMemory(r.hostAddr + BigInt(gpa - r.guestAddr), id)) {
    m.memory.write(gpa, id);
  }
}

/** Laps of the host clock (ms). */
class PhaseClock {
  readonly #t0 = performance.now();
  #last = this.#t0;

  /** Milliseconds since the last lap (or the start). */
  lap(): number {
    const now = performance.now();
    const ms = now - this.#last;
    this.#last = now;
    return ms;
  }

  /** Milliseconds since the start. */
  total(): number {
    return this.#last - this.#t0;
  }
}
