/**
 * The Node build's `netguard`: pcap/pcapng parsing, packet classification,
 * the detectors and the policy engine (`NetGuard`), replay and reports. Live
 * capture from interfaces and TAP devices needs Deno (`@vmkit/vmkit/netguard`).
 *
 * @example
 * ```ts
 * import { defaultConfig, NetGuard } from "./netguard.ts";
 * const guard = new NetGuard(defaultConfig());
 * console.log(typeof guard.onEvent);
 * ```
 *
 * @module
 */

export * from "../netguard/errors.ts";
export * from "../netguard/packet.ts";
export * from "../netguard/packet_text.ts";
export * from "../netguard/pcap.ts";
export * from "../netguard/cidr.ts";
export * from "../netguard/config.ts";
export * from "../netguard/config_parse.ts";
export * from "../netguard/events.ts";
export * from "../netguard/sliding_window.ts";
export * from "../netguard/top_k.ts";
export * from "../netguard/flow_table.ts";
export * from "../netguard/detectors.ts";
export * from "../netguard/token_bucket.ts";
export * from "../netguard/monitor.ts";
export * from "../netguard/guard.ts";
export * from "../netguard/capture_input.ts";
export * from "../netguard/synth.ts";
export * from "../netguard/report.ts";
