/**
 * What identifies a LUN's contents well enough to refuse a changed one: its
 * size and block size, its Device Identification designators (VPD page
 * 0x83, those of the logical unit itself: NAA, EUI-64, T10 vendor id…), its
 * Unit Serial Number (VPD page 0x80) and a SHA-256 of its first 64 KiB.
 * A checkpoint records it for a LUN that is a frozen parent; a restore
 * compares it with the LUN it logs in to.
 *
 * @module
 */

import type { IscsiBlockDevice } from "./iscsi_block_device.ts";
import {
  type Designator,
  parseDeviceIdentification,
  parseUnitSerial,
  VPD_DEVICE_ID,
  VPD_UNIT_SERIAL,
} from "./scsi.ts";

/** Bytes at the start of a LUN whose digest is part of its identity. */
export const LUN_HEAD_BYTES = 64 * 1024;

/** A LUN's identity (see the module doc). */
export interface LunIdentity {
  /** Size in bytes. */
  readonly bytes: number;
  /** Logical block size in bytes. */
  readonly blockSize: number;
  /** The logical unit's designators (association 0) from VPD page 0x83; empty if none. */
  readonly designators: readonly Designator[];
  /** Unit Serial Number (VPD page 0x80); empty if the unit has none. */
  readonly serial: string;
  /** SHA-256 (hex) of the first {@link LUN_HEAD_BYTES} bytes (all of a smaller LUN). */
  readonly headSha256: string;
}

/**
 * Reads the identity of the LUN behind `dev` (two INQUIRYs and one 64 KiB
 * read on its session).
 */
export async function lunIdentity(dev: IscsiBlockDevice): Promise<LunIdentity> {
  const [ids, serial] = await Promise.all([
    dev.session.inquiryVpd(dev.lun, VPD_DEVICE_ID),
    dev.session.inquiryVpd(dev.lun, VPD_UNIT_SERIAL),
  ]);
  const head = new Uint8Array(Math.min(LUN_HEAD_BYTES, dev.size));
  await dev.read(0, head);
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", head));
  return {
    bytes: dev.size,
    blockSize: dev.blockSize,
    designators: ids === null
      ? []
      : parseDeviceIdentification(ids).filter((d) => d.association === 0),
    serial: serial === null ? "" : parseUnitSerial(serial),
    headSha256: Array.from(digest, (b) => b.toString(16).padStart(2, "0")).join(""),
  };
}

/** How `now` differs from `was` in words (the first difference), or null when equal. */
export function lunIdentityChange(was: LunIdentity, now: LunIdentity): string | null {
  if (now.bytes !== was.bytes) return `its size is ${now.bytes} bytes, not ${was.bytes}`;
  if (now.blockSize !== was.blockSize) {
    return `its block size is ${now.blockSize}, not ${was.blockSize}`;
  }
  const ids = (l: LunIdentity): string =>
    l.designators.map((d) => `${d.type}/${d.codeSet}:${d.value}`).join(",");
  if (ids(now) !== ids(was)) {
    return `its device identification (VPD page 0x83) is [${ids(now)}], not [${ids(was)}]: ` +
      "another logical unit";
  }
  if (now.serial !== was.serial) {
    return `its unit serial number (VPD page 0x80) is '${now.serial}', not '${was.serial}'`;
  }
  if (now.headSha256 !== was.headSha256) return "its first 64 KiB changed";
  return null;
}
