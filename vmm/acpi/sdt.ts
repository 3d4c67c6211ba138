/**
 * The System Description Table header every ACPI table but the RSDP starts
 * with (ACPI 6.5 §5.2.6), vmkit's OEM identity, and the checksum rule (all
 * bytes of a table sum to zero, modulo 256).
 *
 * @module
 */

import { AcpiError } from "./errors.ts";

/** Offsets of the SDT header fields. */
export const SDT = {
  signature: 0,
  length: 4,
  revision: 8,
  checksum: 9,
  oemId: 10,
  oemTableId: 16,
  oemRevision: 24,
  creatorId: 28,
  creatorRevision: 32,
  /** Header size; a table's own fields start here. */
  size: 36,
} as const;

/** OEMID of every vmkit table (6 characters). */
export const OEM_ID = "VMKIT ";
/** Creator ID of every vmkit table (4 characters). */
export const CREATOR_ID = "VMKT";
/** OEM and creator revision. */
export const VMKIT_REVISION = 1;

/** Writes ASCII `s` (exactly `len` characters) at `off`. */
export function putAscii(dv: DataView, off: number, s: string, len: number): void {
  if (s.length !== len || !/^[\x20-\x7e]*$/.test(s)) {
    throw new AcpiError(`ACPI field '${s}' must be ${len} printable ASCII characters`);
  }
  for (let i = 0; i < len; i++) dv.setUint8(off + i, s.charCodeAt(i));
}

/** The 8-bit sum of `bytes[start, end)`. */
export function byteSum(bytes: Uint8Array, start = 0, end = bytes.length): number {
  let sum = 0;
  for (let i = start; i < end; i++) sum = (sum + (bytes[i] ?? 0)) & 0xff;
  return sum;
}

/** The byte that makes `bytes[start, end)` (with it at `at`, currently 0) sum to zero. */
export function checksumByte(bytes: Uint8Array, start = 0, end = bytes.length): number {
  return (0x100 - byteSum(bytes, start, end)) & 0xff;
}

/**
 * A complete table: the header for `signature` and `revision`, then `body`
 * (the table's fields after the header), with length and checksum filled in.
 * The OEM table id is `VMKT` followed by the signature.
 */
export function sdt(signature: string, revision: number, body: Uint8Array): Uint8Array {
  const out = new Uint8Array(SDT.size + body.length);
  const dv = new DataView(out.buffer);
  putAscii(dv, SDT.signature, signature, 4);
  dv.setUint32(SDT.length, out.length, true);
  dv.setUint8(SDT.revision, revision);
  putAscii(dv, SDT.oemId, OEM_ID, 6);
  putAscii(dv, SDT.oemTableId, `VMKT${signature}`, 8);
  dv.setUint32(SDT.oemRevision, VMKIT_REVISION, true);
  putAscii(dv, SDT.creatorId, CREATOR_ID, 4);
  dv.setUint32(SDT.creatorRevision, VMKIT_REVISION, true);
  out.set(body, SDT.size);
  out[SDT.checksum] = checksumByte(out);
  return out;
}
