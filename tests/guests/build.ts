/**
 * Builds the test and demo guests from their C/asm sources with gcc into
 * `tests/guests/out/`. (Placeholder until the guest sources land.)
 *
 * @module
 */

/** Builds every guest; returns the output directory. */
export function buildGuests(): Promise<string> {
  return Promise.resolve(new URL("./out/", import.meta.url).pathname);
}
