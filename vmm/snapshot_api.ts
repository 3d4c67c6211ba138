/**
 * The control API's snapshot routes (issue 10.7), served by every control
 * socket through `vmm/api/extensions.ts`:
 *
 * | method | path               | body                                                          | reply                               |
 * | ------ | ------------------ | ------------------------------------------------------------- | ----------------------------------- |
 * | PUT    | `/snapshot/create` | `{snapshot_path, mem_file_path?, snapshot_type?, disk_policy?}` | 200 `{pause_us}` once the VM runs  |
 * | GET    | `/snapshot`        |                                                               | 200 `{state, bytes_written, ...}`   |
 * | PUT    | `/snapshot/load`   | `{snapshot_path, resume_vm?, network_overrides?}` (pre-boot)   | 204 once the VM is rebuilt          |
 *
 * `snapshot_type` is `Full` (default) or `Diff` (only the pages written since
 * this VM's previous checkpoint), `disk_policy` `keep-parent` (default) or
 * `copy-parent`. Unlike Firecracker, the VM need not be paused first: the
 * checkpoint pauses it briefly and resumes it (a paused VM stays paused);
 * the file is written in the background, which `GET /snapshot` reports
 * (`state`: `saving`, `done` or `failed`). One checkpoint at a time: a second
 * `create` while one is written gets 409. `load` is Firecracker's: only on a
 * fresh VMM; `resume_vm` starts the restored VM, else it stays paused until
 * `PATCH /vm {"state": "Resumed"}`.
 *
 * @module
 */

import type { DiskPolicy, LiveSave } from "../checkpoint/mod.ts";
import { CheckpointError } from "../checkpoint/errors.ts";
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
          "version",
        ]);
        const path = str(body, "snapshot_path", true) ?? "";
        const memFilePath = str(body, "mem_file_path", false);
        const type = oneOf(body, "snapshot_type", ["Full", "Diff"] as const, "Full");
        const diskPolicy = oneOf<DiskPolicy>(
          body,
          "disk_policy",
          ["keep-parent", "copy-parent"],
          "keep-parent",
        );
        const pauseUs = await ctl.serial(async () => {
          const machine = machineOf(ctl.requireStarted());
          if (machine.state !== "Running" && machine.state !== "Paused") {
            throw new ApiFault(400, `cannot checkpoint a VM that is ${machine.state}`);
          }
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
            });
          } catch (err) {
            if (err instanceof CheckpointError) throw new ApiFault(400, err.message);
            throw err;
          }
          saves.set(machine, { path, type, save });
          return save.pauseUs;
        });
        return json(200, { pause_us: pauseUs });
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
          "network_overrides",
        ]);
        const path = str(body, "snapshot_path", true) ?? "";
        const resume = body.resume_vm ?? false;
        if (typeof resume !== "boolean") throw new ApiFault(400, "'resume_vm' must be a boolean");
        if (
          body.enable_diff_snapshots !== undefined &&
          typeof body.enable_diff_snapshots !== "boolean"
        ) {
          throw new ApiFault(400, "'enable_diff_snapshots' must be a boolean");
        }
        const mem = body.mem_backend;
        if (mem !== undefined) {
          const m = mem as Record<string, unknown>;
          if (typeof mem !== "object" || mem === null || m.backend_type !== "File") {
            throw new ApiFault(
              400,
              '\'mem_backend\' must be {"backend_type": "File", "backend_path": ...}: vmkit fills memory ' +
                "itself from the checkpoint's memory (lazily), no external page-fault handler",
            );
          }
        }
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
