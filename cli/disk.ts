/**
 * `vmkit disk`: not yet implemented.
 *
 * @module
 */

/** Runs `vmkit disk`; returns the exit status. */
export function main(_args: string[]): Promise<number> {
  console.error("vmkit disk: not implemented yet");
  return Promise.resolve(1);
}
