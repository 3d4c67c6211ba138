import assert from "node:assert/strict";
import {
  pduLength,
  putDataOut,
  putLoginRequest,
  putLogoutRequest,
  putNopOut,
  putScsiCommand,
  putTextRequest,
} from "../../san/iscsi_pdu_build.ts";
import { prng } from "../prng.ts";

/** Each builder with fixed arguments, writing at `off` of `buf`. */
const BUILDERS: Array<[string, number, (buf: Uint8Array, v: DataView, off: number) => void]> = [
  ["NOP-Out", 0, (b, v, o) => putNopOut(b, v, o, 5, 0xffffffff, 9, 10, 0x0001000000000000n)],
  [
    "Login",
    7,
    (b, v, o) =>
      putLoginRequest(
        b,
        v,
        o,
        new Uint8Array([0x80, 1, 2, 3, 4, 5]),
        3,
        1,
        1,
        3,
        true,
        2,
        4,
        new Uint8Array(7).fill(0x41),
      ),
  ],
  [
    "Text",
    13,
    (b, v, o) => putTextRequest(b, v, o, 2, 0xffffffff, 3, 4, new Uint8Array(13).fill(0x42)),
  ],
  ["Logout", 0, (b, v, o) => putLogoutRequest(b, v, o, 8, 9, 10)],
  [
    "SCSI Command",
    510,
    (b, v, o) =>
      putScsiCommand(
        b,
        v,
        o,
        0xa1,
        300,
        11,
        4096,
        12,
        13,
        new Uint8Array(16).fill(0x88),
        new Uint8Array(4096).fill(0x43),
        510,
      ),
  ],
  [
    "Data-Out",
    1021,
    (b, v, o) =>
      putDataOut(b, v, o, true, 1, 14, 15, 16, 2, new Uint8Array(8192).fill(0x44), 3000, 1021),
  ],
];

Deno.test("every PDU builder writes its whole PDU over a dirty buffer exactly as into a fresh one", () => {
  const seed = Date.now() >>> 0;
  const rand = prng(seed);
  for (const [name, dataLen, build] of BUILDERS) {
    const len = pduLength(dataLen);
    assert.equal(len % 4, 0, `${name}: padded to 4 bytes`);
    const fresh = new Uint8Array(len);
    build(fresh, new DataView(fresh.buffer), 0);
    const off = 4 * Math.floor(rand() * 64);
    const dirty = new Uint8Array(off + len + 64);
    for (let i = 0; i < dirty.length; i++) dirty[i] = Math.floor(rand() * 256);
    const before = dirty.slice();
    build(dirty, new DataView(dirty.buffer), off);
    assert.deepEqual(dirty.subarray(off, off + len), fresh, `${name} at ${off} (seed ${seed})`);
    assert.deepEqual(dirty.subarray(0, off), before.subarray(0, off), `${name}: nothing before it`);
    assert.deepEqual(
      dirty.subarray(off + len),
      before.subarray(off + len),
      `${name}: nothing after it`,
    );
  }
});

Deno.test("PDU builders put the fields where RFC 7143 places them", () => {
  const b = new Uint8Array(pduLength(510));
  const v = new DataView(b.buffer);
  putScsiCommand(
    b,
    v,
    0,
    0xa1,
    300,
    11,
    4096,
    12,
    13,
    new Uint8Array(16).fill(0x88),
    new Uint8Array(4096).fill(0x43),
    510,
  );
  assert.equal(b[0], 0x01);
  assert.equal(b[1], 0xa1);
  assert.equal((b[5] ?? 0) << 16 | v.getUint16(6), 510);
  assert.equal(v.getUint16(8), 0x4000 | 300, "flat-space LUN above 255");
  assert.deepEqual([v.getUint32(16), v.getUint32(20), v.getUint32(24), v.getUint32(28)], [
    11,
    4096,
    12,
    13,
  ]);
  assert.equal(b[32], 0x88);
  assert.equal(b[48], 0x43);
  assert.deepEqual([...b.subarray(48 + 510)], [0, 0], "padding zeroed");
  const l = new Uint8Array(pduLength(0));
  putLoginRequest(
    l,
    new DataView(l.buffer),
    0,
    new Uint8Array(6).fill(9),
    3,
    1,
    1,
    3,
    true,
    2,
    4,
    new Uint8Array(0),
  );
  assert.equal(l[0], 0x43, "Login Request, immediate");
  assert.equal(l[1], 0x80 | (1 << 2) | 3, "T, CSG 1, NSG 3");
  const d = new Uint8Array(pduLength(1021));
  const dv = new DataView(d.buffer);
  putDataOut(d, dv, 0, true, 1, 14, 15, 16, 2, new Uint8Array(8192).fill(0x44), 3000, 1021);
  assert.equal(d[1], 0x80, "final");
  assert.deepEqual([dv.getUint32(20), dv.getUint32(28), dv.getUint32(36), dv.getUint32(40)], [
    15,
    16,
    2,
    3000,
  ]);
});
