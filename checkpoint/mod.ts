/**
 * vmkit `checkpoint` primitive.
 *
 * @module
 */

/** Name of this primitive, for diagnostics. */
export const PRIMITIVE: string = "checkpoint";
