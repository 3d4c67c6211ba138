/**
 * The envelope of a saved device state: a small header naming the device kind
 * and state version, then the state bytes. Shared by every device's `save()`
 * and `restore()` so a checkpoint can never feed one device another's bytes.
 *
 * Layout (little-endian):
 *
 * | offset | size | field                                  |
 * | ------ | ---- | -------------------------------------- |
 * | 0      | 4    | magic `VMKD`                           |
 * | 4      | 2    | state version                          |
 * | 6      | 1    | length of the kind name                |
 * | 7      | 1    | reserved, 0                            |
 * | 8      | 32   | kind name, ASCII, zero padded          |
 * | 40     | 4    | length of the state bytes              |
 * | 44     | n    | state bytes                            |
 *
 * @module
 */

const MAGIC = 0x444b_4d56; // "VMKD" read as a little-endian u32
const OFF_MAGIC = 0;
const OFF_VERSION = 4;
const OFF_KIND_LEN = 6;
const OFF_KIND = 8;
const KIND_MAX = 32;
const OFF_PAYLOAD_LEN = 40;
/** Bytes of header before the state bytes. */
export const STATE_HEADER_BYTES = 44;

/** Raised when saved device state is malformed or belongs to another device kind or version. */
export class DeviceStateError extends Error {
  /** Creates the error for device `kind` with what was wrong. */
  constructor(kind: string, detail: string) {
    super(`device state (${kind}): ${detail}; pass bytes produced by the same device's save()`);
    this.name = "DeviceStateError";
  }
}

/** Wraps `payload` in the header for `kind` at `version`. */
export function encodeDeviceState(kind: string, version: number, payload: Uint8Array): Uint8Array {
  if (kind.length === 0 || kind.length > KIND_MAX || !/^[\x20-\x7e]+$/.test(kind)) {
    throw new DeviceStateError(kind, `kind must be 1..${KIND_MAX} printable ASCII characters`);
  }
  const out = new Uint8Array(STATE_HEADER_BYTES + payload.length);
  const dv = new DataView(out.buffer);
  dv.setUint32(OFF_MAGIC, MAGIC, true);
  dv.setUint16(OFF_VERSION, version, true);
  dv.setUint8(OFF_KIND_LEN, kind.length);
  for (let i = 0; i < kind.length; i++) out[OFF_KIND + i] = kind.charCodeAt(i);
  dv.setUint32(OFF_PAYLOAD_LEN, payload.length, true);
  out.set(payload, STATE_HEADER_BYTES);
  return out;
}

/**
 * Checks the header of `data` against `kind`, `version` and the expected
 * state length; returns a view of the state bytes.
 */
export function decodeDeviceState(
  kind: string,
  version: number,
  expectedLength: number,
  data: Uint8Array,
): Uint8Array {
  if (data.length < STATE_HEADER_BYTES) {
    throw new DeviceStateError(kind, `${data.length} bytes is shorter than the state header`);
  }
  const dv = new DataView(data.buffer, data.byteOffset, data.byteLength);
  if (dv.getUint32(OFF_MAGIC, true) !== MAGIC) {
    throw new DeviceStateError(kind, "missing the VMKD magic");
  }
  const kindLen = dv.getUint8(OFF_KIND_LEN);
  if (kindLen > KIND_MAX) throw new DeviceStateError(kind, `kind length ${kindLen} is too long`);
  let savedKind = "";
  for (let i = 0; i < kindLen; i++) savedKind += String.fromCharCode(dv.getUint8(OFF_KIND + i));
  if (savedKind !== kind) {
    throw new DeviceStateError(kind, `the state was saved by a '${savedKind}' device`);
  }
  const savedVersion = dv.getUint16(OFF_VERSION, true);
  if (savedVersion !== version) {
    throw new DeviceStateError(kind, `state version ${savedVersion} is not ${version}`);
  }
  const len = dv.getUint32(OFF_PAYLOAD_LEN, true);
  if (len !== expectedLength || data.length !== STATE_HEADER_BYTES + len) {
    throw new DeviceStateError(
      kind,
      `state is ${data.length - STATE_HEADER_BYTES} bytes (header says ${len}), ` +
        `expected ${expectedLength}`,
    );
  }
  return data.subarray(STATE_HEADER_BYTES);
}
