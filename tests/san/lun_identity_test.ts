import assert from "node:assert/strict";
import {
  type LunIdentity,
  lunIdentityChange,
  parseDeviceIdentification,
  parseUnitSerial,
  SanError,
} from "../../san/mod.ts";

/** A Device Identification page (SPC-4 7.8.6) from (proto|codeset, piv|assoc|type, bytes). */
function page83(...ds: Array<[number, number, number[]]>): Uint8Array {
  const body = ds.flatMap(([b0, b1, v]) => [b0, b1, 0, v.length, ...v]);
  return new Uint8Array([0, 0x83, body.length >> 8, body.length & 0xff, ...body]);
}

Deno.test("the Device Identification VPD page parses into designators with association and type", () => {
  const naa = [0x60, 0, 0, 0, 0, 0, 0, 0, 0x0e, 0, 0, 0, 0, 1, 0, 1];
  const t10 = [..."IET     00010001"].map((c) => c.charCodeAt(0));
  const d = parseDeviceIdentification(
    page83([0x02, 0x01, t10], [0x01, 0x03, naa], [0x51, 0x94, [0, 1]]),
  );
  assert.deepEqual(d.map((x) => [x.codeSet, x.association, x.type]), [[2, 0, 1], [1, 0, 3], [
    1,
    1,
    4,
  ]]);
  assert.equal(d[1]?.value, "60000000000000000e00000000010001");
  // A designator running past the page, or another page, is refused.
  const bad = page83([0x01, 0x03, naa]);
  bad[7] = 40;
  assert.throws(() => parseDeviceIdentification(bad), SanError);
  assert.throws(() => parseDeviceIdentification(new Uint8Array([0, 0x80, 0, 0])), SanError);
  assert.throws(() => parseDeviceIdentification(new Uint8Array([0, 0x83])), SanError);
});

Deno.test("the Unit Serial Number page parses, trailing blanks and NULs trimmed", () => {
  const sn = [..."beaf11  "].map((c) => c.charCodeAt(0));
  assert.equal(parseUnitSerial(new Uint8Array([0, 0x80, 0, sn.length + 1, ...sn, 0])), "beaf11");
  assert.throws(() => parseUnitSerial(new Uint8Array([0, 0x83, 0, 0])), SanError);
});

Deno.test("a LUN's identity change is named by its first difference", () => {
  const was: LunIdentity = {
    bytes: 1 << 20,
    blockSize: 512,
    designators: [{ type: 3, association: 0, codeSet: 1, value: "6000" }],
    serial: "sn1",
    headSha256: "aa",
  };
  assert.equal(lunIdentityChange(was, { ...was }), null);
  assert.match(
    lunIdentityChange(was, { ...was, bytes: 2 << 20 }) ?? "",
    /size is 2097152 bytes, not 1048576/,
  );
  assert.match(lunIdentityChange(was, { ...was, blockSize: 4096 }) ?? "", /block size is 4096/);
  assert.match(
    lunIdentityChange(was, {
      ...was,
      designators: [{ type: 3, association: 0, codeSet: 1, value: "6001" }],
    }) ?? "",
    /device identification \(VPD page 0x83\).*another logical unit/,
  );
  assert.match(lunIdentityChange(was, { ...was, serial: "sn2" }) ?? "", /serial number/);
  assert.match(lunIdentityChange(was, { ...was, headSha256: "bb" }) ?? "", /first 64 KiB changed/);
});
