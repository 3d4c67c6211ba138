/**
 * `vmkit run`'s `--disk` and `--net` specs, parsed into Firecracker's drive
 * and network-interface records (so they show in `GET /vm/config` exactly as
 * if they had come over the API).
 *
 * A spec is QEMU-style `key=value` pairs separated by commas (`,,` is a
 * literal comma); `--disk` also takes a bare path or `iscsi://` URL as its
 * first item.
 *
 * @module
 */

import { checkIscsiUrl } from "../vmm/api/host_files.ts";
import { type FcDrive, type FcNetworkInterface, VmConfigError } from "../vmm/api/vm_config.ts";
import { checkId, checkIfName, checkMac } from "../vmm/api/vm_config_parse.ts";
import { isIscsiUrl } from "../vmm/api/vm_resources.ts";
import { UsageError } from "./usage.ts";

/** Splits `a=1,b=2` (with `,,` for a comma) into items. */
function items(spec: string): string[] {
  const out: string[] = [];
  let cur = "";
  for (let i = 0; i < spec.length; i++) {
    const c = spec[i];
    if (c === "," && spec[i + 1] === ",") {
      cur += ",";
      i++;
    } else if (c === ",") {
      out.push(cur);
      cur = "";
    } else cur += c;
  }
  out.push(cur);
  return out;
}

function keyValues(
  option: string,
  spec: string,
  allowed: readonly string[],
  bareKey?: string,
): Map<string, string> {
  const kv = new Map<string, string>();
  items(spec).forEach((item, i) => {
    const eq = item.indexOf("=");
    let key: string;
    let value: string;
    if (eq < 0 || (i === 0 && bareKey !== undefined && /^[a-z]+:\/\//i.test(item))) {
      if (i !== 0 || bareKey === undefined) {
        throw new UsageError(`${option} '${spec}': '${item}' is not key=value`);
      }
      key = bareKey;
      value = item;
    } else {
      key = item.slice(0, eq);
      value = item.slice(eq + 1);
    }
    if (!allowed.includes(key)) {
      throw new UsageError(
        `${option} '${spec}': unknown key '${key}' (known: ${allowed.join(", ")})`,
      );
    }
    if (kv.has(key)) throw new UsageError(`${option} '${spec}': '${key}' is given twice`);
    kv.set(key, value);
  });
  return kv;
}

function onOff(option: string, key: string, v: string | undefined): boolean {
  if (v === undefined) return false;
  if (v === "on" || v === "true" || v === "yes") return true;
  if (v === "off" || v === "false" || v === "no") return false;
  throw new UsageError(`${option} ${key}= must be on or off, got '${v}'`);
}

function checked<T>(fn: () => T): T {
  try {
    return fn();
  } catch (err) {
    if (err instanceof VmConfigError) throw new UsageError(err.message);
    throw err;
  }
}

/**
 * Parses one `--disk` spec: `PATH`, `path=PATH[,readonly=on][,id=ID][,root=on]`
 * or `iscsi://HOST[:PORT]/TARGET/LUN[,…]`; the id defaults to `drive<index>`.
 */
export function parseDiskSpec(spec: string, index: number): FcDrive {
  const kv = keyValues("--disk", spec, ["path", "readonly", "id", "root"], "path");
  const path = kv.get("path");
  if (path === undefined || path === "") throw new UsageError(`--disk '${spec}' names no path`);
  if (path.includes("\uFFFD")) {
    throw new UsageError(`--disk '${spec}': the path is not valid UTF-8; rename it`);
  }
  if (isIscsiUrl(path)) checked(() => checkIscsiUrl(path, "--disk"));
  const id = checked(() => checkId(kv.get("id") ?? `drive${index}`, "--disk id"));
  return {
    drive_id: id,
    path_on_host: path,
    is_root_device: onOff("--disk", "root", kv.get("root")),
    is_read_only: onOff("--disk", "readonly", kv.get("readonly")),
    cache_type: "Writeback",
    io_engine: "Sync",
  };
}

/**
 * Parses one `--net` spec: `tap=NAME[,mac=MAC][,id=ID][,netns=NS][,mtu=N]`; the id defaults to
 * `eth<index>`.
 */
export function parseNetSpec(spec: string, index: number): FcNetworkInterface {
  const kv = keyValues("--net", spec, ["tap", "mac", "id", "netns", "mtu"]);
  const tap = kv.get("tap");
  if (tap === undefined) throw new UsageError(`--net '${spec}' needs tap=NAME`);
  const mac = kv.get("mac");
  const netns = kv.get("netns");
  if (netns === "") throw new UsageError(`--net '${spec}': netns= is empty`);
  const mtuText = kv.get("mtu");
  const mtu = mtuText === undefined ? undefined : Number(mtuText);
  if (mtu !== undefined && (!/^[0-9]+$/.test(mtuText ?? "") || mtu < 68 || mtu > 65535)) {
    throw new UsageError(`--net '${spec}': mtu= must be an integer from 68 to 65535`);
  }
  return {
    iface_id: checked(() => checkId(kv.get("id") ?? `eth${index}`, "--net id")),
    host_dev_name: checked(() => checkIfName(tap, "--net tap")),
    ...(mac === undefined ? {} : { guest_mac: checked(() => checkMac(mac, "--net mac")) }),
    ...(netns === undefined ? {} : { netns }),
    ...(mtu === undefined ? {} : { mtu }),
  };
}
