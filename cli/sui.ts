/**
 * `vmkit sui`: allocate, list and release per-VM storage-network identities.
 *
 * ```
 * vmkit sui alloc --vm ID [--type iqn|wwpn|nqn] [--registry PATH|etcd://HOST:PORT]
 * vmkit sui list [--registry ...] [--json]
 * vmkit sui release --vm ID [--type T] [--registry ...]
 * ```
 *
 * @module
 */

import { parseArgs } from "node:util";
import { openRegistry, parseSuiType, SanError, type SuiRecord, type SuiType } from "../san/mod.ts";
import { checkPathArg, isUsageError, UsageError, usageFailure } from "./usage.ts";

const USAGE = `usage:
  vmkit sui alloc --vm ID [--type iqn|wwpn|nqn] [--registry PATH|etcd://HOST:PORT] [--json]
  vmkit sui list [--registry PATH|etcd://HOST:PORT] [--json]
  vmkit sui release --vm ID [--type iqn|wwpn|nqn] [--registry PATH|etcd://HOST:PORT]

Allocates a substantially unique SAN identity per VM (an iSCSI initiator name,
an FC WWPN/WWNN pair or an NVMe host NQN). alloc is idempotent: a VM gets the
same identity back until it is released; released identities stay in quarantine.

options:
  --vm ID             the VM id (letters, digits, . _ : @ -)
  --type T            iqn (default), wwpn or nqn
  --registry SPEC     journal file path or etcd://HOST:PORT[/prefix]
                      (default: $VMKIT_SUI_REGISTRY or ~/.local/share/vmkit/sui.journal)
  --iqn-prefix P      naming authority for new iSCSI names (default iqn.2024-01.dev.vmkit)
  --oui HEX           24-bit IEEE OUI for new WWNs (default 525400)
  --quarantine-ms N   how long released identities are withheld (default 86400000)
  --json              print JSON instead of text
  -h, --help          show this help`;

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

/** Runs `vmkit sui`; returns the exit status. */
export async function main(args: string[]): Promise<number> {
  let parsed;
  try {
    parsed = parseArgs({
      args,
      strict: true,
      allowPositionals: true,
      options: {
        vm: { type: "string" },
        type: { type: "string" },
        registry: { type: "string" },
        "iqn-prefix": { type: "string" },
        oui: { type: "string" },
        "quarantine-ms": { type: "string" },
        json: { type: "boolean", default: false },
        help: { type: "boolean", short: "h", default: false },
      },
    });
  } catch (err) {
    return usageFailure("sui", err as Error);
  }
  const { values, positionals } = parsed;
  if (values.help) {
    console.log(USAGE);
    return 0;
  }
  const [cmd, ...extra] = positionals;
  try {
    if (cmd === undefined) throw new UsageError("missing subcommand: alloc, list or release");
    if (extra.length > 0) throw new UsageError(`unexpected argument '${extra[0]}'`);
    if (!["alloc", "list", "release"].includes(cmd)) {
      throw new UsageError(`unknown subcommand '${cmd}'; use alloc, list or release`);
    }
    const type: SuiType | undefined = values.type === undefined
      ? undefined
      : parseSuiType(values.type);
    let oui: number | undefined;
    if (values.oui !== undefined) {
      if (!/^(0x)?[0-9a-fA-F]{6}$/.test(values.oui)) {
        throw new UsageError(`--oui '${values.oui}' is not 6 hex digits`);
      }
      oui = parseInt(values.oui.replace(/^0x/, ""), 16);
    }
    let quarantineMs: number | undefined;
    if (values["quarantine-ms"] !== undefined) {
      quarantineMs = Number(values["quarantine-ms"]);
      if (!Number.isSafeInteger(quarantineMs) || quarantineMs < 0) {
        throw new UsageError(
          `--quarantine-ms '${values["quarantine-ms"]}' is not a non-negative integer`,
        );
      }
    }
    if ((cmd === "alloc" || cmd === "release") && values.vm === undefined) {
      throw new UsageError(`'${cmd}' needs --vm ID`);
    }
    const readOnly = cmd === "list";
    const spec = checkPathArg("--registry", values.registry ?? (await defaultRegistry(!readOnly)));
    if (readOnly && !spec.startsWith("etcd://") && !(await exists(spec))) {
      console.error(`vmkit sui: no registry at '${spec}' yet: nothing is allocated`);
    }
    const reg = await openRegistry(spec, {
      readOnly,
      ...(values["iqn-prefix"] === undefined ? {} : { iqnPrefix: values["iqn-prefix"] }),
      ...(oui === undefined ? {} : { oui }),
      ...(quarantineMs === undefined ? {} : { quarantineMs }),
    });
    try {
      if (cmd === "alloc") {
        const rec = await reg.alloc(values.vm ?? "", type ?? "iqn");
        console.log(values.json ? JSON.stringify(rec) : show(rec));
      } else if (cmd === "list") {
        const all = await reg.list();
        const recs = type === undefined ? all : all.filter((r) => r.type === type);
        if (values.json) console.log(JSON.stringify(recs));
        else for (const r of recs) console.log(`${r.vmId}\t${r.type}\t${show(r)}`);
      } else {
        const released = await reg.release(values.vm ?? "", type);
        if (released.length === 0) {
          console.error(
            `vmkit sui: VM '${values.vm}' holds no ${type ?? ""} identity; nothing released`,
          );
          return 1;
        }
        if (values.json) console.log(JSON.stringify(released));
        else for (const r of released) console.log(`released ${r.type} ${show(r)}`);
      }
    } finally {
      await reg.close();
    }
    return 0;
  } catch (err) {
    if (isUsageError(err)) return usageFailure("sui", err);
    if (err instanceof SanError) {
      console.error(`vmkit sui: ${err.message}`);
      return err.name === "SuiFormatError" ? 2 : 1;
    }
    throw err;
  }
}
