/**
 * vmkit `netguard` primitive.
 *
 * @module
 */

/** Name of this primitive, for diagnostics. */
export const PRIMITIVE: string = "netguard";
