/**
 * `vmkit san`: not yet implemented.
 *
 * @module
 */

/** Runs `vmkit san`; returns the exit status. */
export function main(_args: string[]): Promise<number> {
  console.error("vmkit san: not implemented yet");
  return Promise.resolve(1);
}
