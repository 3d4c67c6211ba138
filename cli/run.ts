/**
 * `vmkit run`: not yet implemented.
 *
 * @module
 */

/** Runs `vmkit run`; returns the exit status. */
export function main(_args: string[]): Promise<number> {
  console.error("vmkit run: not implemented yet");
  return Promise.resolve(1);
}
