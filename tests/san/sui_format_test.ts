import assert from "node:assert/strict";
import {
  formatWwn,
  isIscsiName,
  makeHostNqn,
  makeIqn,
  makeNaa5,
  makeWwnPair,
  parseIscsiName,
  parseNqn,
  parseSui,
  parseWwn,
  randomSuiGenerator,
  SuiFormatError,
  wwnnForWwpn,
} from "../../san/mod.ts";

Deno.test("WWNs of NAA 1, 2, 5 and 6 parse into their OUI and vendor fields", () => {
  const n5 = parseWwn("50:01:43:80:12:34:56:78");
  assert.equal(n5.naa, 5);
  assert.equal(n5.oui, 0x001438);
  assert.equal(n5.vendor, 0x012345678n);
  const n1 = parseWwn("10:00:00:05:1e:0a:0b:0c");
  assert.equal(n1.naa, 1);
  assert.equal(n1.oui, 0x00051e);
  assert.equal(n1.vendor, 0x0a0b0cn);
  const n2 = parseWwn("2001-0025-b500-00af");
  assert.equal(n2.naa, 2);
  assert.equal(n2.oui, 0x0025b5);
  assert.equal(n2.vendor, (0x001n << 24n) | 0x0000afn);
  assert.equal(n2.text, "20:01:00:25:b5:00:00:af");
  const n6 = parseWwn("0x6001405abcdef0123456789abcdef012");
  assert.equal(n6.naa, 6);
  assert.equal(n6.oui, 0x001405);
  assert.equal(n6.extension, 0x3456789abcdef012n);
  assert.equal(n6.text.split(":").length, 16);
});

Deno.test("malformed or unsupported WWNs are rejected with a SuiFormatError", () => {
  for (
    const bad of [
      "",
      "50:01:43",
      "zz:01:43:80:12:34:56:78",
      "30:01:43:80:12:34:56:78",
      "11:00:00:05:1e:0a:0b:0c",
      "50014380123456781234567812345678",
    ]
  ) {
    assert.throws(() => parseWwn(bad), SuiFormatError, bad);
  }
});

Deno.test("NAA 5 WWNs format as colon-separated hex and round-trip", () => {
  const w = makeNaa5(0x001b21, 0xabcdef012n);
  assert.equal(w.text, "50:01:b2:1a:bc:de:f0:12");
  assert.equal(parseWwn(w.text).high, w.high);
  assert.equal(formatWwn(w.high), w.text);
  assert.throws(() => makeNaa5(0x1000000, 1n), SuiFormatError);
  assert.throws(() => makeNaa5(1, 1n << 36n), SuiFormatError);
});

Deno.test("an NPIV pair has distinct WWPN and WWNN and the WWNN derives from the WWPN", () => {
  const p = makeWwnPair(0x525400, 12345n);
  assert.notEqual(p.wwpn, p.wwnn);
  assert.equal(wwnnForWwpn(p.wwpn), p.wwnn);
  const q = makeWwnPair(0x525400, 12346n);
  assert.notEqual(q.wwpn, p.wwpn);
  assert.notEqual(q.wwnn, p.wwnn);
  assert.notEqual(q.wwnn, p.wwpn);
});

Deno.test("iSCSI names are normalised to lower case and validated per RFC 3720/3722", () => {
  const n = parseIscsiName("IQN.2024-01.Dev.VmKit:VM-One");
  assert.equal(n.name, "iqn.2024-01.dev.vmkit:vm-one");
  assert.equal(n.type, "iqn");
  assert.equal(n.date, "2024-01");
  assert.equal(n.authority, "dev.vmkit");
  assert.equal(n.unique, "vm-one");
  assert.equal(parseIscsiName("eui.02004567A425678D").name, "eui.02004567a425678d");
  assert.equal(parseIscsiName("naa.52004567BA64678D").type, "naa");
  assert.equal(parseIscsiName("naa.6001405abcdef0123456789abcdef012").unique.length, 32);
  for (
    const bad of [
      "iqn.2024-13.dev.vmkit",
      "iqn.24-01.dev.vmkit",
      "iqn.2024-01.dev.vmkit:has space",
      "iqn.2024-01.dev.vmkit:under_score",
      "eui.0200",
      "naa.123",
      "foo.bar",
      "",
    ]
  ) {
    assert.equal(isIscsiName(bad), false, bad);
  }
});

Deno.test("iSCSI names longer than 223 bytes are refused and 223 bytes are accepted", () => {
  const prefix = "iqn.2024-01.dev.vmkit:";
  const ok = prefix + "a".repeat(223 - prefix.length);
  assert.equal(parseIscsiName(ok).name.length, 223);
  assert.throws(() => parseIscsiName(ok + "a"), /223 bytes/);
  // Multi-byte characters count in bytes, not characters.
  const multi = prefix + "é".repeat(101);
  assert.throws(() => parseIscsiName(multi), /223 bytes/);
  assert.equal(makeIqn("iqn.2024-01.dev.vmkit", "VM-7"), "iqn.2024-01.dev.vmkit:vm-7");
  assert.throws(() => makeIqn("iqn.2024-01.dev.vmkit:x", "y"), SuiFormatError);
});

Deno.test("NVMe host NQNs in UUID form parse, generate and reject bad UUIDs", () => {
  const n = parseNqn("nqn.2014-08.org.nvmexpress:uuid:F81D4FAE-7DEC-11D0-A765-00A0C91E6BF6");
  assert.equal(n.uuid, "f81d4fae-7dec-11d0-a765-00a0c91e6bf6");
  const g = makeHostNqn();
  assert.match(g, /^nqn\.2014-08\.org\.nvmexpress:uuid:[0-9a-f-]{36}$/);
  assert.notEqual(makeHostNqn(), g);
  assert.equal(parseNqn("nqn.2016-06.io.spdk:cnode1").name, "nqn.2016-06.io.spdk:cnode1");
  assert.throws(() => parseNqn("nqn.2014-08.org.nvmexpress:uuid:not-a-uuid"), SuiFormatError);
  assert.throws(() => parseNqn("nqn.2016-06.io.spdk"), SuiFormatError);
  assert.throws(() => parseNqn("nqn.2016-06.io.spdk:has space"), SuiFormatError);
  assert.throws(() => parseNqn("nqn.2016-06.io.spdk:" + "x".repeat(220)), /223 bytes/);
});

Deno.test("generated SUIs are valid and a saved SUI config round-trips through JSON", () => {
  const gen = randomSuiGenerator({ oui: 0x001b21, iqnPrefix: "iqn.2025-02.example.host" });
  for (const type of ["iqn", "wwpn", "nqn"] as const) {
    const s = gen(type);
    const restored = parseSui(JSON.parse(JSON.stringify(s)));
    assert.deepEqual(restored, s.type === "wwpn" ? s : { type: s.type, sui: s.sui });
  }
  const w = gen("wwpn");
  assert.equal(parseWwn(w.sui).oui, 0x001b21);
  assert.match(gen("iqn").sui, /^iqn\.2025-02\.example\.host:vm-[0-9a-f]{16}$/);
  assert.throws(() => parseSui({ type: "iqn", sui: "bogus" }), SuiFormatError);
  assert.throws(() => parseSui({ type: "fcoe", sui: "x" }), SuiFormatError);
  assert.throws(() => parseSui(null), SuiFormatError);
});
