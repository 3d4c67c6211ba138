/**
 * Device specs: the plain, structured-clone-able description of one device
 * (kind, name, config, shared state) that the machine posts to every vCPU
 * Worker, where {@link createDevices} builds that thread's instance.
 *
 * @module
 */

/** One device as posted to every thread: all threads share `state`. */
export interface DeviceSpec {
  /** Device kind, e.g. `"serial16550"`; selects the implementation. */
  readonly kind: string;
  /** Stable name (the checkpoint key), e.g. `"com1"`. */
  readonly name: string;
  /** Kind-specific settings: plain JSON-like values only. */
  readonly config: Readonly<Record<string, unknown>>;
  /** The device's whole mutable state, shared by every thread's instance. */
  readonly state: SharedArrayBuffer;
}

/** Raised for a device spec with an unknown kind, a bad config value or a wrong state size. */
export class DeviceSpecError extends Error {
  /** Creates the error for the device named `name`. */
  constructor(name: string, detail: string) {
    super(`device '${name}': ${detail}`);
    this.name = "DeviceSpecError";
  }
}

/** Reads an integer config value in `[min, max]`, or `fallback` when absent. */
export function configInt(
  spec: DeviceSpec,
  key: string,
  fallback: number,
  min: number,
  max: number,
): number {
  const v = spec.config[key];
  if (v === undefined) return fallback;
  if (typeof v !== "number" || !Number.isInteger(v) || v < min || v > max) {
    throw new DeviceSpecError(
      spec.name,
      `config '${key}' must be an integer in ${min}..${max}, got ${JSON.stringify(v)}`,
    );
  }
  return v;
}

/** Reads a string config value, or `fallback` when absent. */
export function configString(spec: DeviceSpec, key: string, fallback: string): string {
  const v = spec.config[key];
  if (v === undefined) return fallback;
  if (typeof v !== "string") {
    throw new DeviceSpecError(
      spec.name,
      `config '${key}' must be a string, got ${JSON.stringify(v)}`,
    );
  }
  return v;
}

/** Reads a boolean config value, or `fallback` when absent. */
export function configBool(spec: DeviceSpec, key: string, fallback: boolean): boolean {
  const v = spec.config[key];
  if (v === undefined) return fallback;
  if (typeof v !== "boolean") {
    throw new DeviceSpecError(
      spec.name,
      `config '${key}' must be true or false, got ${JSON.stringify(v)}`,
    );
  }
  return v;
}

/** Throws unless `spec.state` is exactly `bytes` long. */
export function checkStateSize(spec: DeviceSpec, bytes: number): void {
  if (!(spec.state instanceof SharedArrayBuffer) || spec.state.byteLength !== bytes) {
    throw new DeviceSpecError(
      spec.name,
      `state must be a SharedArrayBuffer of ${bytes} bytes for kind '${spec.kind}'`,
    );
  }
}
