/**
 * The ACPI tables' byte layout (offsets from the ACPI 6.5 table definitions),
 * checksums, placement in reserved memory, the generation id page and the
 * acpidump-style dump.
 */
import assert from "node:assert/strict";
import {
  ACPI_AREA_END,
  type AcpiConfig,
  acpiConfigFromSpecs,
  AcpiError,
  type AcpiTable,
  buildAcpi,
  dumpTable,
  readVmGenId,
  RSDP_ADDR,
  VMGENID_ADDR,
  writeAcpi,
  writeVmGenId,
} from "../../vmm/acpi/mod.ts";
import { E820_RESERVED, e820FromRegions } from "../../vmm/boot/e820.ts";
import { defaultDeviceSpecs } from "../../vmm/devices/mod.ts";
import { sampleConfig, tableOf } from "./acpi_helpers.ts";
import { FakeMemory } from "./boot_fake_memory.ts";

const MiB = 0x10_0000;

const CONFIG: AcpiConfig = sampleConfig(3);
const table = tableOf;

const dv = (t: AcpiTable): DataView =>
  new DataView(t.bytes.buffer, t.bytes.byteOffset, t.bytes.byteLength);
const sum = (b: Uint8Array): number => b.reduce((s, x) => (s + x) & 0xff, 0);
const text = (b: Uint8Array, off: number, len: number): string =>
  new TextDecoder().decode(b.subarray(off, off + len));

Deno.test("every table sums to zero, and its header carries its signature, length and vmkit's OEM id", () => {
  const acpi = buildAcpi(CONFIG);
  assert.deepEqual(acpi.tables.map((t) => t.signature), [
    "RSD PTR ",
    "XSDT",
    "FACP",
    "APIC",
    "DSDT",
  ]);
  for (const t of acpi.tables.slice(1)) {
    assert.equal(sum(t.bytes), 0, `${t.signature} checksum`);
    assert.equal(text(t.bytes, 0, 4), t.signature);
    assert.equal(dv(t).getUint32(4, true), t.bytes.length, `${t.signature} length`);
    assert.equal(text(t.bytes, 10, 6), "VMKIT ");
    assert.equal(text(t.bytes, 16, 8), `VMKT${t.signature}`);
    assert.equal(t.addr % 16, 0, `${t.signature} alignment`);
  }
});

Deno.test("the RSDP is revision 2 in the BIOS scan area, both checksums right, pointing at the XSDT", () => {
  const acpi = buildAcpi(CONFIG);
  const rsdp = table(acpi, "RSD PTR ");
  assert.equal(acpi.rsdpAddr, rsdp.addr);
  assert.ok(rsdp.addr >= 0xe_0000 && rsdp.addr + 36 <= 0x10_0000 && rsdp.addr % 16 === 0);
  const b = rsdp.bytes;
  assert.equal(b.length, 36);
  assert.equal(text(b, 0, 8), "RSD PTR ");
  assert.equal(sum(b.subarray(0, 20)), 0, "ACPI 1.0 checksum over 20 bytes");
  assert.equal(sum(b), 0, "extended checksum over 36 bytes");
  assert.equal(text(b, 9, 6), "VMKIT ");
  assert.equal(b[15], 2, "revision");
  assert.equal(dv(rsdp).getUint32(16, true), 0, "no RSDT");
  assert.equal(dv(rsdp).getUint32(20, true), 36, "length");
  assert.equal(Number(dv(rsdp).getBigUint64(24, true)), table(acpi, "XSDT").addr);
});

Deno.test("the XSDT lists the FADT and the MADT by 64-bit address", () => {
  const acpi = buildAcpi(CONFIG);
  const x = table(acpi, "XSDT");
  assert.equal(x.bytes.length, 36 + 16);
  assert.equal(x.bytes[8], 1, "revision");
  assert.equal(Number(dv(x).getBigUint64(36, true)), table(acpi, "FACP").addr);
  assert.equal(Number(dv(x).getBigUint64(44, true)), table(acpi, "APIC").addr);
});

Deno.test("the FADT is a hardware-reduced ACPI 6.3 FADT with X_DSDT and the IA-PC boot flags", () => {
  const acpi = buildAcpi(CONFIG);
  const f = table(acpi, "FACP");
  const d = dv(f);
  assert.equal(f.bytes.length, 276);
  assert.equal(f.bytes[8], 6, "major version");
  assert.equal(f.bytes[131], 3, "minor version");
  assert.equal(d.getUint32(36, true), 0, "no FACS");
  assert.equal(d.getUint32(40, true), 0, "32-bit DSDT unused");
  assert.equal(d.getBigUint64(132, true), 0n, "no X_FIRMWARE_CTRL");
  assert.equal(Number(d.getBigUint64(140, true)), table(acpi, "DSDT").addr, "X_DSDT");
  assert.equal(d.getUint16(46, true), 0, "no SCI");
  assert.equal(d.getUint32(48, true), 0, "no SMI command port: ACPI is always on");
  for (const off of [56, 60, 64, 68, 72, 76, 80, 84]) assert.equal(d.getUint32(off, true), 0);
  const flags = d.getUint32(112, true);
  assert.equal(flags, 1 << 20 | 1 << 5 | 1 << 4 | 1 << 0, "HW_REDUCED, SLP/PWR_BUTTON, WBINVD");
  // LEGACY_DEVICES | 8042 | VGA not present | MSI not supported | no ASPM; an RTC is present.
  assert.equal(d.getUint16(109, true), 0x1f);
  assert.equal(f.bytes[108], 0x32, "century register");
  assert.equal(text(f.bytes, 268, 8), "VMKITKVM");

  const bare = table(buildAcpi({ vcpus: 1, mmioDevices: [] }), "FACP");
  assert.equal(dv(bare).getUint16(109, true), 0x3c, "no legacy devices, no 8042, no RTC");
  assert.equal(bare.bytes[108], 0, "no century without an RTC");
});

Deno.test("the MADT has one enabled local APIC per vCPU, the IOAPIC, IRQ0→GSI2 and the LINT1 NMI", () => {
  const acpi = buildAcpi({ ...CONFIG, vcpus: 4 });
  const m = table(acpi, "APIC");
  const d = dv(m);
  assert.equal(m.bytes[8], 5, "revision");
  assert.equal(d.getUint32(36, true), 0xfee0_0000, "local APIC address");
  assert.equal(d.getUint32(40, true), 1, "PCAT_COMPAT");
  const entries: Array<{ type: number; at: number; len: number }> = [];
  for (let at = 44; at < m.bytes.length;) {
    const type = m.bytes[at] ?? -1;
    const len = m.bytes[at + 1] ?? 0;
    assert.ok(len > 0);
    entries.push({ type, at, len });
    at += len;
  }
  const lapics = entries.filter((e) => e.type === 0);
  assert.deepEqual(
    lapics.map((e) => [e.len, m.bytes[e.at + 2], m.bytes[e.at + 3], d.getUint32(e.at + 4, true)]),
    [[8, 0, 0, 1], [8, 1, 1, 1], [8, 2, 2, 1], [8, 3, 3, 1]],
    "length, processor UID, APIC id, enabled",
  );
  const ioapics = entries.filter((e) => e.type === 1);
  assert.equal(ioapics.length, 1);
  const io = ioapics[0];
  assert.ok(io);
  assert.equal(io.len, 12);
  assert.equal(m.bytes[io.at + 2], 0, "IOAPIC id");
  assert.equal(d.getUint32(io.at + 4, true), 0xfec0_0000);
  assert.equal(d.getUint32(io.at + 8, true), 0, "GSI base");
  const isos = entries.filter((e) => e.type === 2);
  assert.deepEqual(
    isos.map((e) => [e.len, m.bytes[e.at + 2], m.bytes[e.at + 3], d.getUint32(e.at + 4, true)]),
    [[10, 0, 0, 2]],
    "ISA bus, IRQ 0, GSI 2",
  );
  const nmis = entries.filter((e) => e.type === 4);
  assert.deepEqual(nmis.map((e) => [e.len, m.bytes[e.at + 2], m.bytes[e.at + 5]]), [[6, 0xff, 1]]);
  assert.throws(() => buildAcpi({ vcpus: 0, mmioDevices: [] }), AcpiError);
  assert.throws(() => buildAcpi({ vcpus: 256, mmioDevices: [] }), AcpiError);
});

Deno.test("the DSDT names every virtio-mmio device as LNRO0005 and the vmgenid device", () => {
  const acpi = buildAcpi(CONFIG);
  const body = new TextDecoder("latin1").decode(table(acpi, "DSDT").bytes);
  assert.equal(body.split("LNRO0005").length - 1, 2);
  assert.equal(body.split("ACPI0007").length - 1, 3, "one processor device per vCPU");
  for (const s of ["QEMUVGID", "VM_Gen_Counter", "ACPI0013", "COM1", "PS2K", "RTC_"]) {
    assert.ok(body.includes(s), s);
  }
  const none = new TextDecoder("latin1").decode(
    table(buildAcpi({ vcpus: 1, mmioDevices: [] }), "DSDT").bytes,
  );
  for (const s of ["LNRO0005", "QEMUVGID", "ACPI0013", "COM1", "PS2K", "RTC_"]) {
    assert.ok(!none.includes(s), s);
  }
  const noGed = new TextDecoder("latin1").decode(
    table(buildAcpi({ ...CONFIG, vmgenid: {} }), "DSDT").bytes,
  );
  assert.ok(noGed.includes("QEMUVGID") && !noGed.includes("ACPI0013"), "GED only with a GSI");
});

Deno.test("the tables and the generation id page lie in memory the e820 map reserves", () => {
  const acpi = buildAcpi({ ...CONFIG, vcpus: 64 });
  const e820 = e820FromRegions(new FakeMemory(64 * MiB).regions);
  const reserved = (a: number, b: number) =>
    e820.some((e) => e.type === E820_RESERVED && e.addr <= a && b <= e.addr + e.size);
  for (const t of acpi.tables) assert.ok(reserved(t.addr, t.addr + t.bytes.length), t.signature);
  assert.ok(reserved(acpi.area.start, acpi.area.end));
  assert.equal(acpi.area.end, ACPI_AREA_END);
  assert.ok(acpi.vmgenid);
  assert.equal(acpi.vmgenid.addr, VMGENID_ADDR);
  assert.equal(acpi.vmgenid.addr % 8, 0);
  assert.equal(acpi.vmgenid.gsi, 7);
  const sorted = [...acpi.tables].sort((a, b) => a.addr - b.addr);
  for (let i = 1; i < sorted.length; i++) {
    const p = sorted[i - 1];
    const t = sorted[i];
    assert.ok(p && t && p.addr + p.bytes.length <= t.addr, "no overlap");
  }
  const last = sorted.at(-1);
  assert.ok(last && last.addr + last.bytes.length <= VMGENID_ADDR);
});

Deno.test("a device list too large for the ACPI area is refused with the sizes in the message", () => {
  const many = Array.from({ length: 2500 }, (_, i) => ({
    name: `d${i}`,
    base: 0xd000_0000 + i * 0x1000,
    size: 0x1000,
    gsi: 5,
  }));
  assert.throws(() => buildAcpi({ vcpus: 1, mmioDevices: many }), /ACPI tables need \d+ bytes/);
  assert.doesNotThrow(() => buildAcpi({ vcpus: 64, mmioDevices: many.slice(0, 256) }));
  assert.throws(
    () => buildAcpi({ vcpus: 1, mmioDevices: [{ name: "x", base: 0xd000_0000, size: 0, gsi: 5 }] }),
    /window size 0/,
  );
});

Deno.test("writeAcpi puts each table at its address and writeVmGenId replaces the 16-byte id", () => {
  const mem = new FakeMemory(16 * MiB);
  mem.view(RSDP_ADDR, ACPI_AREA_END - RSDP_ADDR).fill(0xaa); // stale bytes are cleared
  const acpi = buildAcpi(CONFIG);
  const id = Uint8Array.from({ length: 16 }, (_, i) => i + 1);
  writeAcpi(mem, acpi, id);
  for (const t of acpi.tables) assert.deepEqual(mem.read(t.addr, t.bytes.length), t.bytes);
  assert.ok(acpi.vmgenid);
  assert.deepEqual(readVmGenId(mem, acpi.vmgenid), id);
  assert.equal(mem.read(VMGENID_ADDR + 16, 1)[0], 0, "rest of the page zeroed");
  const next = crypto.getRandomValues(new Uint8Array(16));
  writeVmGenId(mem, acpi.vmgenid, next);
  assert.deepEqual(readVmGenId(mem, acpi.vmgenid), next);
  assert.throws(
    () => writeVmGenId(mem, acpi.vmgenid ?? { addr: 0, gsi: undefined }, new Uint8Array(8)),
    AcpiError,
  );
  const fresh = new FakeMemory(16 * MiB);
  writeAcpi(fresh, acpi);
  assert.notDeepEqual(readVmGenId(fresh, acpi.vmgenid), new Uint8Array(16), "random by default");
});

Deno.test("the machine's legacy devices become COM1, the i8042 and the RTC of the ACPI config", () => {
  const c = acpiConfigFromSpecs(2, defaultDeviceSpecs({ serialOut: "none" }), [], 9);
  assert.deepEqual(c.serial, { port: 0x3f8, irq: 4 });
  assert.equal(c.i8042, true);
  assert.equal(c.rtc, true);
  assert.deepEqual(c.vmgenid, { gsi: 9 });
  const bare = acpiConfigFromSpecs(1, [], []);
  assert.equal(bare.serial, undefined);
  assert.equal(bare.i8042, false);
});

Deno.test("the dump names each table and its address and shows 16 bytes a line in hex and ASCII", () => {
  const t = table(buildAcpi(CONFIG), "XSDT");
  const lines = dumpTable(t).split("\n");
  assert.equal(lines[0], `XSDT @ 0x${t.addr.toString(16).toUpperCase().padStart(16, "0")}`);
  assert.match(
    lines[1] ?? "",
    /^ {4}0000: 58 53 44 54 34 00 00 00 01 [0-9A-F]{2} 56 4D 4B 49 54 20 {2}XSDT4\.\.\.\..VMKIT $/,
  );
  assert.equal(lines.length, 1 + Math.ceil(t.bytes.length / 16) + 2);
  assert.equal(dumpTable({ ...t, signature: "RSD PTR " }).slice(0, 4), "RSDP");
});
