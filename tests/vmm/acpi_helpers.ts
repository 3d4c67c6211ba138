/**
 * Shared pieces of the ACPI table tests: a machine description with every
 * kind of device, and a table lookup.
 *
 * @module
 */

import assert from "node:assert/strict";
import type { AcpiConfig, AcpiLayout, AcpiTable } from "../../vmm/acpi/mod.ts";

/** `vcpus` vCPUs, two virtio-mmio devices (GSIs 5, 6), COM1, the i8042, the RTC, vmgenid on GSI 7. */
export function sampleConfig(vcpus: number): AcpiConfig {
  return {
    vcpus,
    mmioDevices: [
      { name: "blk0", base: 0xd000_0000, size: 0x1000, gsi: 5 },
      { name: "net0", base: 0xd000_1000, size: 0x1000, gsi: 6 },
    ],
    serial: { port: 0x3f8, irq: 4 },
    i8042: true,
    rtc: true,
    vmgenid: { gsi: 7 },
  };
}

/** The table of `layout` with signature `sig` (`"RSD PTR "` for the RSDP); fails if absent. */
export function tableOf(layout: AcpiLayout, sig: string): AcpiTable {
  const t = layout.tables.find((x) => x.signature === sig);
  assert.ok(t, `no ${sig} table`);
  return t;
}
