/**
 * `vmkit dsm`: not yet implemented.
 *
 * @module
 */

/** Runs `vmkit dsm`; returns the exit status. */
export function main(_args: string[]): Promise<number> {
  console.error("vmkit dsm: not implemented yet");
  return Promise.resolve(1);
}
