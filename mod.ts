/**
 * vmkit: virtualization primitives for Deno, composed over /dev/kvm into a VMM.
 *
 * Each primitive is also importable on its own (`@vmkit/vmkit/cow`, `/san`, ...).
 *
 * @example
 * ```ts
 * import { cow } from "@vmkit/vmkit";
 * console.log(typeof cow);
 * ```
 *
 * @module
 */

export * as native from "./native/mod.ts";
export * as vmm from "./vmm/mod.ts";
export * as cow from "./cow/mod.ts";
export * as checkpoint from "./checkpoint/mod.ts";
export * as netguard from "./netguard/mod.ts";
export * as san from "./san/mod.ts";
export * as dsm from "./dsm/mod.ts";
export { VERSION } from "./version.ts";
