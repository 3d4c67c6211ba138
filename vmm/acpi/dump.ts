/**
 * An `acpidump`-style text dump of a machine's tables: the format ACPICA's
 * `acpidump` prints and its `acpixtract` reads back (`SIG @ 0xADDRESS`, then
 * 16 bytes a line as hex and ASCII, a blank line after each table).
 *
 * @module
 */

import type { AcpiTable } from "./build.ts";

const printable = (b: number): string => b >= 0x20 && b < 0x7f ? String.fromCharCode(b) : ".";
const hex = (n: number, w: number): string => n.toString(16).toUpperCase().padStart(w, "0");

/** One table in `acpidump`'s format (the RSDP is named `RSDP`, as acpidump names it). */
export function dumpTable(table: AcpiTable): string {
  const sig = table.signature.startsWith("RSD PTR") ? "RSDP" : table.signature;
  const lines = [`${sig} @ 0x${hex(table.addr, 16)}`];
  const b = table.bytes;
  for (let off = 0; off < b.length; off += 16) {
    const row = b.subarray(off, off + 16);
    const bytes = Array.from(row, (x) => hex(x, 2) + " ").join("").padEnd(48, " ");
    lines.push(`    ${hex(off, 4)}: ${bytes} ${Array.from(row, printable).join("")}`);
  }
  return lines.join("\n") + "\n\n";
}

/** Every table, in the order given. */
export function dumpTables(tables: readonly AcpiTable[]): string {
  return tables.map(dumpTable).join("");
}
