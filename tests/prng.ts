/**
 * The seeded PRNG of the randomized tests (mulberry32): the same seed gives the
 * same sequence, so a failing seed printed by a test reproduces the failure.
 * It is netguard's synthetic-traffic PRNG, one implementation for both.
 *
 * @module
 */

export { prng } from "../netguard/synth.ts";
