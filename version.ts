/**
 * The vmkit release this code is: printed by `vmkit --version` and served at
 * the control API's `GET /version`. `deno task check` keeps it equal to
 * `deno.json`'s `version`.
 *
 * @example
 * ```ts
 * import { VERSION } from "./version.ts";
 * console.log(`vmkit ${VERSION}`);
 * ```
 *
 * @module
 */

/** The vmkit version (semver), as in `deno.json`. */
export const VERSION = "0.1.0";
