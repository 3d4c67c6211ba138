/**
 * `vmkit run`'s command line: its option table and the plan it makes before
 * anything starts, from `--kernel` and the device flags, from
 * `--config-file` (Firecracker's JSON layout), from a checkpoint
 * (`--restore`), or nothing but `--api-sock` (wait to be configured). Bad
 * combinations are usage errors here.
 *
 * @module
 */

import { checkDrivePath } from "../vmm/api/host_files.ts";
import { VmConfigError } from "../vmm/api/vm_config.ts";
import { parseLogLevel } from "../vmm/api/vm_config_parse.ts";
import { VmResources } from "../vmm/api/vm_resources.ts";
import type { StorageIdentityConfig } from "../vmm/io_config.ts";
import type { Level } from "../vmm/log.ts";
import { int, list, optionalStr, str, type Values } from "./options.ts";
import { parseDiskSpec, parseNetSpec } from "./run_devices.ts";
import { checkPathArg, UsageError } from "./usage.ts";

/** Default kernel command line: console on COM1, reboot through the i8042 (which powers off). */
export const DEFAULT_CMDLINE = "console=ttyS0 reboot=k panic=1";
/** `vmkit run`'s options. */
export const OPTIONS = {
  kernel: str("PATH", "kernel image: ELF vmlinux, PVH ELF or bzImage", { complete: "file" }),
  initrd: str("PATH", "initial ramdisk", { complete: "file" }),
  cmdline: str("STR", "kernel command line", { default: DEFAULT_CMDLINE }),
  mem: int("MiB", "guest RAM", { min: 1, max: 65536, default: 256, unit: "MiB" }),
  vcpus: int("N", "vCPUs", { min: 1, max: 64, default: 1 }),
  disk: list(
    "SPEC",
    "virtio-blk drive: PATH, path=PATH[,readonly=on][,id=ID][,root=on], iscsi://H[:P]/T/LUN",
    { complete: "file" },
  ),
  net: list("SPEC", "virtio-net NIC on a TAP: tap=NAME[,mac=MAC][,id=ID][,netns=NS][,mtu=N]"),
  "vm-id": str("NAME", "the VM's name: instance id, SUI owner, netguard VM"),
  "sui-registry": str("PATH|URL", "SUI registry (journal file or etcd://HOST:PORT[/prefix])", {
    complete: "file",
  }),
  netguard: optionalStr(
    "POLICY",
    "watch the NICs with netguard (default policy, or a netguard JSON config)",
    "",
    { complete: "file" },
  ),
  "config-file": str("FILE", "Firecracker-style JSON config (boot-source, drives, ...)", {
    complete: "file",
  }),
  restore: str(
    "PATH",
    "restore a checkpoint (vmkit checkpoint create) instead of booting; --net overrides TAPs, --vm-id makes a clone",
    { complete: "file" },
  ),
  "api-sock": str(
    "PATH",
    "serve Firecracker's API on this socket (alone: wait there to be configured)",
    { complete: "file" },
  ),
  "serial-out": str("PATH", "write the guest's serial output to PATH (truncated), not stdout", {
    complete: "file",
  }),
  "debug-exit": int("PORT", "add a debug-exit device on PORT (a write of v exits (v << 1) | 1)", {
    max: 0xffff,
  }),
  "metrics-path": str("FILE", "write Prometheus metrics to FILE every 60 s and at exit", {
    complete: "file",
  }),
  "log-path": str("FILE", "append JSON log lines to FILE (default stderr when --level is given)", {
    complete: "file",
  }),
  level: str("LEVEL", "log level: Error, Warning, Info, Debug, Trace or Off (default Info)"),
};

/** The parsed values of {@link OPTIONS}. */
export type RunOptions = Values<typeof OPTIONS>;

/** Options that describe the VM itself, which a config file replaces. */
const VM_OPTIONS = ["kernel", "initrd", "cmdline", "mem", "vcpus", "disk", "net"] as const;

/** What the command line asks for, checked before anything starts. */
export interface RunPlan {
  resources: VmResources;
  /** Boot at once (else wait for InstanceStart on the API socket). */
  bootNow: boolean;
  identity: StorageIdentityConfig | undefined;
  logLevel: Level | undefined;
  /** The checkpoint to restore (--restore), with NIC overrides by interface id. */
  restore?: { path: string; nets: Record<string, { tap: string; netns?: string; mac?: string }> };
}

async function readConfigFile(path: string): Promise<VmResources> {
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (err) {
    const why = err instanceof Deno.errors.NotFound ? "no such file" : (err as Error).message;
    throw new Error(`cannot read config file '${path}': ${why}`);
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (err) {
    throw new Error(`config file '${path}' is not JSON: ${(err as Error).message}`);
  }
  try {
    return VmResources.fromConfigFile(json);
  } catch (err) {
    if (err instanceof VmConfigError) throw new Error(`config file '${path}': ${err.message}`);
    throw err;
  }
}

/** Checks the command line and builds the plan (nothing starts yet). */
export async function planRun(o: RunOptions, given: ReadonlySet<string>): Promise<RunPlan> {
  if (o.restore !== undefined) return planRestore(o, given, o.restore);
  const configFile = o["config-file"];
  let resources: VmResources;
  let bootNow: boolean;
  if (configFile !== undefined) {
    const clash = VM_OPTIONS.find((k) => given.has(k));
    if (clash !== undefined) {
      throw new UsageError(`--${clash} cannot be combined with --config-file (put it in the file)`);
    }
    resources = await readConfigFile(checkPathArg("--config-file", configFile));
    bootNow = true;
  } else {
    resources = new VmResources();
    bootNow = o.kernel !== undefined;
    if (!bootNow && o["api-sock"] === undefined) {
      throw new UsageError("--kernel PATH is required (or --config-file FILE, or --api-sock PATH)");
    }
    if (o.kernel !== undefined) {
      resources.bootSource = {
        kernel_image_path: checkPathArg("--kernel", o.kernel),
        boot_args: o.cmdline,
        ...(o.initrd === undefined ? {} : { initrd_path: checkPathArg("--initrd", o.initrd) }),
      };
    } else if (given.has("initrd") || given.has("cmdline")) {
      throw new UsageError("--initrd and --cmdline need --kernel (or PUT /boot-source)");
    }
    // Without --kernel the API's defaults (Firecracker's) hold unless flags were given.
    if (bootNow || given.has("mem") || given.has("vcpus")) {
      resources.machine = {
        ...resources.machine,
        mem_size_mib: bootNow || given.has("mem") ? o.mem : resources.machine.mem_size_mib,
        vcpu_count: bootNow || given.has("vcpus") ? o.vcpus : resources.machine.vcpu_count,
      };
    }
    try {
      o.disk.forEach((spec, i) => {
        const d = parseDiskSpec(spec, i);
        if (resources.drive(d.drive_id) !== undefined) {
          throw new UsageError(`--disk id '${d.drive_id}' is used twice`);
        }
        resources.putDrive(d);
      });
      o.net.forEach((spec, i) => {
        const n = parseNetSpec(spec, i);
        if (resources.net(n.iface_id) !== undefined) {
          throw new UsageError(`--net id '${n.iface_id}' is used twice`);
        }
        resources.putNet(n);
      });
    } catch (err) {
      if (err instanceof VmConfigError) throw new UsageError(err.message);
      throw err;
    }
  }
  for (const d of resources.drives) {
    try {
      await checkDrivePath(d.path_on_host, d.is_read_only, `disk '${d.drive_id}'`);
    } catch (err) {
      if (err instanceof VmConfigError) throw new Error(err.message);
      throw err;
    }
  }
  const vmId = o["vm-id"];
  const registry = o["sui-registry"];
  if (registry !== undefined && vmId === undefined) {
    throw new UsageError("--sui-registry needs --vm-id NAME (whose identity to use)");
  }
  const iscsi = resources.drives.find((d) => /^iscsi:\/\//i.test(d.path_on_host));
  if (iscsi !== undefined && registry === undefined) {
    throw new UsageError(
      `disk '${iscsi.drive_id}' is an iSCSI LUN: give --vm-id NAME and --sui-registry PATH|URL ` +
        "(the identity its SAN I/O logs in with)",
    );
  }
  if (o.netguard !== undefined && resources.nets.length === 0) {
    throw new UsageError("--netguard needs at least one --net (the NICs it watches)");
  }
  const logLevel = o.level === undefined ? undefined : checkedLevel(o.level);
  return {
    resources,
    bootNow,
    identity: vmId === undefined || registry === undefined ? undefined : { vmId, registry },
    logLevel,
  };
}

/** `--restore PATH`: the VM comes from the checkpoint; --net only moves NICs to other TAPs. */
function planRestore(o: RunOptions, given: ReadonlySet<string>, path: string): RunPlan {
  const clash = [...VM_OPTIONS.filter((k) => k !== "net"), "config-file"].find((k) => given.has(k));
  if (clash !== undefined) {
    throw new UsageError(
      `--${clash} cannot be combined with --restore (the checkpoint has the VM)`,
    );
  }
  const nets: Record<string, { tap: string; netns?: string; mac?: string }> = {};
  try {
    o.net.forEach((spec, i) => {
      const n = parseNetSpec(spec, i);
      nets[n.iface_id] = {
        tap: n.host_dev_name,
        ...(n.netns === undefined ? {} : { netns: n.netns }),
        ...(n.guest_mac === undefined ? {} : { mac: n.guest_mac }),
      };
    });
  } catch (err) {
    if (err instanceof VmConfigError) throw new UsageError(err.message);
    throw err;
  }
  const vmId = o["vm-id"];
  const registry = o["sui-registry"];
  return {
    resources: new VmResources(),
    bootNow: false,
    identity: vmId === undefined || registry === undefined ? undefined : { vmId, registry },
    logLevel: o.level === undefined ? undefined : checkedLevel(o.level),
    restore: { path: checkPathArg("--restore", path), nets },
  };
}

function checkedLevel(text: string): Level {
  try {
    return parseLogLevel(text, "--level");
  } catch (err) {
    if (err instanceof VmConfigError) throw new UsageError(err.message);
    throw err;
  }
}
