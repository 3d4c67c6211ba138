/**
 * vmkit ACPI: the tables a machine hands its guest (RSDP, XSDT, FADT, MADT,
 * DSDT), the AML encoder that writes the DSDT, an `acpidump`-style dump, and
 * the VM generation id page that a checkpoint restore rewrites.
 *
 * @example
 * ```ts
 * import { buildAcpi, dumpTables } from "./mod.ts";
 * const acpi = buildAcpi({
 *   vcpus: 2,
 *   mmioDevices: [{ name: "blk0", base: 0xd000_0000, size: 0x1000, gsi: 5 }],
 *   serial: { port: 0x3f8, irq: 4 },
 *   vmgenid: { gsi: 6 },
 * });
 * console.log(dumpTables(acpi.tables));
 * ```
 *
 * @module
 */

export {
  ACPI_AREA_END,
  type AcpiConfig,
  type AcpiLayout,
  type AcpiTable,
  buildAcpi,
  RSDP_ADDR,
  VMGENID_ADDR,
  VMGENID_SIZE,
  type VmGenIdLocation,
} from "./build.ts";
export type { MmioDeviceInfo, SerialPortInfo } from "./dsdt.ts";
export { AcpiError } from "./errors.ts";
export { dumpTable, dumpTables } from "./dump.ts";
export {
  acpiConfigFromSpecs,
  changeVmGenId,
  newVmGenId,
  readVmGenId,
  writeAcpi,
  writeVmGenId,
} from "./install.ts";
export { pcIrqRoutes } from "./irq_routing.ts";
export {
  IOAPIC_ADDR,
  IOAPIC_PINS,
  LOCAL_APIC_ADDR,
  PC_SOURCE_OVERRIDES,
  type SourceOverride,
} from "./madt.ts";
