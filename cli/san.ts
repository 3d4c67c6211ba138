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

import {
  type ChapCredentials,
  discoverTargets,
  IscsiSession,
  type IscsiUrl,
  parseIscsiName,
  parseIscsiUrl,
  SanError,
  SuiFormatError,
} from "../san/mod.ts";
import { command, type Entry } from "./command.ts";
import { Exit } from "./exit.ts";
import { int, str, type Values } from "./options.ts";
import { UsageError } from "./usage.ts";

const LOGIN = {
  initiator: str("NAME", "iSCSI initiator name to log in with (a VM's SUI)"),
  "chap-user": str("U", "CHAP user name (with --chap-secret)"),
  "chap-secret": str("S", "CHAP secret (or $VMKIT_CHAP_SECRET)"),
  "timeout-ms": int("N", "login timeout", { min: 1, default: 10_000 }),
};

/** A malformed initiator name or URL is a usage error; other SAN errors are failures. */
function sanExit(err: Error): number {
  return err instanceof SuiFormatError ? Exit.USAGE : Exit.FAILURE;
}

function login(cmd: string, o: Values<typeof LOGIN>, url: string) {
  if (o.initiator === undefined) throw new UsageError(`'${cmd}' needs --initiator NAME`);
  const initiatorName = parseIscsiName(o.initiator).name;
  let u: IscsiUrl;
  try {
    u = parseIscsiUrl(url);
  } catch (err) {
    // The URL comes from the command line: a bad one is a usage error.
    if (err instanceof SanError) throw new UsageError(err.message);
    throw err;
  }
  let chap: ChapCredentials | undefined;
  const secret = o["chap-secret"] ?? Deno.env.get("VMKIT_CHAP_SECRET");
  if (o["chap-user"] !== undefined) {
    if (secret === undefined) throw new UsageError("--chap-user needs --chap-secret");
    chap = { username: o["chap-user"], secret };
  }
  const base = {
    host: u.host,
    port: u.port,
    initiatorName,
    loginTimeoutMs: o["timeout-ms"],
    ...(chap === undefined ? {} : { chap }),
  };
  return { u, base };
}

const discover = command({
  name: "discover",
  summary: "list the targets a portal offers to an initiator (SendTargets)",
  args: ["iscsi://HOST[:PORT]"],
  argsComplete: "none",
  options: LOGIN,
  output: true,
  exitCode: sanExit,
  async run(ctx) {
    const { u, base } = login("discover", ctx.values, ctx.positionals[0] ?? "");
    if (u.target !== undefined) {
      throw new UsageError("discover takes iscsi://HOST[:PORT] without a target");
    }
    const targets = await discoverTargets(base);
    ctx.print(targets, () => targets.map((t) => `${t.name}\t${t.addresses.join(" ")}`).join("\n"));
    return Exit.OK;
  },
});

const probe = command({
  name: "probe",
  summary: "log in and print a LUN's INQUIRY data and capacity",
  args: ["iscsi://HOST[:PORT]/TARGET/LUN"],
  argsComplete: "none",
  options: LOGIN,
  output: true,
  exitCode: sanExit,
  async run(ctx) {
    const { u, base } = login("probe", ctx.values, ctx.positionals[0] ?? "");
    if (u.target === undefined || u.lun === undefined) {
      throw new UsageError("probe needs iscsi://HOST[:PORT]/TARGET/LUN");
    }
    const lun = u.lun;
    const session = await IscsiSession.connect({
      ...base,
      targetName: u.target,
      keepaliveMs: 0,
      reconnect: false,
    });
    try {
      const inq = await session.inquiry(lun);
      const cap = await session.readCapacity16(lun);
      ctx.print({
        target: u.target,
        lun,
        inquiry: inq,
        capacity: {
          blocks: Number(cap.blocks),
          blockSize: cap.blockSize,
          bytes: Number(cap.bytes),
        },
      }, () =>
        [
          `target:      ${u.target}`,
          `lun:         ${lun}`,
          `vendor:      ${inq.vendor}`,
          `product:     ${inq.product}`,
          `revision:    ${inq.revision}`,
          `device type: ${inq.deviceType}`,
          `block size:  ${cap.blockSize}`,
          `blocks:      ${cap.blocks}`,
          `capacity:    ${cap.bytes} bytes`,
        ].join("\n"));
    } finally {
      await session.logout();
    }
    return Exit.OK;
  },
});

/** The `vmkit san` command group. */
export const entry: Entry = {
  name: "san",
  summary: "iSCSI discovery and probing with a VM's initiator name",
  commands: [discover, probe],
};
