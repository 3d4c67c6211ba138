/**
 * The Differentiated System Description Table (ACPI 6.5 §5.2.11.1): the
 * devices an OS cannot probe, under `\_SB_`: a processor device per vCPU,
 * COM1, the i8042 and the CMOS RTC, every virtio-mmio device as `LNRO0005`,
 * and the VM generation id device with the Generic Event Device that
 * announces a new id.
 *
 * @module
 */

import {
  type Aml,
  arg,
  device,
  eisaId,
  ifOp,
  integer,
  lEqual,
  method,
  name,
  notify,
  packageOp,
  returnOp,
  scope,
  string,
} from "./aml.ts";
import { AcpiError } from "./errors.ts";
import {
  EDGE_HIGH_EXCLUSIVE,
  interrupt,
  ioPort,
  irqNoFlags,
  memory32Fixed,
  resourceTemplate,
} from "./resources.ts";
import { sdt } from "./sdt.ts";

/** DSDT revision 2: integers are 64 bits (§5.2.11.1). */
export const DSDT_REVISION = 2;
/** `_HID` of a virtio-mmio device, as Linux's `virtio_mmio` driver matches it over ACPI. */
export const VIRTIO_MMIO_HID = "LNRO0005";
/** `_HID` of the VM generation id device, as QEMU names it. */
export const VMGENID_HID = "QEMUVGID";
/** `_CID` (and `_DDN`) of the VM generation id device, as Microsoft's spec names it. */
export const VMGENID_CID = "VM_Gen_Counter";
/** `_HID` of the Generic Event Device (§5.6.9). */
export const GED_HID = "ACPI0013";
/** Notify value that tells the vmgenid driver to read the id again. */
export const VMGENID_NOTIFY = 0x80;
/** Most virtio-mmio devices the DSDT names (`V000`..`VFFF`). */
export const MAX_MMIO_DEVICES = 0x1000;

/** A virtio-mmio device: its register window and its interrupt. */
export interface MmioDeviceInfo {
  /** The machine's name for it (e.g. `"blk0"`); not visible to the guest. */
  readonly name: string;
  /** Guest-physical base of its register window. */
  readonly base: number;
  /** Window size in bytes. */
  readonly size: number;
  /** The GSI (IOAPIC pin) it interrupts on, edge-triggered. */
  readonly gsi: number;
}

/** A 16550 UART at `port` (8 ports) on ISA IRQ `irq`. */
export interface SerialPortInfo {
  /** Base I/O port (0x3f8 for COM1). */
  readonly port: number;
  /** ISA IRQ (4 for COM1). */
  readonly irq: number;
}

/** What the DSDT describes. */
export interface DsdtInput {
  /** vCPU count: one `ACPI0007` processor device each, `_UID` = MADT processor UID. */
  readonly vcpus: number;
  /** COM1, if the machine has it. */
  readonly serial: SerialPortInfo | undefined;
  /** An i8042 keyboard controller at 0x60/0x64, IRQ 1. */
  readonly i8042: boolean;
  /** A CMOS RTC at 0x70/0x71, IRQ 8. */
  readonly rtc: boolean;
  /** Virtio-mmio devices. */
  readonly mmioDevices: readonly MmioDeviceInfo[];
  /** The generation id page and, when the machine can notify, its GSI. */
  readonly vmgenid: { readonly addr: number; readonly gsi: number | undefined } | undefined;
}

const hex = (n: number, width: number): string => n.toString(16).toUpperCase().padStart(width, "0");

function processors(count: number): Aml[] {
  const out: Aml[] = [];
  for (let i = 0; i < count; i++) {
    out.push(device(`C${hex(i, 3)}`, name("_HID", string("ACPI0007")), name("_UID", integer(i))));
  }
  return out;
}

function serialDevice(s: SerialPortInfo): Aml {
  return device(
    "COM1",
    name("_HID", eisaId("PNP0501")),
    name("_UID", integer(1)),
    name("_CRS", resourceTemplate(ioPort(s.port, 8), irqNoFlags(s.irq))),
  );
}

function i8042Device(): Aml {
  return device(
    "PS2K",
    name("_HID", eisaId("PNP0303")),
    name("_CRS", resourceTemplate(ioPort(0x60, 1), ioPort(0x64, 1), irqNoFlags(1))),
  );
}

function rtcDevice(): Aml {
  return device(
    "RTC_",
    name("_HID", eisaId("PNP0B00")),
    name("_CRS", resourceTemplate(ioPort(0x70, 2), irqNoFlags(8))),
  );
}

function mmioDevice(index: number, d: MmioDeviceInfo): Aml {
  if (!Number.isSafeInteger(d.size) || d.size <= 0) {
    throw new AcpiError(`virtio-mmio device '${d.name}' has window size ${d.size}`);
  }
  return device(
    `V${hex(index, 3)}`,
    name("_HID", string(VIRTIO_MMIO_HID)),
    name("_UID", integer(index)),
    name(
      "_CRS",
      resourceTemplate(memory32Fixed(d.base, d.size), interrupt(EDGE_HIGH_EXCLUSIVE, d.gsi)),
    ),
  );
}

/**
 * The generation id device as QEMU and Microsoft's "Virtual Machine
 * Generation ID" paper define it: `ADDR` returns the id's physical address
 * as a package of two 32-bit integers, low half first.
 */
function vmgenidDevice(addr: number): Aml {
  return device(
    "VGEN",
    name("_HID", string(VMGENID_HID)),
    name("_CID", string(VMGENID_CID)),
    name("_DDN", string(VMGENID_CID)),
    method(
      "ADDR",
      0,
      false,
      returnOp(packageOp(integer(addr % 0x1_0000_0000), integer(Math.floor(addr / 0x1_0000_0000)))),
    ),
  );
}

/** The Generic Event Device whose interrupt on `gsi` runs `Notify(VGEN, 0x80)`. */
function gedDevice(gsi: number): Aml {
  return device(
    "GED_",
    name("_HID", string(GED_HID)),
    name("_UID", integer(0)),
    name("_CRS", resourceTemplate(interrupt(EDGE_HIGH_EXCLUSIVE, gsi))),
    method(
      "_EVT",
      1,
      true,
      ifOp(lEqual(arg(0), integer(gsi)), notify("\\_SB_.VGEN", integer(VMGENID_NOTIFY))),
    ),
  );
}

/** Builds the DSDT. */
export function buildDsdt(input: DsdtInput): Uint8Array {
  if (input.mmioDevices.length > MAX_MMIO_DEVICES) {
    throw new AcpiError(
      `${input.mmioDevices.length} virtio-mmio devices; the DSDT names at most ${MAX_MMIO_DEVICES}`,
    );
  }
  const terms: Aml[] = [...processors(input.vcpus)];
  if (input.serial !== undefined) terms.push(serialDevice(input.serial));
  if (input.i8042) terms.push(i8042Device());
  if (input.rtc) terms.push(rtcDevice());
  input.mmioDevices.forEach((d, i) => terms.push(mmioDevice(i, d)));
  if (input.vmgenid !== undefined) {
    terms.push(vmgenidDevice(input.vmgenid.addr));
    if (input.vmgenid.gsi !== undefined) terms.push(gedDevice(input.vmgenid.gsi));
  }
  return sdt("DSDT", DSDT_REVISION, scope("\\_SB_", ...terms));
}
