/**
 * SendTargets discovery: log in with SessionType=Discovery, ask for all
 * targets visible to this initiator name, log out.
 *
 * @module
 */

import type { ChapCredentials } from "./chap.ts";
import { type DiscoveredTarget, IscsiSession } from "./iscsi_session.ts";

/** Options for {@link discoverTargets}. */
export interface DiscoveryOptions {
  /** Portal host. */
  readonly host: string;
  /** Portal port (default 3260). */
  readonly port?: number;
  /** The initiator name (the VM's SUI) to discover as. */
  readonly initiatorName: string;
  /** CHAP credentials for discovery, if the target requires them. */
  readonly chap?: ChapCredentials;
  /** Login timeout in milliseconds. */
  readonly loginTimeoutMs?: number;
}

/**
 * Lists the targets a portal offers to `initiatorName`.
 *
 * @example
 * ```ts ignore
 * // ignore: needs an iSCSI portal on 127.0.0.1:3260.
 * const targets = await discoverTargets({ host: "127.0.0.1", initiatorName: "iqn.2024-01.dev.vmkit:vm-1" });
 * for (const t of targets) console.log(t.name, t.addresses);
 * ```
 */
export async function discoverTargets(options: DiscoveryOptions): Promise<DiscoveredTarget[]> {
  const session = await IscsiSession.connect({ ...options, keepaliveMs: 0, reconnect: false });
  try {
    return await session.sendTargets();
  } finally {
    await session.logout();
  }
}
