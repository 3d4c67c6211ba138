/**
 * vmkit `san`: per-VM storage-network identities (SUIs) and a TypeScript
 * iSCSI initiator that does I/O on a VM's behalf.
 *
 * Each VM gets its own substantially unique identifier for the SAN: an iSCSI
 * initiator name, an FC WWPN/WWNN pair (NPIV) or an NVMe host NQN. Registries
 * (a local journal file, or etcd for a fleet) hand them out without
 * duplicates and keep released ones in quarantine. The initiator logs in with
 * the VM's SUI, so the target's ACLs and LUN masking apply per VM, and a LUN
 * opens as a `cow/` {@link BlockDevice}.
 *
 * Hand-written on purpose: npm has no maintained iSCSI initiator (libiscsi
 * is C), and etcd is reached through its own HTTP/JSON gateway with `fetch`
 * rather than a gRPC client package. The file registry fsyncs every
 * allocation before returning it; concurrent callers in one process share one
 * lock and one fsync (group commit) and `allocMany` batches explicitly, so a
 * single caller's one-at-a-time rate is bounded by the disk's fsync latency.
 *
 * @example
 * ```ts ignore
 * // ignore: needs an iSCSI target serving iqn.2024-01.example:disk1 on 127.0.0.1:3260.
 * import { FileSuiRegistry, IscsiBlockDevice } from "@vmkit/vmkit/san";
 *
 * const reg = await FileSuiRegistry.open(`${await Deno.makeTempDir()}/sui.journal`);
 * const { sui } = await reg.alloc("vm-1", "iqn");
 * const disk = await IscsiBlockDevice.open({
 *   host: "127.0.0.1", port: 3260, lun: 1,
 *   initiatorName: sui, targetName: "iqn.2024-01.example:disk1",
 * });
 * const sector = new Uint8Array(512);
 * await disk.read(0, sector);
 * await disk.close();
 * await reg.close();
 * ```
 *
 * @module
 */

import type { BlockDevice } from "../cow/block_device.ts";

/** Name of this primitive, for diagnostics. */
export const PRIMITIVE: string = "san";

export type { BlockDevice };
export * from "./errors.ts";
export * from "./wwn.ts";
export * from "./iscsi_name.ts";
export * from "./nqn.ts";
export * from "./sui.ts";
export * from "./registry.ts";
export * from "./file_registry.ts";
export * from "./etcd_registry.ts";
export * from "./registry_open.ts";
export * from "./chap.ts";
export * from "./scsi.ts";
export * from "./iscsi_text.ts";
export { BHS_LEN, snLess, snLessEq } from "./iscsi_pdu.ts";
export * from "./iscsi_session.ts";
export * from "./iscsi_discovery.ts";
export * from "./iscsi_url.ts";
export * from "./lun_identity.ts";
export * from "./iscsi_block_device.ts";
