/**
 * The Root System Description Pointer (ACPI 6.5 §5.2.5, revision 2) and the
 * Extended System Description Table it points to (§5.2.8).
 *
 * @module
 */

import { AcpiError } from "./errors.ts";
import { checksumByte, OEM_ID, putAscii, sdt } from "./sdt.ts";

/** Offsets of the RSDP fields. */
export const RSDP = {
  signature: 0,
  /** Checksum of the first 20 bytes (the ACPI 1.0 structure). */
  checksum: 8,
  oemId: 9,
  revision: 15,
  rsdtAddress: 16,
  length: 20,
  xsdtAddress: 24,
  /** Checksum of the whole structure. */
  extendedChecksum: 32,
  /** Size of the ACPI 1.0 part covered by {@link RSDP.checksum}. */
  v1Size: 20,
  size: 36,
} as const;

/** "RSD PTR " (with its trailing space). */
export const RSDP_SIGNATURE = "RSD PTR ";
/** RSDP revision 2: ACPI 2.0 and later, with the XSDT address. */
export const RSDP_REVISION = 2;
/** XSDT revision (§5.2.8). */
export const XSDT_REVISION = 1;

/**
 * The RSDP for an XSDT at `xsdtAddr`. The RSDT address is 0: vmkit writes
 * no RSDT, and an OS that knows revision 2 uses the XSDT.
 */
export function buildRsdp(xsdtAddr: number): Uint8Array {
  const out = new Uint8Array(RSDP.size);
  const dv = new DataView(out.buffer);
  putAscii(dv, RSDP.signature, RSDP_SIGNATURE, 8);
  putAscii(dv, RSDP.oemId, OEM_ID, 6);
  dv.setUint8(RSDP.revision, RSDP_REVISION);
  dv.setUint32(RSDP.rsdtAddress, 0, true);
  dv.setUint32(RSDP.length, RSDP.size, true);
  dv.setBigUint64(RSDP.xsdtAddress, BigInt(xsdtAddr), true);
  out[RSDP.checksum] = checksumByte(out, 0, RSDP.v1Size);
  out[RSDP.extendedChecksum] = checksumByte(out, 0, RSDP.size);
  return out;
}

/** The XSDT listing the tables at `entries` (64-bit physical addresses). */
export function buildXsdt(entries: readonly number[]): Uint8Array {
  const body = new Uint8Array(8 * entries.length);
  const dv = new DataView(body.buffer);
  entries.forEach((addr, i) => {
    if (!Number.isSafeInteger(addr) || addr <= 0) {
      throw new AcpiError(`XSDT entry ${i} has the impossible address ${addr}`);
    }
    dv.setBigUint64(8 * i, BigInt(addr), true);
  });
  return sdt("XSDT", XSDT_REVISION, body);
}
