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

/**
 * A peer closed or reset a connection before answering the handshake: it may
 * be busy (too many connections at its start) or not be up yet; try again.
 */
export class DsmPeerBusyError extends DsmProtocolError {
  /** Creates the error. */
  constructor(message: string) {
    super(message);
    this.name = "DsmPeerBusyError";
  }
}
