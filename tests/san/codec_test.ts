import assert from "node:assert/strict";
import {
  chapResponse,
  decodeChapValue,
  decodeSense,
  decodeText,
  encodeChapValue,
  encodeText,
  IscsiProtocolError,
  parseCapacity16,
  parseEtcdUrl,
  parseInquiry,
  parseIscsiUrl,
  parseReportLuns,
  SanError,
  snLess,
} from "../../san/mod.ts";

Deno.test("text key=value segments round-trip and malformed ones are rejected", () => {
  const pairs: Array<[string, string]> = [["InitiatorName", "iqn.2024-01.dev.vmkit:a"], [
    "AuthMethod",
    "CHAP,None",
  ]];
  const bytes = encodeText(pairs);
  assert.equal(bytes[bytes.length - 1], 0);
  assert.deepEqual(decodeText(bytes), pairs);
  assert.throws(() => decodeText(new TextEncoder().encode("novalue\0")), IscsiProtocolError);
  assert.throws(() => decodeText(Uint8Array.of(0xff, 0xfe, 0)), IscsiProtocolError);
  assert.throws(() => encodeText([["a=b", "c"]]), IscsiProtocolError);
});

Deno.test("CHAP responses are MD5 of identifier, secret and challenge (RFC 1994)", () => {
  // MD5(0x01 || "secret" || 0x00 0x01 0x02 0x03), computed independently with md5sum.
  const r = chapResponse(1, "secret", Uint8Array.of(0, 1, 2, 3));
  assert.equal(encodeChapValue(r), "0xe82cb2ed1efe04893c9cf73d4dd12e2d");
  assert.equal(r.length, 16);
  assert.deepEqual(decodeChapValue("0x00010203"), Uint8Array.of(0, 1, 2, 3));
  assert.deepEqual(decodeChapValue("0bAAECAw=="), Uint8Array.of(0, 1, 2, 3));
  assert.throws(() => decodeChapValue("zz"), IscsiProtocolError);
});

Deno.test("fixed and descriptor sense data decode to key, ASC and ASCQ", () => {
  const fixed = new Uint8Array(18);
  fixed[0] = 0x70;
  fixed[2] = 0x05;
  fixed[12] = 0x24;
  const s = decodeSense(fixed);
  assert.equal(s?.key, 5);
  assert.equal(s?.asc, 0x24);
  assert.match(s?.text ?? "", /ILLEGAL REQUEST: invalid field in CDB/);
  const desc = Uint8Array.of(0x72, 0x06, 0x29, 0x00, 0, 0, 0, 0);
  assert.equal(decodeSense(desc)?.key, 6);
  assert.match(decodeSense(desc)?.text ?? "", /UNIT ATTENTION/);
  assert.equal(decodeSense(Uint8Array.of(0x00)), undefined);
  assert.equal(decodeSense(new Uint8Array(0)), undefined);
});

Deno.test("INQUIRY, READ CAPACITY(16) and REPORT LUNS data parse and short buffers are refused", () => {
  const inq = new Uint8Array(36);
  inq[0] = 0x00;
  inq[7] = 0x02;
  inq.set(new TextEncoder().encode("VMKIT   DISK            0001"), 8);
  const p = parseInquiry(inq);
  assert.equal(p.vendor, "VMKIT");
  assert.equal(p.product, "DISK");
  assert.equal(p.cmdQue, true);
  assert.throws(() => parseInquiry(new Uint8Array(10)), SanError);
  const cap = new Uint8Array(32);
  const v = new DataView(cap.buffer);
  v.setBigUint64(0, 2047n);
  v.setUint32(8, 4096);
  cap[14] = 0xc0;
  const c = parseCapacity16(cap);
  assert.equal(c.blocks, 2048n);
  assert.equal(c.bytes, 2048n * 4096n);
  assert.equal(c.thinProvisioned, true);
  v.setUint32(8, 1000);
  assert.throws(() => parseCapacity16(cap), /block size/);
  const luns = new Uint8Array(24);
  new DataView(luns.buffer).setUint32(0, 16);
  luns[9] = 0;
  luns[16] = 0x40;
  luns[17] = 0x05;
  assert.deepEqual(parseReportLuns(luns), [0, 5]);
});

Deno.test("iscsi:// and etcd:// URLs parse and bad ones are rejected", () => {
  assert.deepEqual(parseIscsiUrl("iscsi://127.0.0.1:3261/IQN.2024-01.x.y:Disk/3"), {
    host: "127.0.0.1",
    port: 3261,
    target: "iqn.2024-01.x.y:disk",
    lun: 3,
  });
  assert.deepEqual(parseIscsiUrl("iscsi://[::1]"), { host: "::1", port: 3260 });
  for (
    const bad of [
      "http://x",
      "iscsi://",
      "iscsi://h:99999",
      "iscsi://h/notaname/1",
      "iscsi://h/iqn.2024-01.x:y/99999",
    ]
  ) {
    assert.throws(() => parseIscsiUrl(bad), SanError, bad);
  }
  assert.deepEqual(parseEtcdUrl("etcd://127.0.0.1:2379/fleet/"), {
    endpoint: "http://127.0.0.1:2379",
    prefix: "/fleet",
  });
  assert.throws(() => parseEtcdUrl("etcd://nohost"), SanError);
});

Deno.test("CmdSN serial arithmetic wraps around 2^32", () => {
  assert.equal(snLess(1, 2), true);
  assert.equal(snLess(2, 1), false);
  assert.equal(snLess(0xffffffff, 0), true);
  assert.equal(snLess(0, 0xffffffff), false);
  assert.equal(snLess(5, 5), false);
});
