/**
 * The Fixed ACPI Description Table (ACPI 6.5 §5.2.9), for a hardware-reduced
 * platform (§4.1): no PM1/GPE register blocks, no SCI, no SMI command port,
 * no FACS; the DSDT by its 64-bit address.
 *
 * @module
 */

import { SDT, sdt } from "./sdt.ts";

/** Offsets of the FADT fields vmkit sets, from the start of the table. */
export const FADT = {
  firmwareCtrl: 36,
  dsdt: 40,
  preferredPmProfile: 45,
  sciInt: 46,
  smiCmd: 48,
  pLvl2Lat: 96,
  pLvl3Lat: 98,
  century: 108,
  iapcBootArch: 109,
  flags: 112,
  resetReg: 116,
  armBootArch: 129,
  minorVersion: 131,
  xFirmwareCtrl: 132,
  xDsdt: 140,
  sleepControlReg: 244,
  sleepStatusReg: 256,
  hypervisorVendorId: 268,
  /** Length of an ACPI 6.x FADT. */
  size: 276,
} as const;

/** FADT major version (the header revision) and minor version: ACPI 6.3. */
export const FADT_REVISION = 6;
/** FADT minor version. */
export const FADT_MINOR_VERSION = 3;

/** FADT flags (§5.2.9, Table 5.10). */
export const FADT_FLAGS = {
  /** WBINVD works (required of ACPI 2.0+ processors). */
  WBINVD: 1 << 0,
  /** No fixed-feature power button (a hardware-reduced platform has none). */
  PWR_BUTTON: 1 << 4,
  /** No fixed-feature sleep button. */
  SLP_BUTTON: 1 << 5,
  /** Hardware-reduced ACPI: no fixed hardware (§4.1). */
  HW_REDUCED_ACPI: 1 << 20,
} as const;

/** IA-PC boot architecture flags (§5.2.9.3, Table 5.11). */
export const IAPC_BOOT_ARCH = {
  /** User-visible devices on an ISA/LPC bus (COM1 and the like). */
  LEGACY_DEVICES: 1 << 0,
  /** An 8042 keyboard controller at ports 0x60/0x64. */
  I8042: 1 << 1,
  /** No VGA: the OS must not probe VGA hardware. */
  VGA_NOT_PRESENT: 1 << 2,
  /** MSI must not be enabled (no MSI-capable device). */
  MSI_NOT_SUPPORTED: 1 << 3,
  /** The OS must not enable PCIe ASPM. */
  PCIE_ASPM_CONTROLS: 1 << 4,
  /** No CMOS RTC at ports 0x70/0x71. */
  CMOS_RTC_NOT_PRESENT: 1 << 5,
} as const;

/** "Not supported" C2/C3 latencies (> 100 and > 1000 µs), as QEMU writes them. */
const LATENCY_NOT_SUPPORTED = 0x0fff;
/** The CMOS register holding the century, when there is an RTC. */
export const CMOS_CENTURY_REGISTER = 0x32;

/** What the FADT describes. */
export interface FadtInput {
  /** Physical address of the DSDT. */
  readonly dsdtAddr: number;
  /** An i8042 at 0x60/0x64. */
  readonly i8042: boolean;
  /** A CMOS RTC at 0x70/0x71 with the century in register 0x32. */
  readonly rtc: boolean;
  /** Any ISA-style legacy device (COM1, the i8042, the RTC). */
  readonly legacyDevices: boolean;
}

/** Hypervisor vendor identity (FADT offset 268). */
export const HYPERVISOR_VENDOR_ID = "VMKITKVM";

/** Builds the FADT. */
export function buildFadt(input: FadtInput): Uint8Array {
  const body = new Uint8Array(FADT.size - SDT.size);
  const dv = new DataView(body.buffer);
  const at = (off: number) => off - SDT.size;
  // FIRMWARE_CTRL/X_FIRMWARE_CTRL 0: no FACS on a hardware-reduced platform.
  // DSDT (32-bit) 0: X_DSDT holds the address (§5.2.9: OSPM uses X_DSDT when set).
  dv.setBigUint64(at(FADT.xDsdt), BigInt(input.dsdtAddr), true);
  dv.setUint16(at(FADT.pLvl2Lat), LATENCY_NOT_SUPPORTED, true);
  dv.setUint16(at(FADT.pLvl3Lat), LATENCY_NOT_SUPPORTED, true);
  if (input.rtc) dv.setUint8(at(FADT.century), CMOS_CENTURY_REGISTER);
  const boot = (input.legacyDevices ? IAPC_BOOT_ARCH.LEGACY_DEVICES : 0) |
    (input.i8042 ? IAPC_BOOT_ARCH.I8042 : 0) |
    IAPC_BOOT_ARCH.VGA_NOT_PRESENT | IAPC_BOOT_ARCH.MSI_NOT_SUPPORTED |
    IAPC_BOOT_ARCH.PCIE_ASPM_CONTROLS |
    (input.rtc ? 0 : IAPC_BOOT_ARCH.CMOS_RTC_NOT_PRESENT);
  dv.setUint16(at(FADT.iapcBootArch), boot, true);
  dv.setUint32(
    at(FADT.flags),
    FADT_FLAGS.WBINVD | FADT_FLAGS.PWR_BUTTON | FADT_FLAGS.SLP_BUTTON |
      FADT_FLAGS.HW_REDUCED_ACPI,
    true,
  );
  dv.setUint8(at(FADT.minorVersion), FADT_MINOR_VERSION);
  for (let i = 0; i < HYPERVISOR_VENDOR_ID.length; i++) {
    dv.setUint8(at(FADT.hypervisorVendorId) + i, HYPERVISOR_VENDOR_ID.charCodeAt(i));
  }
  return sdt("FACP", FADT_REVISION, body);
}
