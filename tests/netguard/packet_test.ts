import assert from "node:assert/strict";
import {
  buildFrame,
  describePacket,
  formatAddress,
  PacketClass,
  PacketInfo,
  ParseError,
  parseEthernet,
  parseRawIp,
  prng,
  PROTO_ICMPV6,
  PROTO_TCP,
  PROTO_UDP,
  TCP_ACK,
  TCP_RST,
  TCP_SYN,
} from "../../netguard/mod.ts";

function parse(frame: Uint8Array): PacketInfo {
  const info = new PacketInfo();
  parseEthernet(frame, 0, frame.length, info);
  return info;
}

Deno.test("an IPv4 TCP SYN parses to its addresses, ports and flags", () => {
  const f = buildFrame({
    src: "198.51.100.7",
    dst: "10.0.0.2",
    proto: "tcp",
    sport: 1234,
    dport: 80,
  });
  const i = parse(f);
  assert.equal(i.error, 0);
  assert.equal(i.ipVersion, 4);
  assert.equal(formatAddress(f, i.srcOff, 4), "198.51.100.7");
  assert.equal(formatAddress(f, i.dstOff, 4), "10.0.0.2");
  assert.equal(i.src4, (198 << 24 >>> 0) + (51 << 16) + (100 << 8) + 7);
  assert.equal(i.proto, PROTO_TCP);
  assert.equal(i.srcPort, 1234);
  assert.equal(i.dstPort, 80);
  assert.equal(i.tcpFlags, TCP_SYN);
  assert.equal(i.cls, PacketClass.tcpSyn);
  assert.match(describePacket(f, i), /198\.51\.100\.7\.1234 > 10\.0\.0\.2\.80 TCP \[S\]/);
});

Deno.test("TCP flags classify SYN-ACK, RST and plain ACK apart", () => {
  const mk = (flags: number) =>
    parse(buildFrame({ src: "10.0.0.1", dst: "10.0.0.2", proto: "tcp", flags })).cls;
  assert.equal(mk(TCP_SYN | TCP_ACK), PacketClass.tcpSynAck);
  assert.equal(mk(TCP_RST | TCP_ACK), PacketClass.tcpRst);
  assert.equal(mk(TCP_ACK), PacketClass.tcpOther);
});

Deno.test("an 802.1Q-tagged UDP frame reports its VLAN and ports", () => {
  const f = buildFrame({
    src: "10.1.1.1",
    dst: "10.1.1.2",
    proto: "udp",
    sport: 5353,
    dport: 53,
    vlan: 42,
  });
  const i = parse(f);
  assert.equal(i.error, 0);
  assert.equal(i.vlan, 42);
  assert.equal(i.proto, PROTO_UDP);
  assert.equal(i.dstPort, 53);
  assert.equal(i.cls, PacketClass.udp);
});

Deno.test("IPv4 fragments: the first keeps its L4 header, later ones are classed as fragments", () => {
  const first = parse(
    buildFrame({
      src: "10.0.0.1",
      dst: "10.0.0.2",
      proto: "udp",
      fragment: { offset: 0, more: true },
    }),
  );
  assert.equal(first.fragment, true);
  assert.equal(first.laterFragment, false);
  assert.equal(first.cls, PacketClass.udp);
  const later = parse(
    buildFrame({
      src: "10.0.0.1",
      dst: "10.0.0.2",
      proto: "udp",
      fragment: { offset: 185, more: false },
    }),
  );
  assert.equal(later.fragment, true);
  assert.equal(later.laterFragment, true);
  assert.equal(later.cls, PacketClass.fragment);
  assert.equal(later.srcPort, 0);
});

Deno.test("IPv6 TCP and ICMPv6 parse, with addresses in RFC 5952 form", () => {
  const f = buildFrame({ src: "2001:db8::1", dst: "fd00::2:0:0:5", proto: "tcp", dport: 443 });
  const i = parse(f);
  assert.equal(i.error, 0);
  assert.equal(i.ipVersion, 6);
  assert.equal(formatAddress(f, i.srcOff, 6), "2001:db8::1");
  assert.equal(formatAddress(f, i.dstOff, 6), "fd00::2:0:0:5");
  assert.equal(i.dstPort, 443);
  const icmp = parse(buildFrame({ src: "2001:db8::1", dst: "2001:db8::2", proto: "icmp" }));
  assert.equal(icmp.proto, PROTO_ICMPV6);
  assert.equal(icmp.icmpType, 128);
  assert.equal(icmp.cls, PacketClass.icmp);
});

/** Inserts IPv6 extension headers (hop-by-hop, then a fragment header) into a built frame. */
function withIpv6Extensions(frame: Uint8Array, fragOffset: number): Uint8Array {
  const ip = 14;
  const l4 = frame.subarray(ip + 40);
  const nextProto = frame[ip + 6] ?? 0;
  const hop = new Uint8Array(8);
  hop[0] = 44; // next: fragment
  hop[1] = 0; // 8 bytes
  const frag = new Uint8Array(8);
  frag[0] = nextProto;
  new DataView(frag.buffer).setUint16(2, (fragOffset << 3) | 1, false);
  const out = new Uint8Array(frame.length + 16);
  out.set(frame.subarray(0, ip + 40));
  out[ip + 6] = 0; // next: hop-by-hop
  new DataView(out.buffer).setUint16(ip + 4, l4.length + 16, false);
  out.set(hop, ip + 40);
  out.set(frag, ip + 48);
  out.set(l4, ip + 56);
  return out;
}

Deno.test("IPv6 extension headers are walked to the upper-layer header, and fragments are seen", () => {
  const base = buildFrame({ src: "2001:db8::1", dst: "2001:db8::2", proto: "udp", dport: 4789 });
  const first = parse(withIpv6Extensions(base, 0));
  assert.equal(first.error, 0);
  assert.equal(first.proto, PROTO_UDP);
  assert.equal(first.dstPort, 4789);
  assert.equal(first.fragment, true);
  const later = parse(withIpv6Extensions(base, 100));
  assert.equal(later.cls, PacketClass.fragment);
  assert.equal(later.laterFragment, true);
});

Deno.test("raw IP input parses the same as the Ethernet payload", () => {
  const f = buildFrame({ src: "10.0.0.1", dst: "10.0.0.2", proto: "tcp", dport: 22 });
  const info = new PacketInfo();
  assert.equal(parseRawIp(f, 14, f.length - 14, info), true);
  assert.equal(info.dstPort, 22);
  assert.equal(info.cls, PacketClass.tcpSyn);
});

Deno.test("truncated frames are reported with a reason, never thrown", () => {
  const f = buildFrame({ src: "10.0.0.1", dst: "10.0.0.2", proto: "tcp" });
  assert.equal(parse(f.subarray(0, 10)).error, ParseError.truncatedEthernet);
  assert.equal(parse(f.subarray(0, 20)).error, ParseError.truncatedIp);
  assert.equal(parse(f.subarray(0, 14 + 20 + 10)).error, ParseError.truncatedL4);
  const badIhl = f.slice();
  badIhl[14] = 0x42;
  assert.equal(parse(badIhl).error, ParseError.badIpHeader);
  const info = new PacketInfo();
  assert.equal(
    parseEthernet(f, 10, f.length, info),
    false,
    "a range past the buffer end is refused",
  );
  assert.equal(parseEthernet(f, -1, 20, info), false, "a negative offset is refused");
});

Deno.test("random and mutated frames never throw and every failure names a reason (seeded)", () => {
  const seed = 0x5eed_0001;
  const rnd = prng(seed);
  const info = new PacketInfo();
  const templates = [
    buildFrame({ src: "10.0.0.1", dst: "10.0.0.2", proto: "tcp", vlan: 7 }),
    buildFrame({ src: "2001:db8::1", dst: "2001:db8::2", proto: "udp" }),
    withIpv6Extensions(buildFrame({ src: "2001:db8::1", dst: "2001:db8::2", proto: "tcp" }), 0),
    buildFrame({
      src: "10.0.0.1",
      dst: "10.0.0.2",
      proto: "icmp",
      fragment: { offset: 0, more: true },
    }),
  ];
  let malformed = 0;
  try {
    for (let n = 0; n < 20000; n++) {
      const t = templates[n % templates.length] ?? templates[0];
      if (t === undefined) throw new Error("no template");
      const f = t.slice(0, Math.floor(rnd() * (t.length + 1)));
      const flips = Math.floor(rnd() * 4);
      for (let k = 0; k < flips && f.length > 0; k++) {
        f[Math.floor(rnd() * f.length)] = Math.floor(rnd() * 256);
      }
      const ok = parseEthernet(f, 0, f.length, info);
      if (!ok) {
        malformed++;
        assert.ok(info.error > 0, "a failed parse carries a reason");
        assert.equal(info.cls, PacketClass.malformed);
      } else {
        assert.equal(info.error, 0);
        if (info.l4Off >= 0) assert.ok(info.l4Off < f.length, "L4 offset lies inside the frame");
      }
    }
  } catch (err) {
    console.error(`seed ${seed}`);
    throw err;
  }
  assert.ok(malformed > 1000, `expected many malformed frames, got ${malformed}`);
});
