/**
 * vmkit `native`: the C shim over /dev/kvm and its typed bindings.
 *
 * @module
 */

export type { DTable, Regs, Segment, Sregs } from "./kvm_types.ts";
