/**
 * `vmkit sui`: not yet implemented.
 *
 * @module
 */

/** Runs `vmkit sui`; returns the exit status. */
export function main(_args: string[]): Promise<number> {
  console.error("vmkit sui: not implemented yet");
  return Promise.resolve(1);
}
