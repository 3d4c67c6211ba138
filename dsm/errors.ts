/**
 * Typed errors of the `dsm` primitive.
 *
 * @module
 */

/** Base class of every error raised by `dsm`. */
export class DsmError extends Error {
  /** Creates an error with a message a user can act on. */
  constructor(message: string) {
    super(message);
    this.name = "DsmError";
  }
}

/** A shared access was out of bounds, misaligned or named an unknown region. */
export class DsmAccessError extends DsmError {
  /** Creates an access error. */
  constructor(message: string) {
    super(message);
    this.name = "DsmAccessError";
  }
}

/** A node of the cluster died (its connection closed without a goodbye). */
export class DsmNodeDeathError extends DsmError {
  /** Creates a node-death error. */
  constructor(message: string) {
    super(message);
    this.name = "DsmNodeDeathError";
  }
}

/** A peer sent a frame that breaks the protocol (bad type, length, region or block). */
export class DsmProtocolError extends DsmError {
  /** Creates a protocol error. */
  constructor(message: string) {
    super(message);
    this.name = "DsmProtocolError";
  }
}

/** A program, region specification or cluster option is invalid. */
export class DsmConfigError extends DsmError {
  /** Creates a configuration error. */
  constructor(message: string) {
    super(message);
    this.name = "DsmConfigError";
  }
}
