import assert from "node:assert/strict";
import { Iovecs, Tap, TUN_F_CSUM, TUN_F_TSO4, VNET_HDR_LEN } from "../../native/tap.ts";
import { Netns, run, sleep } from "../netguard/helpers.ts";

/** A namespace with TAP `name` up at 10.91.0.1/24 and a static neighbour 10.91.0.2. */
async function tapInNamespace(tag: string): Promise<{ ns: Netns; tap: Tap; name: string }> {
  const ns = await Netns.create(tag);
  const name = `h8t${Deno.pid % 100000}${tag}`.slice(0, 15);
  try {
    // No IPv6 on the link: only the frames a test sends cross it.
    await ns.exec(["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"]);
    await ns.exec(["sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1"]);
    const tap = await Tap.open(name, { netns: ns.name });
    await ns.ip(`link set ${name} up`);
    await ns.ip(`addr add 10.91.0.1/24 dev ${name}`);
    await ns.ip(`neigh add 10.91.0.2 lladdr 02:00:00:00:91:02 dev ${name}`);
    return { ns, tap, name };
  } catch (err) {
    await ns.delete();
    throw err;
  }
}

/** Sends `count` pings of `size` payload bytes from the namespace to the "VM" (no reply expected). */
async function pings(ns: Netns, count: number, size: number): Promise<void> {
  await ns.exec([
    "ping",
    "-c",
    String(count),
    "-i",
    "0.01",
    "-s",
    String(size),
    "-W",
    "1",
    "10.91.0.2",
  ], true);
}

/** Reads what the TAP holds into the groups. */
function readAll(
  tap: Tap,
  iov: Iovecs,
  first: Int32Array<ArrayBuffer>,
  nchains: number,
  merge: boolean,
  out: Int32Array<ArrayBuffer>,
): number {
  return tap.readChains(iov, first, nchains, merge, 0, out, out.length >> 1);
}

async function rxPackets(ns: Netns, name: string): Promise<number> {
  const r = await ns.exec(["cat", `/sys/class/net/${name}/statistics/rx_packets`]);
  return Number(r.stdout.trim());
}

Deno.test("a TAP opened with a virtio-net header reads each frame behind a 12-byte header into one iovec group (root, netns)", async () => {
  const { ns, tap } = await tapInNamespace("a");
  try {
    tap.setOffload(0);
    await pings(ns, 3, 56);
    await sleep(50);
    const bufs = [0, 1, 2, 3].map(() => new Uint8Array(2048));
    const iov = new Iovecs(4);
    for (const b of bufs) iov.push(Iovecs.addressOf(b), b.length);
    const out = new Int32Array(8);
    const n = readAll(tap, iov, new Int32Array([0, 1, 2, 3, 4]), 4, false, out);
    assert.equal(n, 3, `read ${n} frames`);
    const icmp = [...Array(n).keys()].filter((i) => {
      const b = bufs[i] ?? new Uint8Array();
      return b[VNET_HDR_LEN + 12] === 0x08 && b[VNET_HDR_LEN + 13] === 0x00;
    });
    assert.equal(icmp.length, 3, "three IPv4 frames");
    for (const i of icmp) {
      const b = bufs[i] ?? new Uint8Array();
      assert.equal(out[2 * i], VNET_HDR_LEN + 14 + 20 + 8 + 56, "header + frame length");
      assert.equal(out[2 * i + 1], 1, "one group per frame without merging");
      assert.deepEqual([...b.subarray(0, VNET_HDR_LEN)], new Array(VNET_HDR_LEN).fill(0));
      assert.equal(b[VNET_HDR_LEN + 14 + 9], 1, "ICMP");
      assert.equal(b[VNET_HDR_LEN + 14 + 20], 8, "echo request");
    }
  } finally {
    tap.close();
    await ns.delete();
  }
});

Deno.test("with merging a frame runs on across small iovec groups; without it a frame too big for its group is reported cut short (root, netns)", async () => {
  const { ns, tap } = await tapInNamespace("b");
  try {
    await pings(ns, 1, 200);
    await sleep(50);
    // 16 groups of two 16-byte iovecs each (32 bytes per group).
    const mem = new Uint8Array(16 * 32);
    const base = Iovecs.addressOf(mem);
    const iov = new Iovecs(32);
    const first = new Int32Array(17);
    for (let g = 0; g < 16; g++) {
      first[g] = iov.count;
      iov.push(base + g * 32, 16);
      iov.push(base + g * 32 + 16, 16);
    }
    first[16] = iov.count;
    const out = new Int32Array(4);
    const len = VNET_HDR_LEN + 14 + 20 + 8 + 200; // 254
    assert.equal(tap.readChains(iov, first, 16, true, 0, out, 1), 1);
    assert.equal(out[0], len);
    assert.equal(out[1], Math.ceil(len / 32), "groups filled");
    assert.equal(mem[VNET_HDR_LEN + 14 + 20], 8, "the echo request is in place across groups");
    const body = mem.subarray(VNET_HDR_LEN + 14 + 20 + 8, len);
    // iputils ping fills byte i of its payload with i after a 16-byte timeval.
    for (let i = 16; i < 200; i++) assert.equal(body[i], i, `payload byte ${i}`);

    // A merged read needing more space than there is reads nothing.
    await pings(ns, 2, 200);
    await sleep(50);
    assert.equal(tap.readChains(iov, first, 16, true, 16 * 32 + 1, out, 1), 0);
    // Without merging, one 32-byte group cannot hold it: cut short, no group used.
    assert.equal(tap.readChains(iov, first, 16, false, 0, out, 1), 1);
    assert.equal(out[0], len);
    assert.equal(out[1], 0);
    // A merged read needing exactly what the frame takes fills exactly that many groups.
    assert.equal(tap.readChains(iov, first, 16, true, len, out, 1), 1);
    assert.deepEqual([out[0], out[1]], [len, 8]);
  } finally {
    tap.close();
    await ns.delete();
  }
});

Deno.test("frames written from gathered iovecs reach the namespace; a frame with a bad virtio-net header fails alone (root, netns)", async () => {
  const { ns, tap, name } = await tapInNamespace("c");
  try {
    tap.setOffload(TUN_F_CSUM | TUN_F_TSO4);
    const before = await rxPackets(ns, name);
    // An Ethernet broadcast frame with a made-up ethertype, behind a zero header.
    const frame = new Uint8Array(VNET_HDR_LEN + 60);
    frame.fill(0xff, VNET_HDR_LEN, VNET_HDR_LEN + 6);
    frame.set([0x02, 0, 0, 0, 0x91, 0x02], VNET_HDR_LEN + 6);
    frame.set([0x88, 0xb5], VNET_HDR_LEN + 12); // IEEE local experimental
    const bad = frame.slice();
    bad[1] = 0x7f; // gso_type nobody knows
    const a = Iovecs.addressOf(frame);
    const iov = new Iovecs(8);
    iov.push(a, frame.length); // frame 0: one iovec
    iov.push(a, VNET_HDR_LEN); // frame 1: header, then the frame in two pieces
    iov.push(a + VNET_HDR_LEN, 20);
    iov.push(a + VNET_HDR_LEN + 20, 40);
    iov.push(Iovecs.addressOf(bad), bad.length); // frame 2: bad header
    iov.push(a, frame.length); // frame 3
    const res = new Int32Array(4);
    assert.equal(tap.writeFrames(iov, new Int32Array([1, 3, 1, 1]), 4, res), 4);
    assert.equal(res[0], frame.length);
    assert.equal(res[1], frame.length);
    assert.ok((res[2] ?? 0) < 0, `bad header accepted: ${res[2]}`);
    assert.equal(res[3], frame.length);
    await sleep(20);
    assert.equal((await rxPackets(ns, name)) - before, 3);
  } finally {
    tap.close();
    await ns.delete();
  }
});

Deno.test("opening a TAP in a namespace that does not exist names the failure (root)", async () => {
  await assert.rejects(
    () => Tap.open("h8nonexist0", { netns: `h8-missing-${Deno.pid}` }),
    (e: Error) => e.name === "TapError" && /open failed: No such file/.test(e.message),
  );
  // The helper itself is usable: run() of a failing command reports it.
  await assert.rejects(() => run("false", []));
});
