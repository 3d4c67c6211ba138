/**
 * The AML encoder against the encodings ACPI 6.5 §20 and §6.4 give (byte
 * values written out from the spec's grammar, not from the encoder).
 */
import assert from "node:assert/strict";
import {
  arg,
  buffer,
  device,
  eisaId,
  eisaIdValue,
  ifOp,
  integer,
  lEqual,
  method,
  name,
  nameSeg,
  nameString,
  notify,
  packageOp,
  pkgLength,
  returnOp,
  scope,
  string,
} from "../../vmm/acpi/aml.ts";
import { AcpiError } from "../../vmm/acpi/errors.ts";
import {
  EDGE_HIGH_EXCLUSIVE,
  interrupt,
  ioPort,
  irqNoFlags,
  memory32Fixed,
  resourceTemplate,
} from "../../vmm/acpi/resources.ts";

const bytes = (u: Uint8Array): number[] => Array.from(u);
const ascii = (s: string): number[] => Array.from(new TextEncoder().encode(s));

Deno.test("PkgLength uses one byte up to 63 and then 2, 3 or 4 bytes with the count in bits 7-6", () => {
  assert.deepEqual(bytes(pkgLength(0)), [0x01]);
  assert.deepEqual(bytes(pkgLength(62)), [0x3f]);
  // 63 body bytes + 2 length bytes = 65 = 0x41: lead 0x40 | 0x1, next 0x41 >> 4 = 0x04.
  assert.deepEqual(bytes(pkgLength(63)), [0x41, 0x04]);
  // 4093 + 2 = 4095 = 0xfff: the largest two-byte PkgLength.
  assert.deepEqual(bytes(pkgLength(4093)), [0x4f, 0xff]);
  // 4094 + 3 = 4097 = 0x1001: three bytes.
  assert.deepEqual(bytes(pkgLength(4094)), [0x81, 0x00, 0x01]);
  // 0x100000 + 4 = 0x100004: four bytes (0x0fffff + 3 does not fit three).
  assert.deepEqual(bytes(pkgLength(0x10_0000)), [0xc4, 0x00, 0x00, 0x01]);
  assert.throws(() => pkgLength(0x1000_0000), AcpiError);
  assert.throws(() => pkgLength(-1), AcpiError);
});

Deno.test("integers take the shortest of Zero, One, Ones and the Byte/Word/DWord/QWord prefixes", () => {
  assert.deepEqual(bytes(integer(0)), [0x00]);
  assert.deepEqual(bytes(integer(1)), [0x01]);
  assert.deepEqual(bytes(integer(0xffff_ffff_ffff_ffffn)), [0xff]);
  assert.deepEqual(bytes(integer(2)), [0x0a, 0x02]);
  assert.deepEqual(bytes(integer(0xff)), [0x0a, 0xff]);
  assert.deepEqual(bytes(integer(0x100)), [0x0b, 0x00, 0x01]);
  assert.deepEqual(bytes(integer(0xfec0_0000)), [0x0c, 0x00, 0x00, 0xc0, 0xfe]);
  assert.deepEqual(bytes(integer(0x1_0000_0000)), [0x0e, 0, 0, 0, 0, 1, 0, 0, 0]);
  assert.throws(() => integer(-1), AcpiError);
  assert.throws(() => integer(1n << 64n), AcpiError);
});

Deno.test("strings are StringPrefix, ASCII and a NUL; other characters are refused", () => {
  assert.deepEqual(bytes(string("LNRO0005")), [0x0d, ...ascii("LNRO0005"), 0x00]);
  assert.deepEqual(bytes(string("")), [0x0d, 0x00]);
  assert.throws(() => string("é"), AcpiError);
  assert.throws(() => string("a\0b"), AcpiError);
});

Deno.test("name segments pad to four with '_' and name paths carry root, dual and multi prefixes", () => {
  assert.deepEqual(bytes(nameSeg("GED")), ascii("GED_"));
  assert.deepEqual(bytes(nameString("_HID")), ascii("_HID"));
  assert.deepEqual(bytes(nameString("\\_SB_")), [0x5c, ...ascii("_SB_")]);
  assert.deepEqual(bytes(nameString("\\_SB.VGEN")), [0x5c, 0x2e, ...ascii("_SB_VGEN")]);
  assert.deepEqual(bytes(nameString("A.B.C")), [0x2f, 3, ...ascii("A___B___C___")]);
  assert.deepEqual(bytes(nameString("^^FOO")), [0x5e, 0x5e, ...ascii("FOO_")]);
  assert.deepEqual(bytes(nameString("\\")), [0x5c, 0x00]);
  for (const bad of ["", "0ABC", "ABCDE", "ab", "A-B"]) {
    assert.throws(() => nameSeg(bad), AcpiError, bad);
  }
});

Deno.test("EisaId compresses three letters and four hex digits as ASL does", () => {
  // Well-known values: PNP0501 (16550A UART) and PNP0A03 (PCI host bridge).
  assert.equal(eisaIdValue("PNP0501"), 0x0105d041);
  assert.equal(eisaIdValue("PNP0A03"), 0x030ad041);
  assert.deepEqual(bytes(eisaId("PNP0303")), [0x0c, 0x41, 0xd0, 0x03, 0x03]);
  assert.throws(() => eisaIdValue("pnp0501"), AcpiError);
  assert.throws(() => eisaIdValue("PNP050"), AcpiError);
});

Deno.test("Name, Scope and Device encode as NameOp, ScopeOp and ExtOpPrefix DeviceOp with PkgLength", () => {
  assert.deepEqual(bytes(name("_UID", integer(0))), [0x08, ...ascii("_UID"), 0x00]);
  const dev = device("COM1", name("_UID", integer(1)));
  // DeviceOp PkgLength(1 + 4 + 6 = 11) "COM1" NameOp "_UID" One
  assert.deepEqual(bytes(dev), [0x5b, 0x82, 11, ...ascii("COM1"), 0x08, ...ascii("_UID"), 0x01]);
  assert.deepEqual(bytes(scope("\\_SB_")), [0x10, 6, 0x5c, ...ascii("_SB_")]);
});

Deno.test("Method, Return, Package, If, LEqual, Notify and Arg0 encode as the grammar gives them", () => {
  const m = method("ADDR", 0, false, returnOp(packageOp(integer(0xff000), integer(0))));
  assert.deepEqual(bytes(m), [
    0x14,
    16,
    ...ascii("ADDR"),
    0x00, // MethodOp PkgLength NameString MethodFlags
    0xa4, // ReturnOp
    0x12,
    8,
    2,
    0x0c,
    0x00,
    0xf0,
    0x0f,
    0x00,
    0x00, // PackageOp PkgLength NumElements DWord Zero
  ]);
  assert.equal(method("_EVT", 1, true)[6], 0x09, "one argument, serialized");
  assert.throws(() => method("X", 8, false), AcpiError);
  const evt = ifOp(lEqual(arg(0), integer(7)), notify("\\_SB.VGEN", integer(0x80)));
  assert.deepEqual(bytes(evt), [
    0xa0,
    18, // IfOp PkgLength
    0x93,
    0x68,
    0x0a,
    0x07, // LEqualOp Arg0 BytePrefix 7
    0x86,
    0x5c,
    0x2e,
    ...ascii("_SB_VGEN"),
    0x0a,
    0x80, // NotifyOp \_SB_.VGEN 0x80
  ]);
  assert.throws(() => arg(7), AcpiError);
  assert.throws(() => packageOp(...new Array<Uint8Array>(256).fill(integer(0))), AcpiError);
});

Deno.test("Buffer carries its size as an integer after its PkgLength", () => {
  assert.deepEqual(bytes(buffer(Uint8Array.of(1, 2, 3))), [0x11, 6, 0x0a, 3, 1, 2, 3]);
});

Deno.test("resource descriptors match ACPI 6.5 section 6.4 byte for byte", () => {
  // I/O port descriptor: tag 0x47, Decode16, min, max, alignment, length.
  assert.deepEqual(bytes(ioPort(0x3f8, 8)), [0x47, 0x01, 0xf8, 0x03, 0xf8, 0x03, 0x01, 0x08]);
  // IRQ descriptor without flags byte: tag 0x22 and a 16-bit mask.
  assert.deepEqual(bytes(irqNoFlags(4)), [0x22, 0x10, 0x00]);
  assert.deepEqual(bytes(irqNoFlags(1, 8)), [0x22, 0x02, 0x01]);
  // Fixed 32-bit memory: tag 0x86, length 9, read/write, base, length.
  assert.deepEqual(
    bytes(memory32Fixed(0xd000_0000, 0x1000)),
    [0x86, 0x09, 0x00, 0x01, 0x00, 0x00, 0x00, 0xd0, 0x00, 0x10, 0x00, 0x00],
  );
  // Extended interrupt: tag 0x89, length 6, consumer|edge, one interrupt.
  assert.deepEqual(
    bytes(interrupt(EDGE_HIGH_EXCLUSIVE, 5)),
    [0x89, 0x06, 0x00, 0x03, 0x01, 0x05, 0x00, 0x00, 0x00],
  );
  assert.equal(interrupt({ edge: false, activeLow: true, shared: true }, 9)[3], 0x0d);
  // Template: Buffer(size) { descriptors, End Tag 0x79 0x00 }.
  assert.deepEqual(bytes(resourceTemplate(irqNoFlags(4))), [
    0x11,
    8,
    0x0a,
    5,
    0x22,
    0x10,
    0x00,
    0x79,
    0x00,
  ]);
  assert.throws(() => irqNoFlags(16), AcpiError);
  assert.throws(() => ioPort(0xfffc, 8), AcpiError);
  assert.throws(() => memory32Fixed(0xffff_f000, 0x2000), AcpiError);
  assert.throws(() => interrupt(EDGE_HIGH_EXCLUSIVE), AcpiError);
});
