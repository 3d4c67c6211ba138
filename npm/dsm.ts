/**
 * The Node build's `dsm`: the wire protocol codecs (frames), the directory
 * state machine and the block layout. Nodes, workers and clusters need Deno
 * (`@vmkit/vmkit/dsm`).
 *
 * @example
 * ```ts
 * import { MsgType } from "./dsm.ts";
 * console.log(MsgType.READ);
 * ```
 *
 * @module
 */

export * from "../dsm/errors.ts";
export * from "../dsm/frames.ts";
export * from "../dsm/directory.ts";
export * from "../dsm/layout.ts";
