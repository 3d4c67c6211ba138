/**
 * Puts a machine's ACPI tables into guest memory, and writes the VM
 * generation id (at create time, and again by the checkpoint restore, which
 * then pulses the id's GSI so the guest reads it).
 *
 * @module
 */

import { configInt, type DeviceSpec } from "../devices/spec.ts";
import { I8042_KIND } from "../devices/i8042.ts";
import { RTC_KIND } from "../devices/rtc.ts";
import { SERIAL_KIND } from "../devices/serial.ts";
import type { GuestMemory } from "../guest_memory.ts";
import type { AcpiConfig, AcpiLayout, VmGenIdLocation } from "./build.ts";
import { VMGENID_SIZE } from "./build.ts";
import type { MmioDeviceInfo } from "./dsdt.ts";
import { AcpiError } from "./errors.ts";

/** A fresh random 16-byte generation id. */
export function newVmGenId(): Uint8Array {
  return crypto.getRandomValues(new Uint8Array(VMGENID_SIZE));
}

/**
 * Writes generation id `id` (16 bytes) where `location` says, without
 * telling the guest ({@link changeVmGenId} also notifies it).
 */
export function writeVmGenId(memory: GuestMemory, location: VmGenIdLocation, id: Uint8Array): void {
  if (id.length !== VMGENID_SIZE) {
    throw new AcpiError(`a VM generation id is ${VMGENID_SIZE} bytes, got ${id.length}`);
  }
  memory.write(location.addr, id);
}

/**
 * Gives the guest a new generation id: writes `id` ({@link writeVmGenId}),
 * then, when the machine wired a notification GSI, raises and lowers it
 * through `irqLine` (e.g. `(gsi, level) => machine.vm.irqLine(gsi, level)`),
 * so the Generic Event Device runs `Notify(\_SB_.VGEN, 0x80)` and the guest's
 * driver reads the id again. Call it after a restore, before the vCPUs run.
 *
 * @example
 * ```ts ignore
 * // ignore: needs a running machine (a kernel and /dev/kvm).
 * import { changeVmGenId, newVmGenId } from "@vmkit/vmkit/vmm";
 * const loc = machine.acpi?.vmgenid;
 * if (loc !== undefined) {
 *   changeVmGenId(machine.memory, loc, newVmGenId(), (g, l) => machine.vm.irqLine(g, l));
 * }
 * ```
 */
export function changeVmGenId(
  memory: GuestMemory,
  location: VmGenIdLocation,
  id: Uint8Array,
  irqLine: (gsi: number, level: boolean) => void,
): void {
  writeVmGenId(memory, location, id);
  if (location.gsi === undefined) return;
  irqLine(location.gsi, true);
  irqLine(location.gsi, false);
}

/** Reads the generation id the guest currently sees. */
export function readVmGenId(memory: GuestMemory, location: VmGenIdLocation): Uint8Array {
  return memory.read(location.addr, VMGENID_SIZE);
}

/**
 * Writes every table of `layout` into guest memory, zeroes the rest of the
 * area, and, when the layout has a generation id page, writes `id` there.
 */
export function writeAcpi(
  memory: GuestMemory,
  layout: AcpiLayout,
  id: Uint8Array = newVmGenId(),
): void {
  const { start, end } = layout.area;
  memory.view(start, end - start).fill(0);
  for (const t of layout.tables) memory.write(t.addr, t.bytes);
  if (layout.vmgenid !== undefined) writeVmGenId(memory, layout.vmgenid, id);
}

/**
 * The {@link AcpiConfig} of a machine with `vcpus` vCPUs, the legacy devices
 * among `specs` (the first 16550 as COM1, the i8042, the RTC), `mmioDevices`
 * and a generation id device (notified on `vmgenidGsi`, if given).
 */
export function acpiConfigFromSpecs(
  vcpus: number,
  specs: readonly DeviceSpec[],
  mmioDevices: readonly MmioDeviceInfo[],
  vmgenidGsi?: number,
): AcpiConfig {
  const serial = specs.find((s) => s.kind === SERIAL_KIND);
  return {
    vcpus,
    mmioDevices,
    serial: serial === undefined ? undefined : {
      port: configInt(serial, "base", 0x3f8, 0, 0xfff8),
      irq: configInt(serial, "irq", 4, 0, 15),
    },
    i8042: specs.some((s) => s.kind === I8042_KIND),
    rtc: specs.some((s) => s.kind === RTC_KIND),
    vmgenid: { gsi: vmgenidGsi },
  };
}
