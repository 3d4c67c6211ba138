/**
 * Image format probing from the first sector, as QEMU's `bdrv_probe_all`
 * does it for the formats QEMU recognises by content. vmkit opens raw and
 * qcow2; probing also names the other formats, so that a VMDK or VHDX file
 * is refused instead of being taken for a raw disk, and so that a probed raw
 * image can refuse the writes that would make it probe as something else.
 *
 * @module
 */

import { QCOW2_MAGIC } from "./qcow2_format.ts";

/** Bytes of an image's start that probing looks at (QEMU's BLOCK_PROBE_BUF_SIZE). */
export const PROBE_BYTES = 512;

const ascii = (s: string): Uint8Array => new Uint8Array(Array.from(s, (c) => c.charCodeAt(0)));

/** Signatures at offset 0, by format name. */
const SIGNATURES: ReadonlyArray<{ format: string; magic: Uint8Array; at?: number }> = [
  { format: "qed", magic: ascii("QED\0") },
  { format: "vmdk", magic: ascii("KDMV") },
  { format: "vmdk", magic: ascii("COWD") },
  { format: "vmdk", magic: ascii("# Disk DescriptorFile") },
  { format: "vhdx", magic: ascii("vhdxfile") },
  { format: "vpc", magic: ascii("conectix") },
  { format: "luks", magic: ascii("LUKS\xba\xbe") },
  { format: "parallels", magic: ascii("WithoutFreeSpace") },
  { format: "parallels", magic: ascii("WithouFreSpacExt") },
  { format: "bochs", magic: ascii("Bochs Virtual HD Image") },
  { format: "cloop", magic: ascii("#!/bin/sh\n#V2.0 Format\n") },
  // VDI: the signature word 0xbeda107f (little-endian) at 0x40.
  { format: "vdi", magic: new Uint8Array([0x7f, 0x10, 0xda, 0xbe]), at: 0x40 },
];

function startsWith(buf: Uint8Array, magic: Uint8Array, at: number): boolean {
  if (buf.length < at + magic.length) return false;
  for (let i = 0; i < magic.length; i++) if (buf[at + i] !== magic[i]) return false;
  return true;
}

/**
 * The format the first bytes of an image (up to {@link PROBE_BYTES}) say it
 * has: "qcow2", "raw", or the name of another format ("qcow" for qcow
 * version 1, "vmdk", "vhdx", ...).
 */
export function probeBytes(head: Uint8Array): string {
  if (head.length >= 8) {
    const v = new DataView(head.buffer, head.byteOffset, head.byteLength);
    if (v.getUint32(0, false) === QCOW2_MAGIC) {
      const version = v.getUint32(4, false);
      return version === 1 ? "qcow" : "qcow2";
    }
  }
  for (const s of SIGNATURES) if (startsWith(head, s.magic, s.at ?? 0)) return s.format;
  return "raw";
}
