/**
 * The Node build's `san`: storage identities (SUI formats and the registry
 * state machine), the iSCSI PDU and text codecs and the SCSI codecs. The
 * sockets, the file and etcd registries need Deno (`@vmkit/vmkit/san`).
 *
 * @example
 * ```ts
 * import { parseIscsiName, parseInquiry } from "./san.ts";
 * console.log(parseIscsiName("iqn.2024-01.dev.vmkit:vm-1").name);
 * console.log(typeof parseInquiry);
 * ```
 *
 * @module
 */

export * from "../san/errors.ts";
export * from "../san/sui.ts";
export * from "../san/wwn.ts";
export * from "../san/iscsi_name.ts";
export * from "../san/nqn.ts";
export * from "../san/registry.ts";
export * from "../san/journal.ts";
export * from "../san/iscsi_pdu.ts";
export * from "../san/iscsi_text.ts";
export * from "../san/iscsi_url.ts";
export * from "../san/scsi.ts";
