/**
 * The one error type of the boot loaders.
 *
 * @module
 */

/**
 * Raised when a kernel image, initrd or command line cannot be loaded: the
 * message says what is wrong with which input and what to do about it. Kernel
 * images are hostile input, so every malformed field ends here, never in an
 * out-of-bounds access.
 */
export class BootError extends Error {
  /** Creates the error with a message a user can act on. */
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "BootError";
  }
}

/** Formats `n` as `0x…` hex, for messages (negative values as 64-bit two's complement). */
export function hex(n: number): string {
  if (n < 0 && Number.isSafeInteger(n)) return `0x${BigInt.asUintN(64, BigInt(n)).toString(16)}`;
  return `0x${n.toString(16)}`;
}

/** Formats a byte count as MiB, rounded up, for messages. */
export function mib(bytes: number): string {
  return `${Math.ceil(bytes / 0x10_0000)} MiB`;
}
