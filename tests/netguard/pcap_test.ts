import assert from "node:assert/strict";
import {
  buildFrame,
  CaptureFormatError,
  LINKTYPE_ETHERNET,
  LINKTYPE_LINUX_SLL,
  LINKTYPE_LINUX_SLL2,
  PacketClass,
  PacketInfo,
  parseLinkFrame,
  parseRecord,
  PcapWriter,
  prng,
  readCapture,
  readCaptureFile,
} from "../../netguard/mod.ts";
import { run } from "./helpers.ts";

function frames(): Uint8Array[] {
  return [
    buildFrame({ src: "10.0.0.1", dst: "10.0.0.2", proto: "tcp", dport: 80 }),
    buildFrame({ src: "10.0.0.3", dst: "10.0.0.2", proto: "udp", dport: 53, payload: 20 }),
    buildFrame({ src: "2001:db8::1", dst: "2001:db8::2", proto: "icmp" }),
  ];
}

Deno.test("a pcap written by PcapWriter reads back with the same frames and timestamps", () => {
  const w = new PcapWriter();
  const fs = frames();
  fs.forEach((f, i) => w.write(f, 1_700_000_000_000 + i * 1.5));
  const cap = readCapture(w.bytes());
  assert.equal(cap.format, "pcap");
  assert.equal(cap.count, 3);
  assert.equal(cap.truncatedTail, false);
  fs.forEach((f, i) => {
    const off = cap.offsets[i] ?? 0;
    assert.deepEqual(cap.buf.subarray(off, off + (cap.lengths[i] ?? 0)), f);
    assert.ok(Math.abs((cap.tsMs[i] ?? 0) - (1_700_000_000_000 + i * 1.5)) < 0.002);
    assert.equal(cap.linkTypes[i], LINKTYPE_ETHERNET);
  });
  const info = new PacketInfo();
  parseRecord(cap, 1, info);
  assert.equal(info.cls, PacketClass.udp);
});

Deno.test("tcpdump reads the pcap netguard writes", async () => {
  const dir = await Deno.makeTempDir({ prefix: "netguard-pcap-" });
  try {
    const w = new PcapWriter();
    frames().forEach((f, i) => w.write(f, 1_700_000_000_000 + i));
    await Deno.writeFile(`${dir}/x.pcap`, w.bytes());
    const r = await run("tcpdump", ["-nn", "-r", `${dir}/x.pcap`]);
    const lines = r.stdout.trim().split("\n");
    assert.equal(lines.length, 3);
    assert.match(lines[0] ?? "", /10\.0\.0\.1\.40000 > 10\.0\.0\.2\.80: Flags \[S\]/);
    assert.match(lines[1] ?? "", /10\.0\.0\.3\.40000 > 10\.0\.0\.2\.53/);
    assert.match(lines[2] ?? "", /2001:db8::1 > 2001:db8::2: ICMP6, echo request/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

/** A big-endian, nanosecond-resolution classic pcap with one record. */
function bigEndianNanoPcap(frame: Uint8Array, sec: number, nsec: number): Uint8Array {
  const out = new Uint8Array(24 + 16 + frame.length);
  const v = new DataView(out.buffer);
  v.setUint32(0, 0xa1b23c4d, false);
  v.setUint16(4, 2, false);
  v.setUint16(6, 4, false);
  v.setUint32(16, 65535, false);
  v.setUint32(20, 1, false);
  v.setUint32(24, sec, false);
  v.setUint32(28, nsec, false);
  v.setUint32(32, frame.length, false);
  v.setUint32(36, frame.length, false);
  out.set(frame, 40);
  return out;
}

Deno.test("big-endian nanosecond pcap timestamps are read exactly", () => {
  const f = frames()[0] ?? new Uint8Array();
  const cap = readCapture(bigEndianNanoPcap(f, 1000, 250_000_000));
  assert.equal(cap.count, 1);
  assert.equal(cap.tsMs[0], 1_000_250);
});

/** A minimal pcapng: SHB, IDB (Ethernet, nanosecond resolution), one EPB per frame. */
function pcapng(fs: Uint8Array[], tsNs: bigint[]): Uint8Array {
  const blocks: Uint8Array[] = [];
  const block = (type: number, body: Uint8Array) => {
    const len = 12 + ((body.length + 3) & ~3);
    const b = new Uint8Array(len);
    const v = new DataView(b.buffer);
    v.setUint32(0, type, true);
    v.setUint32(4, len, true);
    b.set(body, 8);
    v.setUint32(len - 4, len, true);
    blocks.push(b);
  };
  const shb = new Uint8Array(16);
  const sv = new DataView(shb.buffer);
  sv.setUint32(0, 0x1a2b3c4d, true);
  sv.setUint16(4, 1, true);
  sv.setBigInt64(8, -1n, true);
  block(0x0a0d0d0a, shb);
  const idb = new Uint8Array(8 + 8 + 4);
  const iv = new DataView(idb.buffer);
  iv.setUint16(0, 1, true);
  iv.setUint32(4, 0, true);
  iv.setUint16(8, 9, true); // if_tsresol
  iv.setUint16(10, 1, true);
  idb[12] = 9; // 10^-9
  iv.setUint16(16, 0, true); // opt_endofopt
  block(0x00000001, idb);
  fs.forEach((f, i) => {
    const body = new Uint8Array(20 + f.length);
    const v = new DataView(body.buffer);
    const ts = tsNs[i] ?? 0n;
    v.setUint32(0, 0, true);
    v.setUint32(4, Number(ts >> 32n), true);
    v.setUint32(8, Number(ts & 0xffffffffn), true);
    v.setUint32(12, f.length, true);
    v.setUint32(16, f.length, true);
    body.set(f, 20);
    block(0x00000006, body);
  });
  const total = blocks.reduce((n, b) => n + b.length, 0);
  const out = new Uint8Array(total);
  let o = 0;
  for (const b of blocks) {
    out.set(b, o);
    o += b.length;
  }
  return out;
}

Deno.test("pcapng interface and packet blocks are read with their timestamp resolution", () => {
  const fs = frames();
  const cap = readCapture(
    pcapng(fs, [
      1_700_000_000_123_456_789n,
      1_700_000_000_223_456_789n,
      1_700_000_001_000_000_000n,
    ]),
  );
  assert.equal(cap.format, "pcapng");
  assert.equal(cap.count, 3);
  assert.ok(Math.abs((cap.tsMs[0] ?? 0) - 1_700_000_000_123.4568) < 0.001);
  assert.ok(Math.abs((cap.tsMs[2] ?? 0) - 1_700_000_001_000) < 0.001);
  const off = cap.offsets[2] ?? 0;
  assert.deepEqual(cap.buf.subarray(off, off + (cap.lengths[2] ?? 0)), fs[2]);
});

Deno.test("bad captures fail with a CaptureFormatError that says what is wrong", async () => {
  assert.throws(() => readCapture(new Uint8Array(32).fill(7)), /not a pcap or pcapng file/);
  const w = new PcapWriter(147);
  assert.throws(
    () => readCapture(w.bytes(), "odd.pcap"),
    (e: unknown) =>
      e instanceof CaptureFormatError && /odd\.pcap: unknown link type 147/.test(e.message),
  );
  const good = new PcapWriter();
  good.write(frames()[0] ?? new Uint8Array(), 0);
  const huge = good.bytes();
  new DataView(huge.buffer).setUint32(24 + 8, 10_000_000, true);
  assert.throws(() => readCapture(huge), /claims 10000000 bytes/);
  await assert.rejects(readCaptureFile("/nonexistent/netguard.pcap"), /cannot read the file/);
});

Deno.test("a capture cut short inside a record keeps the whole records and says so", () => {
  const w = new PcapWriter();
  frames().forEach((f, i) => w.write(f, i));
  const b = w.bytes();
  const cap = readCapture(b.subarray(0, b.length - 5));
  assert.equal(cap.count, 2);
  assert.equal(cap.truncatedTail, true);
});

Deno.test("mutated pcap and pcapng files either read or fail with a CaptureFormatError, and records stay in bounds (seeded)", () => {
  const seed = 0xbadcafe;
  const rnd = prng(seed);
  const w = new PcapWriter();
  frames().forEach((f, i) => w.write(f, i));
  const templates = [w.bytes(), pcapng(frames(), [1n, 2n, 3n])];
  try {
    for (let n = 0; n < 5000; n++) {
      const t = templates[n % 2] ?? new Uint8Array();
      const b = t.slice(0, Math.floor(rnd() * (t.length + 1)));
      const flips = 1 + Math.floor(rnd() * 6);
      for (let k = 0; k < flips && b.length > 0; k++) {
        b[Math.floor(rnd() * b.length)] = Math.floor(rnd() * 256);
      }
      let cap;
      try {
        cap = readCapture(b);
      } catch (err) {
        assert.ok(err instanceof CaptureFormatError, `unexpected ${err}`);
        continue;
      }
      const info = new PacketInfo();
      for (let i = 0; i < cap.count; i++) {
        const off = cap.offsets[i] ?? 0;
        const len = cap.lengths[i] ?? 0;
        assert.ok(off + len <= b.length, "a record lies inside the file");
        parseRecord(cap, i, info);
      }
    }
  } catch (err) {
    console.error(`seed ${seed}`);
    throw err;
  }
});

Deno.test("Linux cooked captures (SLL and SLL2) parse to IP and report the packet type", () => {
  const f = buildFrame({ src: "10.0.0.1", dst: "10.0.0.2", proto: "tcp", dport: 25 });
  const ip = f.subarray(14);
  const sll = new Uint8Array(16 + ip.length);
  new DataView(sll.buffer).setUint16(0, 4, false); // PACKET_OUTGOING
  new DataView(sll.buffer).setUint16(14, 0x0800, false);
  sll.set(ip, 16);
  const sll2 = new Uint8Array(20 + ip.length);
  new DataView(sll2.buffer).setUint16(0, 0x0800, false);
  sll2[10] = 0; // PACKET_HOST
  sll2.set(ip, 20);
  const info = new PacketInfo();
  assert.equal(parseLinkFrame(LINKTYPE_LINUX_SLL, sll, 0, sll.length, info), 4);
  assert.equal(info.dstPort, 25);
  assert.equal(info.cls, PacketClass.tcpSyn);
  assert.equal(parseLinkFrame(LINKTYPE_LINUX_SLL2, sll2, 0, sll2.length, info), 0);
  assert.equal(info.dstPort, 25);
  assert.equal(parseLinkFrame(LINKTYPE_LINUX_SLL2, sll2, 0, 10, info), -1);
  assert.ok(info.error > 0, "a cooked header cut short is malformed");
});
