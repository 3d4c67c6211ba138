/**
 * Typed errors of the `san` primitive. Every error names what failed, on what
 * input, and what to do about it.
 *
 * @module
 */

/** Base class of every error thrown by `san/`. */
export class SanError extends Error {
  /** Creates a SAN error with an actionable message. */
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "SanError";
  }
}

/** A storage-network identity (WWN, iSCSI name, NQN) failed to parse or validate. */
export class SuiFormatError extends SanError {
  /** The offending input. */
  readonly input: string;
  /** Creates a format error for `input`. */
  constructor(input: string, message: string) {
    super(message);
    this.name = "SuiFormatError";
    this.input = input;
  }
}

/** A SUI registry operation failed (I/O, corruption, exhausted space, etcd error). */
export class SuiRegistryError extends SanError {
  /** Creates a registry error. */
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "SuiRegistryError";
  }
}

/** A protocol violation or malformed PDU from an iSCSI target. */
export class IscsiProtocolError extends SanError {
  /** Creates a protocol error. */
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "IscsiProtocolError";
  }
}

/** The TCP connection to a target failed and could not be re-established in time. */
export class IscsiConnectionError extends SanError {
  /** Creates a connection error. */
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "IscsiConnectionError";
  }
}

/** The session was closed (logout or close) while the operation was pending or after. */
export class IscsiSessionClosedError extends SanError {
  /** Creates a closed-session error. */
  constructor(message: string) {
    super(message);
    this.name = "IscsiSessionClosedError";
  }
}

/** Human-readable names of RFC 7143 login status codes (class << 8 | detail). */
export const LOGIN_STATUS_TEXT: Readonly<Record<number, string>> = {
  0x0101: "target moved temporarily",
  0x0102: "target moved permanently",
  0x0200: "initiator error",
  0x0201: "authentication failure",
  0x0202: "authorization failure (this initiator name may not access the target)",
  0x0203: "target not found (or not visible to this initiator name)",
  0x0204: "target removed",
  0x0205: "unsupported version",
  0x0206: "too many connections",
  0x0207: "missing parameter",
  0x0208: "can't include in session",
  0x0209: "session type not supported",
  0x020a: "session does not exist",
  0x020b: "invalid request during login",
  0x0300: "target error",
  0x0301: "service unavailable",
  0x0302: "out of resources",
};

/** The target rejected a login (non-zero Status-Class in a Login Response). */
export class IscsiLoginError extends SanError {
  /** Status-Class byte (1 redirect, 2 initiator error, 3 target error). */
  readonly statusClass: number;
  /** Status-Detail byte. */
  readonly statusDetail: number;
  /** The initiator name the login used. */
  readonly initiatorName: string;
  /** The target name the login asked for ("" for discovery). */
  readonly targetName: string;
  /** Creates a login error from the response's status bytes. */
  constructor(
    statusClass: number,
    statusDetail: number,
    initiatorName: string,
    targetName: string,
    extra = "",
  ) {
    const code = (statusClass << 8) | statusDetail;
    const text = LOGIN_STATUS_TEXT[code] ?? "unknown status";
    super(
      `iSCSI login of '${initiatorName}' to '${targetName || "discovery"}' rejected: ` +
        `${text} (status 0x${code.toString(16).padStart(4, "0")})${extra}; ` +
        `check the target's ACL (initiator name binding) and CHAP credentials`,
    );
    this.name = "IscsiLoginError";
    this.statusClass = statusClass;
    this.statusDetail = statusDetail;
    this.initiatorName = initiatorName;
    this.targetName = targetName;
  }
}

/** A block-device request on a LUN was invalid (out of range, device closed, read-only). */
export class SanDeviceError extends SanError {
  /** Creates a device error. */
  constructor(message: string) {
    super(message);
    this.name = "SanDeviceError";
  }
}
