/**
 * `iscsi://HOST[:PORT][/TARGET[/LUN]]` URLs, as libiscsi and QEMU write them.
 *
 * @module
 */

import { SanError } from "./errors.ts";
import { parseIscsiName } from "./iscsi_name.ts";
import { ISCSI_PORT } from "./iscsi_session.ts";

/** A parsed iSCSI URL. */
export interface IscsiUrl {
  /** Portal host (brackets of IPv6 literals removed). */
  readonly host: string;
  /** Portal port (default 3260). */
  readonly port: number;
  /** Target IQN, if the URL names one. */
  readonly target?: string;
  /** LUN, if the URL names one. */
  readonly lun?: number;
}

/**
 * Parses an iSCSI URL.
 *
 * @example
 * ```ts
 * const u = parseIscsiUrl("iscsi://127.0.0.1:3260/iqn.2024-01.example:disk1/1");
 * console.log(u.target, u.lun); // iqn.2024-01.example:disk1 1
 * ```
 */
export function parseIscsiUrl(text: string): IscsiUrl {
  const m =
    /^iscsi:\/\/(\[[0-9a-fA-F:.]+\]|[^/:[\]@]+)(?::(\d{1,5}))?(?:\/([^/]*)(?:\/(\d+))?)?\/?$/
      .exec(text.trim());
  if (m === null) {
    throw new SanError(
      `'${text}' is not an iSCSI URL; expected iscsi://HOST[:PORT][/TARGET[/LUN]]`,
    );
  }
  const host = (m[1] ?? "").replace(/^\[|\]$/g, "");
  const port = m[2] === undefined ? ISCSI_PORT : Number(m[2]);
  if (port < 1 || port > 65535) throw new SanError(`port ${m[2]} in '${text}' is out of range`);
  const out: { host: string; port: number; target?: string; lun?: number } = { host, port };
  if (m[3] !== undefined && m[3] !== "") out.target = parseIscsiName(decodeURIComponent(m[3])).name;
  if (m[4] !== undefined) {
    const lun = Number(m[4]);
    if (lun > 0x3fff) throw new SanError(`LUN ${lun} in '${text}' is out of range 0..16383`);
    out.lun = lun;
  }
  return out;
}
