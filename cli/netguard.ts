/**
 * `vmkit netguard`: not yet implemented.
 *
 * @module
 */

/** Runs `vmkit netguard`; returns the exit status. */
export function main(_args: string[]): Promise<number> {
  console.error("vmkit netguard: not implemented yet");
  return Promise.resolve(1);
}
