/**
 * Typed errors of the netguard primitive. Each names what failed, on what
 * input, and what to do about it.
 *
 * @module
 */

/** Base class of every netguard error. */
export class NetguardError extends Error {
  /** Creates the error with a message a user can act on. */
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "NetguardError";
  }
}

/** A capture file (pcap or pcapng) that cannot be read. */
export class CaptureFormatError extends NetguardError {
  /** Creates the error for capture `source`. */
  constructor(source: string, detail: string) {
    super(`capture ${source}: ${detail}`);
    this.name = "CaptureFormatError";
  }
}

/** A configuration that does not validate. */
export class ConfigError extends NetguardError {
  /** Creates the error for the config field at `path`. */
  constructor(path: string, detail: string) {
    super(`netguard config: ${path}: ${detail}`);
    this.name = "ConfigError";
  }
}

/** A VM id that is unknown or registered twice. */
export class VmRegistryError extends NetguardError {
  /** Creates the error. */
  constructor(message: string) {
    super(message);
    this.name = "VmRegistryError";
  }
}

/** A native call (TAP, AF_PACKET) that failed; carries the errno. */
export class NativeNetError extends NetguardError {
  /** The positive errno value. */
  readonly errno: number;
  /** Creates the error for `call` on `target` that returned `-errno` (described by `text`). */
  constructor(call: string, target: string, errno: number, text: string, hint = "") {
    super(`${call}(${target}) failed: ${text} (errno ${errno})${hint ? `; ${hint}` : ""}`);
    this.name = "NativeNetError";
    this.errno = errno;
  }
}
