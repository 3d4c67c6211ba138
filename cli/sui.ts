/**
 * `vmkit sui`: allocate, list and release per-VM storage-network identities.
 *
 * ```
 * vmkit sui alloc --vm ID [--type iqn|wwpn|nqn] [--registry PATH|etcd://HOST:PORT]
 * vmkit sui list [--registry ...] [--output json]
 * vmkit sui release --vm ID [--type T] [--registry ...]
 * ```
 *
 * @module
 */

import { openRegistry, parseSuiType, SuiFormatError, type SuiRecord } from "../san/mod.ts";
import { command, type Entry } from "./command.ts";
import { Exit } from "./exit.ts";
import { int, str, type Values } from "./options.ts";
import { checkPathArg, UsageError } from "./usage.ts";

const COMMON = {
  registry: str(
    "SPEC",
    "journal file path or etcd://HOST:PORT[/prefix] " +
      "(default: $VMKIT_SUI_REGISTRY or ~/.local/share/vmkit/sui.journal)",
    { complete: "file" },
  ),
  "iqn-prefix": str("P", "naming authority for new iSCSI names (default iqn.2024-01.dev.vmkit)"),
  oui: str("HEX", "24-bit IEEE OUI for new WWNs (default 525400)"),
  "quarantine-ms": int("N", "how long released identities are withheld (default 86400000)"),
};
const TYPE = str("T", "iqn (default), wwpn or nqn");
const VM = str("ID", "the VM id (letters, digits, . _ : @ -)");

const DESCRIPTION = `Allocates a substantially unique SAN identity per VM (an iSCSI initiator name,
an FC WWPN/WWNN pair or an NVMe host NQN). alloc is idempotent: a VM gets the
same identity back until it is released; released identities stay in quarantine.`;

/** A bad identity given on the command line is a usage error; other SAN errors are failures. */
function suiExit(err: Error): number {
  return err instanceof SuiFormatError ? Exit.USAGE : Exit.FAILURE;
}

/** The default registry; a writer creates its directory, a reader creates nothing. */
async function defaultRegistry(create: boolean): Promise<string> {
  const env = Deno.env.get("VMKIT_SUI_REGISTRY");
  if (env !== undefined && env !== "") return env;
  const base = Deno.env.get("XDG_DATA_HOME") ?? `${Deno.env.get("HOME") ?? "."}/.local/share`;
  if (create) await Deno.mkdir(`${base}/vmkit`, { recursive: true });
  return `${base}/vmkit/sui.journal`;
}

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.lstat(path);
    return true;
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) return false;
    throw err;
  }
}

function show(r: SuiRecord): string {
  return r.wwnn === undefined ? r.sui : `${r.sui} ${r.wwnn}`;
}

async function open(o: Values<typeof COMMON>, readOnly = false) {
  if (o.oui !== undefined && !/^(0x)?[0-9a-fA-F]{6}$/.test(o.oui)) {
    throw new UsageError(`--oui '${o.oui}' is not 6 hex digits`);
  }
  const spec = checkPathArg("--registry", o.registry ?? (await defaultRegistry(!readOnly)));
  if (readOnly && !spec.startsWith("etcd://") && !(await exists(spec))) {
    console.error(`vmkit sui: no registry at '${spec}' yet: nothing is allocated`);
  }
  return await openRegistry(spec, {
    readOnly,
    ...(o["iqn-prefix"] === undefined ? {} : { iqnPrefix: o["iqn-prefix"] }),
    ...(o.oui === undefined ? {} : { oui: parseInt(o.oui.replace(/^0x/, ""), 16) }),
    ...(o["quarantine-ms"] === undefined ? {} : { quarantineMs: o["quarantine-ms"] }),
  });
}

function needVm(cmd: string, vm: string | undefined): string {
  if (vm === undefined) throw new UsageError(`'${cmd}' needs --vm ID`);
  return vm;
}

const alloc = command({
  name: "alloc",
  summary: "allocate (or return) a VM's identity",
  description: DESCRIPTION,
  options: { vm: VM, type: TYPE, ...COMMON },
  output: true,
  exitCode: suiExit,
  async run(ctx) {
    const vm = needVm("alloc", ctx.values.vm);
    const type = ctx.values.type === undefined ? "iqn" : parseSuiType(ctx.values.type);
    const reg = await open(ctx.values);
    try {
      const rec = await reg.alloc(vm, type);
      ctx.print(rec, () => show(rec));
    } finally {
      await reg.close();
    }
    return Exit.OK;
  },
});

const listCmd = command({
  name: "list",
  summary: "list the allocated identities (of one VM with --vm)",
  options: { vm: VM, type: TYPE, ...COMMON },
  output: true,
  exitCode: suiExit,
  async run(ctx) {
    const type = ctx.values.type === undefined ? undefined : parseSuiType(ctx.values.type);
    const reg = await open(ctx.values, true);
    try {
      const vm = ctx.values.vm;
      const recs = (await reg.list()).filter((r) =>
        (type === undefined || r.type === type) && (vm === undefined || r.vmId === vm)
      );
      ctx.print(recs, () => recs.map((r) => `${r.vmId}\t${r.type}\t${show(r)}`).join("\n"));
    } finally {
      await reg.close();
    }
    return Exit.OK;
  },
});

const release = command({
  name: "release",
  summary: "release a VM's identities (they stay in quarantine)",
  options: { vm: VM, type: TYPE, ...COMMON },
  output: true,
  exitCode: suiExit,
  async run(ctx) {
    const vm = needVm("release", ctx.values.vm);
    const type = ctx.values.type === undefined ? undefined : parseSuiType(ctx.values.type);
    const reg = await open(ctx.values);
    try {
      const released = await reg.release(vm, type);
      if (released.length === 0) {
        console.error(
          `vmkit sui release: VM '${vm}' holds no ${type ?? ""} identity; nothing released`,
        );
        return Exit.FAILURE;
      }
      ctx.print(released, () => released.map((r) => `released ${r.type} ${show(r)}`).join("\n"));
    } finally {
      await reg.close();
    }
    return Exit.OK;
  },
});

/** The `vmkit sui` command group. */
export const entry: Entry = {
  name: "sui",
  summary: "per-VM storage-network identities",
  description: DESCRIPTION,
  commands: [alloc, listCmd, release],
};
