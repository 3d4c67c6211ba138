/**
 * Builds a machine's ACPI tables and decides where each goes: the RSDP at
 * the start of the BIOS read-only area (so the Linux boot protocol's scan of
 * 0xE0000-0xFFFFF finds it), the XSDT, FADT, MADT and DSDT after it, and the
 * VM generation id in the area's last page. The whole area lies in
 * `[0x9fc00, 0x100000)`, which vmkit's memory map (`vmm/boot/e820.ts`)
 * always marks reserved, so the OS never takes it for RAM.
 *
 * @module
 */

import { buildDsdt, type MmioDeviceInfo, type SerialPortInfo } from "./dsdt.ts";
import { AcpiError } from "./errors.ts";
import { buildFadt, FADT } from "./fadt.ts";
import { buildMadt } from "./madt.ts";
import { buildRsdp, buildXsdt, RSDP, RSDP_SIGNATURE } from "./rsdp.ts";
import { SDT } from "./sdt.ts";

/** Start of the ACPI area: the RSDP (16-byte aligned, inside the BIOS scan range). */
export const RSDP_ADDR = 0xe_0000;
/** The VM generation id page (the id is its first 16 bytes). */
export const VMGENID_ADDR = 0xf_f000;
/** Bytes of the generation id. */
export const VMGENID_SIZE = 16;
/** End of the ACPI area (1 MiB). */
export const ACPI_AREA_END = 0x10_0000;
/** Alignment of each table. */
const TABLE_ALIGN = 16;

/** The machine as the ACPI tables describe it. */
export interface AcpiConfig {
  /** vCPU count (APIC ids 0..vcpus-1). */
  readonly vcpus: number;
  /** Virtio-mmio devices, from the machine's MMIO/GSI allocator. */
  readonly mmioDevices: readonly MmioDeviceInfo[];
  /** COM1, if present. */
  readonly serial?: SerialPortInfo | undefined;
  /** An i8042 at 0x60/0x64 (default false). */
  readonly i8042?: boolean;
  /** A CMOS RTC at 0x70/0x71 (default false). */
  readonly rtc?: boolean;
  /**
   * A VM generation id device; `gsi`, when given, is the interrupt on which
   * the machine announces a new id (a Generic Event Device is added for it).
   */
  readonly vmgenid?: { readonly gsi?: number | undefined } | undefined;
}

/** One table and where it goes. */
export interface AcpiTable {
  /** Its signature (`"RSD PTR "` for the RSDP, else 4 characters). */
  readonly signature: string;
  /** Guest-physical address. */
  readonly addr: number;
  /** Its bytes, checksums included. */
  readonly bytes: Uint8Array;
}

/** Where the VM generation id lives and how a change is announced. */
export interface VmGenIdLocation {
  /** Guest-physical address of the 16-byte id (8-byte aligned, in a reserved page). */
  readonly addr: number;
  /** GSI whose edge makes the guest read the id again, if the machine wired one. */
  readonly gsi: number | undefined;
}

/** What {@link buildAcpi} returns: every table with its address. */
export interface AcpiLayout {
  /** Address of the RSDP, for `hvm_start_info.rsdp_paddr` and `boot_params.acpi_rsdp_addr`. */
  readonly rsdpAddr: number;
  /** RSDP, XSDT, FACP, APIC and DSDT, in address order. */
  readonly tables: readonly AcpiTable[];
  /** The generation id, when configured. */
  readonly vmgenid: VmGenIdLocation | undefined;
  /** The guest-physical range the tables and the id page occupy (reserved in the memory map). */
  readonly area: { readonly start: number; readonly end: number };
}

const align = (n: number): number => Math.ceil(n / TABLE_ALIGN) * TABLE_ALIGN;

/**
 * Builds the tables for `config`. Throws {@link AcpiError} when the machine
 * cannot be described (too many vCPUs, a bad device window) or the tables
 * outgrow the area below the generation id page.
 *
 * @example
 * ```ts
 * import { buildAcpi } from "./build.ts";
 * const acpi = buildAcpi({
 *   vcpus: 2,
 *   mmioDevices: [{ name: "blk0", base: 0xd000_0000, size: 0x1000, gsi: 5 }],
 *   serial: { port: 0x3f8, irq: 4 },
 * });
 * console.log(acpi.rsdpAddr.toString(16), acpi.tables.map((t) => t.signature));
 * ```
 */
export function buildAcpi(config: AcpiConfig): AcpiLayout {
  const vmgenid = config.vmgenid === undefined
    ? undefined
    : { addr: VMGENID_ADDR, gsi: config.vmgenid.gsi };
  const dsdt = buildDsdt({
    vcpus: config.vcpus,
    serial: config.serial,
    i8042: config.i8042 ?? false,
    rtc: config.rtc ?? false,
    mmioDevices: config.mmioDevices,
    vmgenid,
  });
  const madt = buildMadt(config.vcpus);
  // Fixed-size tables first, so only the DSDT's address depends on the device list.
  const xsdtAddr = align(RSDP_ADDR + RSDP.size);
  const fadtAddr = align(xsdtAddr + SDT.size + 2 * 8);
  const madtAddr = align(fadtAddr + FADT.size);
  const dsdtAddr = align(madtAddr + madt.length);
  const fadt = buildFadt({
    dsdtAddr,
    i8042: config.i8042 ?? false,
    rtc: config.rtc ?? false,
    legacyDevices: config.serial !== undefined || (config.i8042 ?? false) || (config.rtc ?? false),
  });
  const xsdt = buildXsdt([fadtAddr, madtAddr]);
  const rsdp = buildRsdp(xsdtAddr);
  const tables: AcpiTable[] = [
    { signature: RSDP_SIGNATURE, addr: RSDP_ADDR, bytes: rsdp },
    { signature: "XSDT", addr: xsdtAddr, bytes: xsdt },
    { signature: "FACP", addr: fadtAddr, bytes: fadt },
    { signature: "APIC", addr: madtAddr, bytes: madt },
    { signature: "DSDT", addr: dsdtAddr, bytes: dsdt },
  ];
  for (let i = 1; i < tables.length; i++) {
    const prev = tables[i - 1];
    const t = tables[i];
    if (prev === undefined || t === undefined || prev.addr + prev.bytes.length > t.addr) {
      throw new AcpiError(`table layout overlaps at ${t?.signature}`); // a bug, not an input
    }
  }
  const tablesEnd = dsdtAddr + dsdt.length;
  if (tablesEnd > VMGENID_ADDR) {
    throw new AcpiError(
      `the ACPI tables need ${tablesEnd - RSDP_ADDR} bytes but [0x${RSDP_ADDR.toString(16)}, ` +
        `0x${VMGENID_ADDR.toString(16)}) holds ${VMGENID_ADDR - RSDP_ADDR}; ` +
        `use fewer vCPUs or devices (the DSDT alone is ${dsdt.length} bytes)`,
    );
  }
  return {
    rsdpAddr: RSDP_ADDR,
    tables,
    vmgenid,
    area: { start: RSDP_ADDR, end: vmgenid === undefined ? tablesEnd : ACPI_AREA_END },
  };
}
