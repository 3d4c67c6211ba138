/**
 * Building and starting a {@link Machine} from Firecracker-style
 * {@link VmResources} (what `InstanceStart`, `--config-file` and the CLI's
 * flags all end in), and the {@link ApiVm} view of a running machine that
 * the API drives.
 *
 * @module
 */

import { BootError } from "../boot/errors.ts";
import { I8042 } from "../devices/i8042.ts";
import type { DeviceSpec } from "../devices/spec.ts";
import type { DriveBackend, StorageIdentityConfig } from "../io_config.ts";
import type { Machine, MachineConfig } from "../machine.ts";
import type { ApiVm, DriveUpdate, NetUpdate } from "./controller.ts";
import { ApiFault } from "./router.ts";
import { isIscsiUrl, type VmResources } from "./vm_resources.ts";

/** What a launch needs besides the resources. */
export interface LaunchOptions {
  /** The machine's legacy devices (serial, i8042, …) for a guest of `memMiB` MiB. */
  devices(memMiB: number): DeviceSpec[];
  /** Kernel command line when the boot source gives no `boot_args`. */
  defaultCmdline: string;
  /** Storage identity the VM's SAN I/O logs in with (iSCSI drives need one). */
  identity?: StorageIdentityConfig;
  /** More machine settings (a device module, memory backing). */
  machine?: Partial<Pick<MachineConfig, "deviceModule" | "memoryBacking">>;
}

/** Raised when the files a boot source names cannot be read or booted. */
export class LaunchError extends Error {
  /** Creates the error. */
  constructor(message: string) {
    super(message);
    this.name = "LaunchError";
  }
}

async function readHostFile(what: string, path: string): Promise<Uint8Array> {
  try {
    return await Deno.readFile(path);
  } catch (err) {
    const why = err instanceof Deno.errors.NotFound
      ? "no such file"
      : err instanceof Deno.errors.PermissionDenied
      ? "permission denied"
      : err instanceof Deno.errors.IsADirectory
      ? "it is a directory"
      : (err as Error).message;
    throw new LaunchError(`cannot read ${what} '${path}': ${why}`);
  }
}

/** The machine configuration `resources` describe (reads the kernel and initrd). */
export async function machineConfigFrom(
  resources: VmResources,
  opts: LaunchOptions,
): Promise<MachineConfig> {
  const boot = resources.bootSource;
  if (boot === undefined) throw new LaunchError("no boot source (kernel) is configured");
  const { drives, nets } = resources.ioConfig();
  if (drives.some((d) => d.backend.kind === "iscsi") && opts.identity === undefined) {
    throw new LaunchError(
      "an iSCSI drive needs the VM's storage identity (a VM id and a SUI registry)",
    );
  }
  const kernel = await readHostFile("kernel", boot.kernel_image_path);
  const initrd = boot.initrd_path === undefined
    ? undefined
    : await readHostFile("initrd", boot.initrd_path);
  const mem = resources.machine.mem_size_mib;
  const cmdline = resources.cmdline(opts.defaultCmdline);
  return {
    memMiB: mem,
    vcpus: resources.machine.vcpu_count,
    kernel,
    cmdline,
    devices: opts.devices(mem),
    ...(drives.length === 0 ? {} : { drives }),
    ...(nets.length === 0 ? {} : { nets }),
    ...(opts.identity === undefined ? {} : { identity: opts.identity }),
    // A command line that already names the devices is final (the caller's override).
    ...(cmdline.includes("virtio_mmio.device=") ? { announceOnCmdline: false } : {}),
    ...(initrd === undefined ? {} : { initrd }),
    ...opts.machine,
  };
}

/**
 * The API's view of a running `machine`: lifecycle, Ctrl-Alt-Del through its
 * i8042 (`i8042` device), a drive's image or rate limiter replaced through
 * its disk handle (`PATCH /drives/{id}`), and a NIC's rate limiters replaced
 * on its device (`PATCH /network-interfaces/{id}`).
 */
export function machineApiVm(machine: Machine): ApiVm {
  return {
    machine,
    get state() {
      return machine.state;
    },
    vcpuCount: machine.vcpuCount,
    memory: machine.memory,
    pause: () => machine.pause(),
    resume: () => machine.resume(),
    stop: () => machine.stop(),
    async updateDrive(id: string, update: DriveUpdate): Promise<void> {
      const disk = machine.disk(id);
      if (disk === undefined) throw new ApiFault(400, `the VM has no drive '${id}'`);
      if (update.path !== undefined) {
        const backend: DriveBackend = isIscsiUrl(update.path)
          ? { kind: "iscsi", url: update.path }
          : { kind: "file", path: update.path };
        try {
          await disk.replace(backend);
        } catch (err) {
          // The drive keeps its image; as Firecracker, a failed update is the request's fault.
          if (err instanceof ApiFault) throw err;
          throw new ApiFault(400, `drive '${id}' was not updated: ${(err as Error).message}`);
        }
      }
      if (update.rateLimiter !== undefined) await disk.setRateLimiter(update.rateLimiter);
    },
    async updateNet(id: string, update: NetUpdate): Promise<void> {
      const net = machine.net(id);
      if (net === undefined) throw new ApiFault(400, `the VM has no network interface '${id}'`);
      await net.setRateLimiters({
        ...(update.rxRateLimiter === undefined ? {} : { rx: update.rxRateLimiter }),
        ...(update.txRateLimiter === undefined ? {} : { tx: update.txRateLimiter }),
      });
    },
    sendCtrlAltDel(): void {
      const kbc = machine.device("i8042");
      if (!(kbc instanceof I8042)) {
        throw new ApiFault(400, "this VM has no i8042 keyboard controller");
      }
      const queued = machine.bus.withLock(() => kbc.sendCtrlAltDel());
      if (!queued) {
        throw new ApiFault(400, "the i8042 output buffer is full (the guest is not reading it)");
      }
    },
  };
}

/**
 * Builds the machine `resources` describe and starts it.
 *
 * @example
 * ```ts ignore
 * import { defaultDeviceSpecs } from "../devices/mod.ts";
 * import { launchMachine } from "./launch.ts";
 * const vm = await launchMachine(resources, {
 *   devices: (memMiB) => defaultDeviceSpecs({ memMiB }),
 *   defaultCmdline: "console=ttyS0",
 * });
 * ```
 */
export async function launchMachine(resources: VmResources, opts: LaunchOptions): Promise<Machine> {
  const config = await machineConfigFrom(resources, opts);
  const { Machine } = await import("../machine.ts");
  let machine: Machine;
  try {
    machine = await Machine.create(config);
  } catch (err) {
    if (err instanceof BootError) {
      throw new LaunchError(
        `cannot boot '${resources.bootSource?.kernel_image_path}': ${err.message}`,
      );
    }
    throw err;
  }
  try {
    await machine.start();
  } catch (err) {
    await machine[Symbol.asyncDispose]();
    throw err;
  }
  return machine;
}
