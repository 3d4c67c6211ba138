/**
 * The Node build of vmkit: the primitives' parts that need no Deno runtime,
 * as namespaces (`cow`, `san`, `netguard`, `dsm`); each is also its own
 * entry (`@vmkit/vmkit/cow`, ...). Built by `deno task build:npm`.
 *
 * @example
 * ```ts
 * import { cow, dsm, netguard, san } from "./mod.ts";
 * console.log(typeof cow.checkImage, typeof san.parseInquiry, typeof netguard.NetGuard, dsm.MsgType.READ);
 * ```
 *
 * @module
 */

export * as cow from "./cow.ts";
export * as san from "./san.ts";
export * as netguard from "./netguard.ts";
export * as dsm from "./dsm.ts";
export { VERSION } from "../version.ts";
