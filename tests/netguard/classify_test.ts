import assert from "node:assert/strict";
import {
  buildFrame,
  classifyEthernet,
  classifyFrame,
  LINKTYPE_ETHERNET,
  LINKTYPE_LINUX_SLL,
  LINKTYPE_RAW,
  PACKET_CLASS_NAMES,
  PacketInfo,
  parseEthernet,
  parseLinkFrame,
  prng,
} from "../../netguard/mod.ts";

/** A well-formed frame of a random kind, then a few random edits to its headers and length. */
function randomFrame(rnd: () => number): Uint8Array {
  const v6 = rnd() < 0.3;
  const r = rnd();
  const proto = r < 0.5 ? "tcp" : r < 0.8 ? "udp" : "icmp";
  const f = buildFrame({
    src: v6 ? "2001:db8::1" : "198.51.100.7",
    dst: v6 ? "2001:db8::2" : "10.0.0.2",
    proto,
    flags: Math.floor(rnd() * 256),
    payload: Math.floor(rnd() * 40),
    ...(rnd() < 0.3 ? { vlan: Math.floor(rnd() * 4096) } : {}),
    ...(!v6 && rnd() < 0.15
      ? { fragment: { offset: rnd() < 0.5 ? 0 : Math.floor(rnd() * 100), more: rnd() < 0.5 } }
      : {}),
  });
  const edits = Math.floor(rnd() * 4);
  // Header fields that steer the parse: EtherTypes, version/IHL, lengths, protocol, TCP offset.
  const spots = [12, 13, 14, 16, 17, 18, 19, 20, 21, 23, 24, 25, 27, 32, 46, 47, 54, 58, 59];
  const values = [
    0x08,
    0x00,
    0x86,
    0xdd,
    0x81,
    0x88,
    0xa8,
    0x45,
    0x60,
    0,
    6,
    17,
    1,
    58,
    44,
    43,
    59,
  ];
  for (let e = 0; e < edits; e++) {
    const at = rnd() < 0.6
      ? (spots[Math.floor(rnd() * spots.length)] ?? 0)
      : Math.floor(rnd() * f.length);
    if (at < f.length) {
      f[at] = rnd() < 0.5
        ? (values[Math.floor(rnd() * values.length)] ?? 0)
        : Math.floor(rnd() * 256);
    }
  }
  return rnd() < 0.2 ? f.subarray(0, Math.floor(rnd() * f.length)) : f;
}

Deno.test("classifyEthernet gives parseEthernet's class on random and damaged frames", () => {
  const seed = Date.now() >>> 0;
  const rnd = prng(seed);
  const info = new PacketInfo();
  const seen = new Set<number>();
  // Frames at an offset inside a larger buffer, as in a capture.
  const buf = new Uint8Array(256);
  for (let i = 0; i < 30_000; i++) {
    const f = randomFrame(rnd);
    const off = Math.floor(rnd() * (buf.length - f.length));
    buf.fill(0xee);
    buf.set(f, off);
    parseEthernet(buf, off, f.length, info);
    const got = classifyEthernet(buf, off, f.length);
    assert.equal(
      PACKET_CLASS_NAMES[got],
      PACKET_CLASS_NAMES[info.cls],
      `seed ${seed}, frame ${i}: ${Array.from(f, (b) => b.toString(16).padStart(2, "0")).join("")}`,
    );
    seen.add(got);
  }
  // The frames reach every class, so the comparison covered each way out.
  assert.equal(seen.size, PACKET_CLASS_NAMES.length, `seed ${seed}: classes seen ${[...seen]}`);
});

Deno.test("classifyEthernet refuses a frame that runs past its buffer or starts before it", () => {
  const f = buildFrame({ src: "198.51.100.7", dst: "10.0.0.2", proto: "udp" });
  assert.equal(PACKET_CLASS_NAMES[classifyEthernet(f, 0, f.length)], "udp");
  assert.equal(PACKET_CLASS_NAMES[classifyEthernet(f, 1, f.length)], "malformed");
  assert.equal(PACKET_CLASS_NAMES[classifyEthernet(f, -1, 20)], "malformed");
});

Deno.test("classifyFrame follows parseLinkFrame for raw IP and Linux cooked links", () => {
  const f = buildFrame({ src: "198.51.100.7", dst: "10.0.0.2", proto: "tcp", flags: 0x02 });
  const ip = f.subarray(14);
  const sll = new Uint8Array(16 + ip.length);
  sll.set([0, 0, 0, 1, 0, 6], 0);
  sll.set([0x08, 0x00], 14);
  sll.set(ip, 16);
  const info = new PacketInfo();
  for (
    const [link, frame] of [[LINKTYPE_ETHERNET, f], [LINKTYPE_RAW, ip], [
      LINKTYPE_LINUX_SLL,
      sll,
    ]] as const
  ) {
    parseLinkFrame(link, frame, 0, frame.length, info);
    assert.equal(classifyFrame(link, frame, 0, frame.length), info.cls, `link ${link}`);
    assert.equal(PACKET_CLASS_NAMES[info.cls], "tcp_syn", `link ${link}`);
  }
});
