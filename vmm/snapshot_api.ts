/**
 * The control API's snapshot routes (issue 10.7), served by every control
 * socket through `vmm/api/extensions.ts`:
 *
 * | method | path               | body                                                          | reply                               |
 * | ------ | ------------------ | ------------------------------------------------------------- | ----------------------------------- |
 * | PUT    | `/snapshot/create` | `{snapshot_path, mem_file_path?, snapshot_type?, disk_policy?, disk_overlays?}` | 200 `{pause_us}` / 204 (see below) |
 * | GET    | `/snapshot`        |                                                               | 200 `{state, bytes_written, ...}`   |
 * | PUT    | `/snapshot/load`   | `{snapshot_path, resume_vm?, network_overrides?}` (pre-boot)   | 204 once the VM is rebuilt          |
 *
 * `snapshot_type` is `Full` (default) or `Diff` (only the pages written since
 * this VM's previous checkpoint), `disk_policy` `keep-parent` (default) or
 * `copy-parent`; `disk_overlays` (vmkit's) names the qcow2 overlay a drive's
 * disk step creates, `[{"drive_id": "d1", "path_on_host": "/srv/d1.ckpt.qcow2"}]`
 * (a new file), which a drive that is an iSCSI LUN needs: the overlay's
 * backing file is then the LUN's `iscsi://` URL and the LUN is the
 * checkpoint's frozen parent (`checkpoint/disks.ts`). Unlike Firecracker, the
 * VM need not be paused first: the checkpoint pauses it briefly and resumes
 * it, answers 200 `{pause_us}` as soon as the VM runs again, and writes the
 * file in the background, which `GET /snapshot` reports (`state`: `saving`,
 * `done` or `failed`). A VM paused at `create` (Firecracker's precondition)
 * stays paused and gets Firecracker's reply: 204 once the file is complete,
 * or a 400 if it failed, so a Firecracker client may copy the files or end
 * the VMM as soon as it answers. One checkpoint at a time: a second `create`
 * while one is written gets 409. `load` is Firecracker's: only on a fresh
 * VMM; `resume_vm` starts the restored VM, else it stays paused until
 * `PATCH /vm {"state": "Resumed"}`. Firecracker's other load fields are taken:
 * `track_dirty_pages`/`enable_diff_snapshots` (nothing to switch on: diffs are
 * always possible), `mem_backend` `File` or `mem_file_path` (one of them, and
 * it must be the memory file the checkpoint records), `huge_pages`
 * `Snapshot`/`None`, `clock_realtime: false`; anything vmkit cannot honour
 * (a UFFD backend, `clock_realtime: true`, a vsock override) is a 400.
 *
 * @module
 */

import type { DiskPolicy, LiveSave } from "../checkpoint/mod.ts";
import { CheckpointError } from "../checkpoint/errors.ts";
import { CheckpointFile } from "../checkpoint/reader.ts";
import { openUffdShim } from "../native/uffd_ffi.ts";
import type { ApiVm, VmController } from "./api/controller.ts";
import { machineApiVm } from "./api/launch.ts";
import { ApiFault, type ApiRoute, json, noContent, onlyFields } from "./api/router.ts";
import { checkpointerFor, restoreMachine, type RestoreOptions } from "./checkpoint.ts";
import type { DeviceSpec } from "./devices/spec.ts";
import type { Machine } from "./machine.ts";

/** What the VMM that restores a snapshot brings of its own (its host side). */
export interface SnapshotHost {
  /**
   * This VMM's legacy devices for a guest of `memMiB` MiB (e.g. COM1 on its
   * own stdout): a recorded device of the same name and kind takes their
   * config, so the restored guest's console is this VMM's.
   */
  devices?(memMiB: number): DeviceSpec[];
  /** Restore options (a clone's VM id, NIC overrides, page store, disk folder). */
  restore?: Omit<RestoreOptions, "deviceConfig" | "hostDevices">;
}

const hosts = new WeakMap<VmController, SnapshotHost>();

/** Sets the host side `ctl`'s snapshot loads use (the CLI calls it for its controller). */
export function setSnapshotHost(ctl: VmController, host: SnapshotHost): void {
  hosts.set(ctl, host);
}

interface LastSave {
  path: string;
  type: "Full" | "Diff";
  save: LiveSave;
}

const saves = new WeakMap<Machine, LastSave>();

function str(body: Record<string, unknown>, key: string, required: boolean): string | undefined {
  const v = body[key];
  if (v === undefined && !required) return undefined;
  if (typeof v !== "string" || v === "") {
    throw new ApiFault(400, `'${key}' must be a non-empty string`);
  }
  if (v.includes("\0")) throw new ApiFault(400, `'${key}' must not contain NUL`);
  return v;
}

/** `disk_overlays`: `[{drive_id, path_on_host}]` as a map from drive id to path. */
function diskOverlays(v: unknown): Record<string, string> {
  const out: Record<string, string> = {};
  if (v === undefined) return out;
  if (!Array.isArray(v)) throw new ApiFault(400, "'disk_overlays' must be an array");
  for (const o of v as unknown[]) {
    const e = o as Record<string, unknown>;
    if (
      typeof o !== "object" || o === null || typeof e.drive_id !== "string" ||
      typeof e.path_on_host !== "string" || e.path_on_host === "" ||
      e.path_on_host.includes("\0") || Object.keys(e).some((k) =>
        k !== "drive_id" && k !== "path_on_host"
      )
    ) {
      throw new ApiFault(400, 'each disk overlay is {"drive_id": ..., "path_on_host": ...}');
    }
    if (e.drive_id in out) throw new ApiFault(400, `two overlays for drive '${e.drive_id}'`);
    out[e.drive_id] = e.path_on_host;
  }
  return out;
}

function oneOf<T extends string>(
  body: Record<string, unknown>,
  key: string,
  values: readonly T[],
  fallback: T,
): T {
  const v = body[key];
  if (v === undefined) return fallback;
  if (typeof v !== "string" || !(values as readonly string[]).includes(v)) {
    throw new ApiFault(
      400,
      `'${key}' must be one of ${values.join(", ")}, got ${JSON.stringify(v)}`,
    );
  }
  return v as T;
}

/** The machine of a started VM, or a 400. */
function machineOf(vm: ApiVm): Machine {
  if (vm.machine === undefined) throw new ApiFault(400, "this VM cannot be checkpointed");
  return vm.machine;
}

/** The API view of a restored machine: Paused until started (`PATCH /vm Resumed` starts it). */
export function restoredApiVm(machine: Machine): ApiVm {
  const base = machineApiVm(machine);
  return {
    ...base,
    get state(): string {
      return machine.state === "Created" ? "Paused" : machine.state;
    },
    pause: () => machine.state === "Created" ? Promise.resolve() : machine.pause(),
    resume: () => machine.state === "Created" ? machine.start() : machine.resume(),
  };
}

/**
 * Records a restored machine in the controller's resources, so `GET
 * /vm/config` shows its vCPUs, memory, drives and interfaces and `PATCH
 * /drives`, `PATCH /network-interfaces` find them, as after Firecracker's
 * load (its boot source stays empty).
 */
function recordRestored(ctl: VmController, m: Machine): void {
  const r = ctl.resources;
  r.machine = { ...r.machine, vcpu_count: m.config.vcpus, mem_size_mib: m.config.memMiB };
  for (const d of m.config.drives ?? []) {
    r.putDrive({
      drive_id: d.id,
      path_on_host: d.backend.kind === "file" ? d.backend.path : d.backend.url,
      is_root_device: d.root ?? false,
      is_read_only: d.readOnly ?? false,
      cache_type: "Unsafe",
      io_engine: "Sync",
    });
  }
  for (const n of m.config.nets ?? []) {
    r.putNet({
      iface_id: n.id,
      host_dev_name: n.tap,
      ...(n.mac === undefined ? {} : { guest_mac: n.mac }),
      ...(n.mtu === undefined ? {} : { mtu: n.mtu }),
      ...(n.netns === undefined ? {} : { netns: n.netns }),
    });
  }
}

/** Options of {@link loadSnapshot}. */
export interface LoadRequest {
  /** The checkpoint file. */
  readonly path: string;
  /** Start the restored VM (else it waits, paused). */
  readonly resume: boolean;
  /** Host TAP per interface id (Firecracker's `network_overrides`). */
  readonly taps?: Readonly<Record<string, string>>;
}

/**
 * Restores the checkpoint at `req.path` as `ctl`'s VM (pre-boot only; what
 * `PUT /snapshot/load` and `vmkit run --restore` do).
 */
export function loadSnapshot(ctl: VmController, req: LoadRequest): Promise<ApiVm> {
  return ctl.adopt(async () => {
    const host = hosts.get(ctl) ?? {};
    const nets = { ...host.restore?.nets };
    for (const [id, tap] of Object.entries(req.taps ?? {})) nets[id] = { ...nets[id], tap };
    let restored;
    try {
      restored = await restoreMachine(req.path, {
        ...host.restore,
        nets,
        ...(host.devices === undefined ? {} : { hostDevices: host.devices }),
      });
    } catch (err) {
      if (err instanceof CheckpointError) throw new ApiFault(400, err.message);
      throw err;
    }
    const m = restored.machine;
    recordRestored(ctl, m);
    if (req.resume) {
      try {
        await m.start();
      } catch (err) {
        await m[Symbol.asyncDispose]();
        throw err;
      }
    }
    return restoredApiVm(m);
  });
}

/**
 * Refuses a memory file other than the one the checkpoint at `path` records
 * (vmkit reads memory from there; a different file would be ignored).
 */
async function checkMemFile(path: string, memPath: string): Promise<void> {
  await openUffdShim();
  let recorded: string;
  try {
    using f = CheckpointFile.open(path, { pageCrcs: false });
    recorded = f.memPath ?? path;
  } catch (err) {
    if (err instanceof CheckpointError) throw new ApiFault(400, err.message);
    if (err instanceof Error) throw new ApiFault(400, `cannot open '${path}': ${err.message}`);
    throw err;
  }
  let same = false;
  try {
    const a = Deno.statSync(recorded);
    const b = Deno.statSync(memPath);
    same = a.dev === b.dev && a.ino === b.ino;
  } catch (_err) {
    same = false; // a missing file is not the recorded one
  }
  if (!same) {
    throw new ApiFault(
      400,
      `the memory file '${memPath}' is not the one the checkpoint records ('${recorded}'): ` +
        "vmkit reads memory from the file named in the checkpoint",
    );
  }
}

/** The routes (see the module doc). */
export function snapshotRoutes(ctl: VmController): ApiRoute[] {
  return [
    {
      method: "PUT",
      path: "/snapshot/create",
      handler: async (ctx) => {
        const body = await ctx.body();
        onlyFields(body, [
          "snapshot_path",
          "mem_file_path",
          "snapshot_type",
          "disk_policy",
          "disk_overlays",
          "version",
        ]);
        const overlays = diskOverlays(body.disk_overlays);
        const path = str(body, "snapshot_path", true) ?? "";
        const memFilePath = str(body, "mem_file_path", false);
        const type = oneOf(body, "snapshot_type", ["Full", "Diff"] as const, "Full");
        const diskPolicy = oneOf<DiskPolicy>(
          body,
          "disk_policy",
          ["keep-parent", "copy-parent"],
          "keep-parent",
        );
        const made = await ctl.serial(async () => {
          const machine = machineOf(ctl.requireStarted());
          if (machine.state !== "Running" && machine.state !== "Paused") {
            throw new ApiFault(400, `cannot checkpoint a VM that is ${machine.state}`);
          }
          const paused = machine.state === "Paused";
          const cp = await checkpointerFor(machine);
          if (cp.busy) {
            throw new ApiFault(
              409,
              "a checkpoint is being written; wait until GET /snapshot says done or failed",
            );
          }
          let save: LiveSave;
          try {
            save = await cp.checkpoint({
              path,
              ...(memFilePath === undefined ? {} : { memFilePath }),
              diff: type === "Diff",
              diskPolicy,
              overlays,
            });
          } catch (err) {
            if (err instanceof CheckpointError) throw new ApiFault(400, err.message);
            throw err;
          }
          saves.set(machine, { path, type, save });
          return { save, paused };
        });
        if (!made.paused) return json(200, { pause_us: made.save.pauseUs });
        // Firecracker's create (of a paused VM, as it requires) answers 204 once the snapshot is
        // complete: its clients copy the files or kill the VMM then. The VM stays paused anyway.
        try {
          await made.save.done;
        } catch (err) {
          throw new ApiFault(
            400,
            `the snapshot failed: ${err instanceof Error ? err.message : err}`,
          );
        }
        return noContent();
      },
    },
    {
      method: "GET",
      path: "/snapshot",
      handler: () => {
        const vm = ctl.requireStarted();
        const last = vm.machine === undefined ? undefined : saves.get(vm.machine);
        if (last === undefined) throw new ApiFault(404, "no snapshot has been created by this VM");
        const p = last.save.progress();
        return json(200, {
          state: p.state,
          bytes_written: p.bytesWritten,
          bytes_total: p.bytesTotal,
          snapshot_path: last.path,
          snapshot_type: last.type,
          pause_us: last.save.pauseUs,
          ...(p.error === undefined ? {} : { error: p.error }),
          ...(p.warning === undefined ? {} : { warning: p.warning }),
        });
      },
    },
    {
      method: "PUT",
      path: "/snapshot/load",
      handler: async (ctx) => {
        const body = await ctx.body();
        onlyFields(body, [
          "snapshot_path",
          "resume_vm",
          "mem_file_path",
          "mem_backend",
          "enable_diff_snapshots",
          "track_dirty_pages",
          "network_overrides",
          "clock_realtime",
          "huge_pages",
          "vsock_override",
        ]);
        const path = str(body, "snapshot_path", true) ?? "";
        const resume = body.resume_vm ?? false;
        if (typeof resume !== "boolean") throw new ApiFault(400, "'resume_vm' must be a boolean");
        // Dirty tracking needs no switch in vmkit: a diff checkpoint is always possible.
        for (const key of ["enable_diff_snapshots", "track_dirty_pages", "clock_realtime"]) {
          const v = body[key];
          if (v !== undefined && v !== null && typeof v !== "boolean") {
            throw new ApiFault(400, `'${key}' must be a boolean`);
          }
        }
        if (body.clock_realtime === true) {
          throw new ApiFault(
            400,
            "'clock_realtime': vmkit restores the guest's clocks as they were saved (use false)",
          );
        }
        const huge = body.huge_pages;
        if (huge !== undefined && huge !== null && huge !== "Snapshot" && huge !== "None") {
          throw new ApiFault(
            400,
            `'huge_pages' must be "Snapshot" or "None" (vmkit maps a checkpoint's memory with ` +
              `4 KiB pages), got ${JSON.stringify(huge)}`,
          );
        }
        if (body.vsock_override !== undefined && body.vsock_override !== null) {
          throw new ApiFault(400, "'vsock_override': vmkit has no vsock device");
        }
        const mem = body.mem_backend;
        let memPath: string | undefined;
        if (mem !== undefined && mem !== null) {
          const m = mem as Record<string, unknown>;
          if (
            typeof mem !== "object" || m.backend_type !== "File" ||
            typeof m.backend_path !== "string"
          ) {
            throw new ApiFault(
              400,
              '\'mem_backend\' must be {"backend_type": "File", "backend_path": ...}: vmkit fills memory ' +
                "itself from the checkpoint's memory (lazily), no external page-fault handler",
            );
          }
          memPath = m.backend_path;
          if (body.mem_file_path !== undefined && body.mem_file_path !== null) {
            throw new ApiFault(400, "give either 'mem_backend' or 'mem_file_path', not both");
          }
        } else {
          memPath = str(body, "mem_file_path", false);
        }
        if (memPath !== undefined) await checkMemFile(path, memPath);
        const taps: Record<string, string> = {};
        const overrides = body.network_overrides ?? [];
        if (!Array.isArray(overrides)) {
          throw new ApiFault(400, "'network_overrides' must be an array");
        }
        for (const o of overrides as unknown[]) {
          const e = o as Record<string, unknown>;
          if (
            typeof o !== "object" || o === null || typeof e.iface_id !== "string" ||
            typeof e.host_dev_name !== "string"
          ) {
            throw new ApiFault(
              400,
              'each network override is {"iface_id": ..., "host_dev_name": ...}',
            );
          }
          taps[e.iface_id] = e.host_dev_name;
        }
        if (ctl.resources.bootSource !== undefined || ctl.resources.drives.length > 0) {
          throw new ApiFault(
            400,
            "Loading a microVM snapshot not allowed after configuring boot-specific resources.",
          );
        }
        ctl.requirePreBoot();
        await loadSnapshot(ctl, { path, resume, taps });
        return noContent();
      },
    },
  ];
}
