/**
 * Typed errors of the `cow/` primitive.
 *
 * @module
 */

/** Base class of every error `cow/` throws. */
export class CowError extends Error {
  /** Creates an error with `message`. */
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "CowError";
  }
}

/** A system call on an image file failed; carries the errno. */
export class DiskIoError extends CowError {
  /** The errno value of the failed call. */
  readonly errno: number;
  /** Creates an I/O error for `call` on `path` with `errno` and its text. */
  constructor(call: string, path: string, errno: number, text: string) {
    super(`${call} on '${path}' failed: ${text} (errno ${errno})`);
    this.name = "DiskIoError";
    this.errno = errno;
  }
}

/** The file is not a valid qcow2 image, or its metadata is corrupt. */
export class QcowError extends CowError {
  /** Creates a qcow2 format error. */
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "QcowError";
  }
}

/** The image uses a qcow2 feature vmkit does not implement. */
export class UnsupportedFeatureError extends QcowError {
  /** Creates an unsupported-feature error. */
  constructor(message: string) {
    super(message);
    this.name = "UnsupportedFeatureError";
  }
}

/** A backing chain cannot be opened (missing parent, loop, bad format). */
export class BackingChainError extends CowError {
  /** Creates a backing-chain error. */
  constructor(message: string) {
    super(message);
    this.name = "BackingChainError";
  }
}

/** A read, write or discard falls outside the device or is malformed. */
export class BlockRangeError extends CowError {
  /** Creates a range error. */
  constructor(message: string) {
    super(message);
    this.name = "BlockRangeError";
  }
}

/** A live operation (switch, copy, commit, stream) failed or was misused. */
export class LiveOperationError extends CowError {
  /** Creates a live-operation error. */
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "LiveOperationError";
  }
}

/** Thrown by a {@link FaultInjector} at the write point it was told to fail. */
export class InjectedFault extends CowError {
  /** Which write point (1-based) failed. */
  readonly point: number;
  /** Creates the fault for write point `point`. */
  constructor(point: number) {
    super(`injected fault at write point ${point}`);
    this.name = "InjectedFault";
    this.point = point;
  }
}
