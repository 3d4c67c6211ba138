/**
 * vmkit's ACPI tables checked by ACPICA, the reference implementation
 * (Debian's `acpica-tools`, installed by tests/setup.ts): `iasl -d`
 * disassembles them without errors, `iasl` compiles the disassembly back to
 * the same bytes, `acpixtract` reads the dump back, `acpidump -f` prints the
 * same dump, and `acpiexec` runs the DSDT's methods.
 */
import assert from "node:assert/strict";
import {
  type AcpiConfig,
  type AcpiLayout,
  type AcpiTable,
  buildAcpi,
  dumpTable,
  dumpTables,
} from "../../vmm/acpi/mod.ts";
import { checksumByte } from "../../vmm/acpi/sdt.ts";
import { sampleConfig, tableOf } from "./acpi_helpers.ts";

const CONFIG: AcpiConfig = sampleConfig(2);

interface Run {
  code: number;
  out: string;
}

async function run(cmd: string, args: string[], cwd: string): Promise<Run> {
  const o = await new Deno.Command(cmd, { args, cwd, stdout: "piped", stderr: "piped" }).output();
  const dec = new TextDecoder();
  return { code: o.code, out: dec.decode(o.stdout) + dec.decode(o.stderr) };
}

const fileName = (t: AcpiTable): string =>
  t.signature === "RSD PTR " ? "rsdp" : t.signature.toLowerCase();

/** Writes every table of `acpi` to `dir` as `<sig>.dat`. */
async function writeTables(dir: string, acpi: AcpiLayout): Promise<void> {
  for (const t of acpi.tables) await Deno.writeFile(`${dir}/${fileName(t)}.dat`, t.bytes);
}

async function withTables(fn: (dir: string, acpi: AcpiLayout) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "vmkit-acpi-" });
  try {
    const acpi = buildAcpi(CONFIG);
    await writeTables(dir, acpi);
    await fn(dir, acpi);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

const sdt = tableOf;

/** Squeezes runs of blanks so multi-line ASL resources match on one line. */
const squeeze = (s: string): string => s.replace(/\s+/g, " ");

Deno.test("iasl -d disassembles the XSDT, FADT, MADT and DSDT without errors or checksum complaints", async () => {
  await withTables(async (dir) => {
    for (const sig of ["xsdt", "facp", "apic", "dsdt"]) {
      const r = await run("iasl", ["-d", `${sig}.dat`], dir);
      assert.equal(r.code, 0, `iasl -d ${sig}.dat:\n${r.out}`);
      assert.doesNotMatch(r.out, /error|warning/i, `${sig}: ${r.out}`);
      const dsl = await Deno.readTextFile(`${dir}/${sig}.dsl`);
      assert.doesNotMatch(dsl, /Incorrect checksum|\*\*\*\*/i, `${sig}.dsl flags a problem`);
    }
  });
});

Deno.test("the MADT and FADT disassembly shows 2 local APICs, the IOAPIC, IRQ0→GSI2 and hardware-reduced", async () => {
  await withTables(async (dir, acpi) => {
    await run("iasl", ["-d", "apic.dat", "facp.dat"], dir);
    const madt = squeeze(await Deno.readTextFile(`${dir}/apic.dsl`));
    assert.equal(madt.split("Subtable Type : 00 [Processor Local APIC]").length - 1, 2);
    assert.match(madt, /Processor ID : 01 \[037h 0055 1\] Local Apic ID : 01/);
    assert.match(
      madt,
      /\[I\/O APIC\] .*? I\/O Apic ID : 00 .*? Address : FEC00000 .*? Interrupt : 00000000/,
    );
    assert.match(
      madt,
      /\[Interrupt Source Override\] .*? Bus : 00 .*? Source : 00 .*? Interrupt : 00000002/,
    );
    assert.match(madt, /\[Local APIC NMI\] .*? Processor ID : FF .*? Interrupt Input LINT : 01/);
    assert.match(madt, /PC-AT Compatibility : 1/);
    const fadt = squeeze(await Deno.readTextFile(`${dir}/facp.dsl`));
    assert.match(fadt, /Hardware Reduced \(V5\) : 1/);
    assert.match(fadt, /8042 Present on ports 60\/64 \(V2\) : 1/);
    assert.match(fadt, /FADT Minor Revision : 03/);
    const dsdt = sdt(acpi, "DSDT").addr.toString(16).toUpperCase().padStart(16, "0");
    assert.match(fadt, new RegExp(`\\[08Ch 0140 8\\] DSDT Address : ${dsdt}`));
  });
});

Deno.test("the DSDT disassembly shows COM1, the i8042, the RTC, each LNRO0005 device and vmgenid", async () => {
  await withTables(async (dir) => {
    await run("iasl", ["-d", "dsdt.dat"], dir);
    const dsl = squeeze(await Deno.readTextFile(`${dir}/dsdt.dsl`));
    const expect = [
      /Device \(COM1\) \{ Name \(_HID, EisaId \("PNP0501"\).*? IO \(Decode16, 0x03F8, \/\/ Range Minimum 0x03F8, \/\/ Range Maximum 0x01, \/\/ Alignment 0x08, \/\/ Length \) IRQNoFlags \(\) \{4\}/,
      /Device \(PS2K\) \{ Name \(_HID, EisaId \("PNP0303"\).*? 0x0060, .*? 0x0064, .*? IRQNoFlags \(\) \{1\}/,
      /Device \(RTC\) \{ Name \(_HID, EisaId \("PNP0B00"\).*? 0x0070, .*? 0x02, \/\/ Length \) IRQNoFlags \(\) \{8\}/,
      /Device \(V000\) \{ Name \(_HID, "LNRO0005"\).*? Memory32Fixed \(ReadWrite, 0xD0000000, \/\/ Address Base 0x00001000, \/\/ Address Length \) Interrupt \(ResourceConsumer, Edge, ActiveHigh, Exclusive, ,, \) \{ 0x00000005, \}/,
      /Device \(V001\) \{ Name \(_HID, "LNRO0005"\).*? 0xD0001000, .*? \{ 0x00000006, \}/,
      /Device \(VGEN\) \{ Name \(_HID, "QEMUVGID"\) .*? Name \(_CID, "VM_Gen_Counter"\) .*? Method \(ADDR, 0, NotSerialized\) \{ Return \(Package \(0x02\) \{ 0x000FF000, Zero \}\)/,
      /Device \(GED\) \{ Name \(_HID, "ACPI0013".*? \{ 0x00000007, \} \}\) Method \(_EVT, 1, Serialized\) .*? If \(\(Arg0 == 0x07\)\) \{ Notify \(\\_SB\.VGEN, 0x80\)/,
      /Device \(C001\) \{ Name \(_HID, "ACPI0007".*? Name \(_UID, One\)/,
    ];
    for (const re of expect) assert.match(dsl, re);
  });
});

Deno.test("iasl compiles the disassembly back to the same bytes (checksums as iasl computes them)", async () => {
  await withTables(async (dir, acpi) => {
    for (const sig of ["xsdt", "facp", "apic"]) {
      await run("iasl", ["-d", `${sig}.dat`], dir);
      const r = await run("iasl", [`${sig}.dsl`], dir);
      assert.equal(r.code, 0, r.out);
      const theirs = await Deno.readFile(`${dir}/${sig}.aml`);
      // iasl writes its own compiler id and version; give ours the same and re-checksum.
      const ours = sdt(acpi, sig.toUpperCase()).bytes.slice();
      ours.set(theirs.subarray(28, 36), 28);
      ours[9] = 0;
      ours[9] = checksumByte(ours);
      assert.deepEqual(ours, theirs, sig);
    }
    // The DSDT: iasl refuses "QEMUVGID" as a _HID (not 4 letters + 4 hex digits), so -f
    // forces output; -oa keeps absolute paths as written. The AML after the header matches.
    await run("iasl", ["-d", "dsdt.dat"], dir);
    const r = await run("iasl", ["-oa", "-f", "dsdt.dsl"], dir);
    assert.match(r.out, /Compilation successful\. 1 Errors/, r.out);
    assert.match(r.out, /_HID suffix must be all hex digits \(VGID\)/);
    const theirs = await Deno.readFile(`${dir}/dsdt.aml`);
    assert.deepEqual(sdt(acpi, "DSDT").bytes.subarray(36), theirs.subarray(36));
  });
});

Deno.test("iasl builds the same RSDP, both checksums included, from the same field values", async () => {
  await withTables(async (dir, acpi) => {
    const xsdt = sdt(acpi, "XSDT").addr.toString(16).toUpperCase().padStart(16, "0");
    await Deno.writeTextFile(
      `${dir}/rsdp.asl`,
      [
        '[0008] Signature : "RSD PTR "',
        "[0001] Checksum : 00",
        '[0006] Oem ID : "VMKIT "',
        "[0001] Revision : 02",
        "[0004] RSDT Address : 00000000",
        "[0004] Length : 00000024",
        `[0008] XSDT Address : ${xsdt}`,
        "[0001] Extended Checksum : 00",
        "[0003] Reserved : 000000",
        "",
      ].join("\n"),
    );
    const r = await run("iasl", ["rsdp.asl"], dir);
    assert.equal(r.code, 0, r.out);
    assert.deepEqual(await Deno.readFile(`${dir}/rsdp.aml`), sdt(acpi, "RSD PTR ").bytes);
  });
});

Deno.test("acpixtract reads the dump back to the same tables and acpidump -f prints the same dump", async () => {
  await withTables(async (dir, acpi) => {
    await Deno.mkdir(`${dir}/x`);
    await Deno.writeTextFile(`${dir}/x/dump.txt`, dumpTables(acpi.tables));
    const r = await run("acpixtract", ["-a", "dump.txt"], `${dir}/x`);
    assert.equal(r.code, 0, r.out);
    for (const t of acpi.tables) {
      assert.deepEqual(await Deno.readFile(`${dir}/x/${fileName(t)}.dat`), t.bytes, t.signature);
    }
    for (const t of acpi.tables.slice(1)) {
      const d = await run("acpidump", ["-f", `${fileName(t)}.dat`], dir);
      assert.equal(d.code, 0, d.out);
      assert.equal(d.out, dumpTable({ ...t, addr: 0 }), t.signature);
    }
  });
});

Deno.test("acpiexec loads the DSDT and runs vmgenid's ADDR, a device's _CRS and the GED's _EVT", async () => {
  await withTables(async (dir) => {
    const cmds = [
      "evaluate \\_SB.VGEN.ADDR",
      "evaluate \\_SB.V001._CRS",
      "evaluate \\_SB.GED_._EVT 7",
      "evaluate \\_SB.GED_._EVT 5",
    ].join("; ");
    const r = await run("acpiexec", ["-b", cmds, "dsdt.dat"], dir);
    assert.equal(r.code, 0, r.out);
    const out = squeeze(r.out);
    assert.match(out, /1 ACPI AML tables successfully acquired and loaded/);
    assert.doesNotMatch(out, /AE_[A-Z_]+ /, "no ACPICA exception");
    assert.match(
      out,
      /\[Package\] Contains 2 Elements: \[Integer\] = 00000000000FF000 \[Integer\] = 0000000000000000/,
    );
    assert.match(
      out,
      /0000: 86 09 00 01 00 10 00 D0 00 10 00 00 89 06 00 03 .*? 0010: 01 06 00 00 00 79 00/,
    );
    assert.equal(
      out.split("Received a Device Notify on [VGEN]").length - 1,
      1,
      "only GSI 7 notifies",
    );
    assert.match(out, /Device Notify on \[VGEN\] \S+ Value 0x80/);
  });
});
