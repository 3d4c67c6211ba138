import assert from "node:assert/strict";
import {
  chapResponse,
  decodeChapValue,
  decodeText,
  encodeChapValue,
  encodeText,
  IscsiLoginError,
  IscsiProtocolError,
} from "../../san/mod.ts";
import { type LoginOffer, negotiateLogin, type RawPdu } from "../../san/iscsi_login.ts";

/** One login request as the fake target sees it. */
interface Request {
  csg: number;
  nsg: number;
  transit: boolean;
  cont: boolean;
  keys: Map<string, string>;
  expStatSN: number;
  tsih: number;
}

/** What the fake target answers: keys, stage bits, and optionally a refusal or a Continue. */
interface Answer {
  keys?: Array<[string, string]>;
  transit?: boolean;
  nsg?: number;
  statusClass?: number;
  statusDetail?: number;
  cont?: boolean;
  tsih?: number;
}

function parse(pdu: Uint8Array): Request {
  const v = new DataView(pdu.buffer, pdu.byteOffset);
  assert.equal(v.getUint8(0), 0x43, "a Login Request, immediate");
  const flags = v.getUint8(1);
  const len = (v.getUint8(5) << 16) | v.getUint16(6);
  return {
    csg: (flags >> 2) & 3,
    nsg: flags & 3,
    transit: (flags & 0x80) !== 0,
    cont: (flags & 0x40) !== 0,
    keys: new Map(decodeText(pdu.subarray(48, 48 + len))),
    expStatSN: v.getUint32(28),
    tsih: v.getUint16(14),
  };
}

function respond(req: Request, a: Answer, statSN: number): RawPdu {
  const data = encodeText(a.keys ?? []);
  const header = new Uint8Array(48);
  const v = new DataView(header.buffer);
  v.setUint8(0, 0x23);
  const transit = a.transit ?? req.transit;
  v.setUint8(
    1,
    (transit ? 0x80 : 0) | (a.cont ? 0x40 : 0) | (req.csg << 2) | (transit ? a.nsg ?? req.nsg : 0),
  );
  v.setUint8(5, data.length >> 16);
  v.setUint16(6, data.length & 0xffff);
  v.setUint16(14, a.tsih ?? 0);
  v.setUint32(24, statSN);
  v.setUint32(28, 1); // ExpCmdSN
  v.setUint32(32, 32); // MaxCmdSN
  v.setUint8(36, a.statusClass ?? 0);
  v.setUint8(37, a.statusDetail ?? 0);
  return { header, data };
}

/** A target played by `script`: each login request gets the answer it returns. */
function fakeTarget(script: (req: Request, n: number) => Answer) {
  const seen: Request[] = [];
  let statSN = 100;
  const exchange = (pdu: Uint8Array): Promise<RawPdu> => {
    const req = parse(pdu);
    seen.push(req);
    return Promise.resolve(respond(req, script(req, seen.length - 1), statSN++));
  };
  return { exchange, seen };
}

const OFFER: LoginOffer = {
  isid: new Uint8Array([0x80, 1, 2, 3, 4, 5]),
  itt: 7,
  cmdSN: 1,
  initiatorName: "iqn.2026-01.dev.vmkit.test:vm-a",
  targetName: "iqn.2026-01.dev.vmkit.test:disk",
  maxRecvDataSegmentLength: 262144,
  maxBurstLength: 1 << 20,
  firstBurstLength: 256 << 10,
};

Deno.test("login negotiation without CHAP takes the target's answers and answers unknown keys NotUnderstood", async () => {
  const t = fakeTarget((req, n) => {
    if (req.csg === 0) return { keys: [["AuthMethod", "None"]], transit: true, nsg: 1 };
    if (n === 1) {
      return {
        keys: [
          ["MaxRecvDataSegmentLength", "65536"],
          ["InitialR2T", "Yes"],
          ["MaxBurstLength", "524288"],
          ["FirstBurstLength", "1048576"],
          ["X-com.example.Vendor", "1"],
        ],
        transit: false,
      };
    }
    return { transit: true, nsg: 3, tsih: 9 };
  });
  const r = await negotiateLogin(t.exchange, OFFER);
  assert.equal(t.seen.length, 3);
  assert.equal(t.seen[0]?.keys.get("InitiatorName"), OFFER.initiatorName);
  assert.equal(t.seen[0]?.keys.get("SessionType"), "Normal");
  assert.equal(t.seen[0]?.keys.get("AuthMethod"), "None");
  assert.equal(t.seen[1]?.keys.get("HeaderDigest"), "None");
  assert.equal(t.seen[1]?.keys.get("ImmediateData"), "Yes");
  assert.deepEqual([...(t.seen[2]?.keys ?? [])], [["X-com.example.Vendor", "NotUnderstood"]]);
  assert.equal(t.seen[1]?.expStatSN, 101, "each request acknowledges the last StatSN");
  assert.equal(r.targetMaxRecvDataSegmentLength, 65536);
  assert.equal(r.initialR2T, true);
  assert.equal(r.immediateData, true);
  assert.equal(r.maxBurstLength, 524288);
  assert.equal(r.firstBurstLength, 524288, "FirstBurstLength never exceeds MaxBurstLength");
  assert.equal(r.tsih, 9);
  assert.deepEqual([r.expStatSN, r.expCmdSN, r.maxCmdSN], [103, 1, 32]);
});

Deno.test("login text split over Continue PDUs is joined before it is read", async () => {
  const t = fakeTarget((req, n) => {
    if (n === 0) return { keys: [["AuthMethod", "None"]], transit: true, nsg: 1 };
    if (n === 1) return { keys: [["MaxRecvDataSegmentLength", "131072"]], cont: true };
    assert.equal(req.keys.size, 0, "a Continue request carries no text");
    return { keys: [["ImmediateData", "No"]], transit: true, nsg: 3 };
  });
  const r = await negotiateLogin(t.exchange, OFFER);
  assert.equal(r.targetMaxRecvDataSegmentLength, 131072);
  assert.equal(r.immediateData, false);
});

Deno.test("mutual CHAP answers the target's challenge and refuses a target that cannot prove its secret", async () => {
  const chap = { username: "vm-a", secret: "initiator-secret", mutualSecret: "target-secret" };
  const target = (proveWith: string) =>
    fakeTarget((req, n) => {
      if (n === 0) {
        assert.equal(req.keys.get("AuthMethod"), "CHAP,None");
        return { keys: [["AuthMethod", "CHAP"]], transit: false };
      }
      if (n === 1) {
        assert.equal(req.keys.get("CHAP_A"), "5");
        return {
          keys: [["CHAP_A", "5"], ["CHAP_I", "42"], ["CHAP_C", "0x0102030405060708"]],
          transit: false,
        };
      }
      if (n === 2) {
        const expect = chapResponse(42, chap.secret, new Uint8Array([1, 2, 3, 4, 5, 6, 7, 8]));
        assert.equal(req.keys.get("CHAP_N"), "vm-a");
        assert.equal(req.keys.get("CHAP_R"), encodeChapValue(expect));
        const id = Number(req.keys.get("CHAP_I"));
        const challenge = decodeChapValue(req.keys.get("CHAP_C") ?? "");
        return {
          keys: [
            ["CHAP_N", "disk"],
            ["CHAP_R", encodeChapValue(chapResponse(id, proveWith, challenge))],
          ],
          transit: true,
          nsg: 1,
        };
      }
      return { transit: true, nsg: 3 };
    });
  const good = target("target-secret");
  await negotiateLogin(good.exchange, { ...OFFER, chap });
  assert.equal(good.seen.length, 4);
  const bad = target("wrong-secret");
  await assert.rejects(
    () => negotiateLogin(bad.exchange, { ...OFFER, chap }),
    (err) => err instanceof IscsiProtocolError && /did not prove/.test(err.message),
  );
});

Deno.test("a target that offers no authentication although CHAP credentials were given is refused", async () => {
  const t = fakeTarget(() => ({ keys: [["AuthMethod", "None"]], transit: true, nsg: 1 }));
  await assert.rejects(
    () => negotiateLogin(t.exchange, { ...OFFER, chap: { username: "u", secret: "s" } }),
    (err) =>
      err instanceof IscsiProtocolError && /refusing to log in without CHAP/.test(err.message),
  );
});

Deno.test("a refused login is a typed error with the target's status class and detail", async () => {
  const t = fakeTarget(() => ({ statusClass: 2, statusDetail: 1 }));
  await assert.rejects(
    () => negotiateLogin(t.exchange, OFFER),
    (err) =>
      err instanceof IscsiLoginError && err.statusClass === 2 && err.statusDetail === 1 &&
      err.initiatorName === OFFER.initiatorName,
  );
});

Deno.test("digests the target insists on and negotiations that never converge are refused", async () => {
  const digest = fakeTarget((_req, n) =>
    n === 0
      ? { keys: [["AuthMethod", "None"]], transit: true, nsg: 1 }
      : { keys: [["HeaderDigest", "CRC32C"]], transit: true, nsg: 3 }
  );
  await assert.rejects(
    () => negotiateLogin(digest.exchange, OFFER),
    (err) => err instanceof IscsiProtocolError && /HeaderDigest=CRC32C/.test(err.message),
  );
  const endless = fakeTarget((_req, n) =>
    n === 0 ? { keys: [["AuthMethod", "None"]], transit: true, nsg: 1 } : { transit: false }
  );
  await assert.rejects(
    () => negotiateLogin(endless.exchange, OFFER),
    (err) => err instanceof IscsiProtocolError && /did not converge/.test(err.message),
  );
  assert.equal(endless.seen.length, 1 + 9, "nine operational rounds before giving up");
});

Deno.test("a discovery login offers only the discovery keys", async () => {
  const t = fakeTarget((req) =>
    req.csg === 0
      ? { keys: [["AuthMethod", "None"]], transit: true, nsg: 1 }
      : { transit: true, nsg: 3 }
  );
  await negotiateLogin(t.exchange, { ...OFFER, targetName: undefined });
  assert.equal(t.seen[0]?.keys.get("SessionType"), "Discovery");
  assert.equal(t.seen[0]?.keys.has("TargetName"), false);
  assert.deepEqual([...(t.seen[1]?.keys.keys() ?? [])], [
    "HeaderDigest",
    "DataDigest",
    "MaxRecvDataSegmentLength",
  ]);
});
