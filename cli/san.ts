/**
 * `vmkit san`: iSCSI discovery and LUN probing with a VM's initiator name.
 *
 * ```
 * vmkit san discover --initiator NAME iscsi://HOST[:PORT]
 * vmkit san probe --initiator NAME iscsi://HOST[:PORT]/TARGET/LUN
 * ```
 *
 * @module
 */

import { parseArgs } from "node:util";
import {
  type ChapCredentials,
  discoverTargets,
  IscsiSession,
  parseIscsiName,
  parseIscsiUrl,
  SanError,
} from "../san/mod.ts";
import { isUsageError, UsageError, usageFailure } from "./usage.ts";

const USAGE = `usage:
  vmkit san discover --initiator NAME iscsi://HOST[:PORT]
  vmkit san probe --initiator NAME iscsi://HOST[:PORT]/TARGET/LUN

discover lists the targets the portal offers to NAME (SendTargets); probe logs in
as NAME and prints the LUN's INQUIRY data and capacity.

options:
  --initiator NAME    iSCSI initiator name to log in with (a VM's SUI)
  --chap-user U       CHAP user name (with --chap-secret)
  --chap-secret S     CHAP secret (or $VMKIT_CHAP_SECRET)
  --timeout-ms N      login timeout (default 10000)
  --json              print JSON instead of text
  -h, --help          show this help`;

/** Runs `vmkit san`; returns the exit status. */
export async function main(args: string[]): Promise<number> {
  let parsed;
  try {
    parsed = parseArgs({
      args,
      strict: true,
      allowPositionals: true,
      options: {
        initiator: { type: "string" },
        "chap-user": { type: "string" },
        "chap-secret": { type: "string" },
        "timeout-ms": { type: "string" },
        json: { type: "boolean", default: false },
        help: { type: "boolean", short: "h", default: false },
      },
    });
  } catch (err) {
    return usageFailure("san", err as Error);
  }
  const { values, positionals } = parsed;
  if (values.help) {
    console.log(USAGE);
    return 0;
  }
  try {
    const [cmd, url, ...extra] = positionals;
    if (cmd !== "discover" && cmd !== "probe") {
      throw new UsageError(
        cmd === undefined ? "missing subcommand: discover or probe" : `unknown subcommand '${cmd}'`,
      );
    }
    if (url === undefined) throw new UsageError(`'${cmd}' needs an iscsi:// URL`);
    if (extra.length > 0) throw new UsageError(`unexpected argument '${extra[0]}'`);
    if (values.initiator === undefined) throw new UsageError(`'${cmd}' needs --initiator NAME`);
    const initiatorName = parseIscsiName(values.initiator).name;
    const u = parseIscsiUrl(url);
    let chap: ChapCredentials | undefined;
    const secret = values["chap-secret"] ?? Deno.env.get("VMKIT_CHAP_SECRET");
    if (values["chap-user"] !== undefined) {
      if (secret === undefined) throw new UsageError("--chap-user needs --chap-secret");
      chap = { username: values["chap-user"], secret };
    }
    const loginTimeoutMs = values["timeout-ms"] === undefined
      ? 10_000
      : Number(values["timeout-ms"]);
    if (!Number.isSafeInteger(loginTimeoutMs) || loginTimeoutMs <= 0) {
      throw new UsageError(`--timeout-ms '${values["timeout-ms"]}' is not a positive integer`);
    }
    const base = {
      host: u.host,
      port: u.port,
      initiatorName,
      loginTimeoutMs,
      ...(chap === undefined ? {} : { chap }),
    };
    if (cmd === "discover") {
      if (u.target !== undefined) {
        throw new UsageError("discover takes iscsi://HOST[:PORT] without a target");
      }
      const targets = await discoverTargets(base);
      if (values.json) console.log(JSON.stringify(targets));
      else for (const t of targets) console.log(`${t.name}\t${t.addresses.join(" ")}`);
      return 0;
    }
    if (u.target === undefined || u.lun === undefined) {
      throw new UsageError("probe needs iscsi://HOST[:PORT]/TARGET/LUN");
    }
    const session = await IscsiSession.connect({
      ...base,
      targetName: u.target,
      keepaliveMs: 0,
      reconnect: false,
    });
    try {
      const inq = await session.inquiry(u.lun);
      const cap = await session.readCapacity16(u.lun);
      if (values.json) {
        console.log(JSON.stringify({
          target: u.target,
          lun: u.lun,
          inquiry: inq,
          capacity: {
            blocks: Number(cap.blocks),
            blockSize: cap.blockSize,
            bytes: Number(cap.bytes),
          },
        }));
      } else {
        console.log(`target:      ${u.target}`);
        console.log(`lun:         ${u.lun}`);
        console.log(`vendor:      ${inq.vendor}`);
        console.log(`product:     ${inq.product}`);
        console.log(`revision:    ${inq.revision}`);
        console.log(`device type: ${inq.deviceType}`);
        console.log(`block size:  ${cap.blockSize}`);
        console.log(`blocks:      ${cap.blocks}`);
        console.log(`capacity:    ${cap.bytes} bytes`);
      }
    } finally {
      await session.logout();
    }
    return 0;
  } catch (err) {
    if (isUsageError(err)) return usageFailure("san", err);
    if (err instanceof SanError) {
      console.error(`vmkit san: ${err.message}`);
      return err.name === "SuiFormatError" ? 2 : 1;
    }
    throw err;
  }
}
