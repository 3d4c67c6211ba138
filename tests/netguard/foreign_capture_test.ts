/**
 * Captures written by other tools, of traffic in a namespace of the test's
 * own: tcpdump on `lo` (Ethernet, micro- and nanosecond pcap) and on `any`
 * (Linux cooked v1 and v2), editcap's pcapng, mergecap's pcapng with several
 * interfaces of different link types, editcap's raw-IP and text2pcap's BSD
 * loopback (`DLT_NULL`, as macOS writes `lo0`). `netguard report` and
 * `netguard watch --pcap` must see the same traffic the same way in each.
 */

import assert from "node:assert/strict";
import { vmkitCli } from "../vmkit_cli.ts";
import { Netns, run } from "./helpers.ts";

interface Report {
  format: string;
  packets: number;
  bytes: number;
  classes: Record<string, number>;
  malformed: Record<string, number>;
}

async function report(path: string): Promise<Report> {
  const r = await vmkitCli(["netguard", "report", path, "--output", "json"]);
  assert.equal(r.code, 0, `netguard report ${path}: ${r.stderr}`);
  return JSON.parse(r.stdout) as Report;
}

/** The alert kinds `watch --pcap` raises with `config`, in order. */
async function alertKinds(path: string, config: string): Promise<string[]> {
  const r = await vmkitCli([
    "netguard",
    "watch",
    "--pcap",
    path,
    "--config",
    config,
    "--output",
    "json",
  ]);
  assert.equal(r.code, 0, `netguard watch --pcap ${path}: ${r.stderr}`);
  return r.stdout.split("\n").filter((l) => l !== "").map((l) => JSON.parse(l))
    .filter((e) => e.event === "alert").map((e) => `${e.direction}:${e.kind}`);
}

/** Every record of a little-endian microsecond pcap (a reader of the test's own). */
function pcapRecords(bytes: Uint8Array): Array<{ sec: number; usec: number; data: Uint8Array }> {
  const v = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  assert.equal(v.getUint32(0, true), 0xa1b2c3d4, "a microsecond little-endian pcap");
  const out: Array<{ sec: number; usec: number; data: Uint8Array }> = [];
  for (let o = 24; o + 16 <= bytes.length;) {
    const cap = v.getUint32(o + 8, true);
    out.push({
      sec: v.getUint32(o, true),
      usec: v.getUint32(o + 4, true),
      data: bytes.subarray(o + 16, o + 16 + cap),
    });
    o += 16 + cap;
  }
  return out;
}

Deno.test("netguard reads tcpdump, editcap, mergecap and text2pcap captures of the same traffic alike (root, netns)", async () => {
  const dir = await Deno.makeTempDir({ prefix: "vmkit-foreign-cap-" });
  const ns = await Netns.create("fc");
  const f = (name: string) => `${dir}/${name}`;
  try {
    await ns.ip("link add fva type veth peer name fvb");
    await ns.ip("addr add 10.91.0.1/24 dev fva");
    await ns.ip("link set fva up");
    await ns.ip("link set fvb up");
    const captures: Array<[string, string[]]> = [
      // (The unanswered ARP's ICMP host-unreachable also crosses lo: filtered out everywhere.)
      ["lo.pcap", ["-i", "lo", "host", "127.0.0.1"]],
      ["lo_ns.pcap", ["-i", "lo", "--time-stamp-precision=nano", "host", "127.0.0.1"]],
      ["any2.pcap", ["-i", "any", "-y", "LINUX_SLL2", "host", "127.0.0.1"]],
      ["any1.pcap", ["-i", "any", "-y", "LINUX_SLL", "host", "127.0.0.1"]],
      ["arp.pcap", ["-i", "any", "arp"]],
    ];
    const dumps = captures.map(([name, args]) =>
      // Immediate mode: no packet waits in a ring block that an interrupt would throw away;
      // a 32 MiB buffer each, so the kernel drops nothing while five capture one flood.
      ns.spawn([
        "tcpdump",
        "-Z",
        "root",
        "-U",
        "--immediate-mode",
        "-n",
        "-B",
        "32768",
        "-w",
        f(name),
        ...args,
      ])
    );
    // tcpdump says "listening on" once its socket is open.
    const dec = new TextDecoder();
    const readers = dumps.map((d) => d.stderr.getReader());
    for (const r of readers) {
      let seen = "";
      while (!seen.includes("listening on")) {
        const { value, done } = await r.read();
        if (done) throw new Error(`tcpdump ended: ${seen}`);
        seen += dec.decode(value);
      }
    }
    try {
      await ns.exec(["ping", "-q", "-c", "20", "-i", "0.01", "127.0.0.1"]);
      await ns.exec(["ping", "-q", "-c", "2", "-i", "0.2", "-W", "1", "10.91.0.2"], true); // ARP
      await ns.exec(
        ["hping3", "-q", "-S", "-p", "80", "-i", "u700", "-c", "2000", "127.0.0.1"],
        true,
      );
      // tcpdump drops what it has not read yet when interrupted: wait until the files stop
      // growing, for three looks in a row (a tcpdump descheduled on a busy host looks still).
      let sizes = "";
      let still = 0;
      for (let i = 0; i < 100 && still < 3; i++) {
        await new Promise((res) => setTimeout(res, 300));
        const now = (await Promise.all(captures.map(([n]) => Deno.stat(f(n))))).map((s) => s.size)
          .join();
        still = now === sizes ? still + 1 : 0;
        sizes = now;
      }
    } finally {
      for (const d of dumps) d.kill("SIGINT");
    }
    for (const [i, d] of dumps.entries()) {
      const r = readers[i];
      let tail = "";
      for (;;) {
        const chunk = await r?.read();
        if (chunk === undefined || chunk.done) break;
        tail += dec.decode(chunk.value);
      }
      await d.stdout.cancel();
      await d.status;
      assert.match(tail, /\b0 packets dropped by kernel/, `${captures[i]?.[0]}: ${tail}`);
    }
    await run("editcap", ["-F", "pcapng", f("lo.pcap"), f("lo.pcapng")]);
    await run("editcap", ["-F", "pcapng", f("lo_ns.pcap"), f("lo_ns.pcapng")]);
    await run("editcap", ["-F", "pcap", "-C", "14", "-T", "rawip", f("lo.pcap"), f("raw.pcap")]);
    await run("mergecap", [
      "-F",
      "pcapng",
      "-w",
      f("merged.pcapng"),
      f("lo.pcap"),
      f("any2.pcap"),
      f("arp.pcap"),
    ]);
    // BSD loopback: each IP packet behind a 4-byte AF_INET in host (little-endian) order.
    const hex: string[] = [];
    for (const rec of pcapRecords(await Deno.readFile(f("raw.pcap")))) {
      hex.push(`${rec.sec}.${String(rec.usec).padStart(6, "0")}`); // text2pcap -t "%s.%f"
      const frame = [2, 0, 0, 0, ...rec.data];
      for (let o = 0; o < frame.length; o += 16) {
        const row = frame.slice(o, o + 16).map((b) => b.toString(16).padStart(2, "0"));
        hex.push(`${o.toString(16).padStart(6, "0")} ${row.join(" ")}`);
      }
    }
    await Deno.writeTextFile(f("null.txt"), hex.join("\n") + "\n");
    await run("text2pcap", ["-q", "-l", "0", "-t", "%s.%f", f("null.txt"), f("null.pcap")]);

    const lo = await report(f("lo.pcap"));
    assert.ok(lo.packets >= 40, `the capture holds the traffic (${lo.packets} packets)`);
    assert.deepEqual(lo.malformed, {});
    // The same frames in every container and link type count the same.
    for (
      const name of [
        "lo_ns.pcap",
        "lo.pcapng",
        "lo_ns.pcapng",
        "any2.pcap",
        "any1.pcap",
        "null.pcap",
      ]
    ) {
      const r = await report(f(name));
      assert.equal(r.packets, lo.packets, `${name}: packets`);
      assert.deepEqual(r.classes, lo.classes, `${name}: classes`);
      assert.deepEqual(r.malformed, {}, `${name}: nothing malformed`);
      assert.equal(r.bytes, lo.bytes, `${name}: wire bytes as on the Ethernet-framed loopback`);
    }
    const raw = await report(f("raw.pcap"));
    // editcap -C cuts the captured bytes but keeps each record's original (wire) length.
    assert.equal(raw.bytes, lo.bytes, "raw IP keeps the recorded wire lengths");
    assert.equal(raw.packets, lo.packets);
    assert.deepEqual(raw.classes, lo.classes);
    // ARP through the cooked header is non-IP traffic, not malformed IP.
    const arp = await report(f("arp.pcap"));
    assert.ok(arp.packets >= 1);
    assert.deepEqual(arp.classes, { non_ip: arp.packets });
    assert.deepEqual(arp.malformed, {});
    const merged = await report(f("merged.pcapng"));
    assert.equal(merged.format, "pcapng");
    assert.equal(merged.packets, 2 * lo.packets + arp.packets);
    assert.deepEqual(merged.malformed, {});
    // Detection does not depend on how the traffic was captured. The flood is kept slow (about
    // 1400 SYN/s, so five captures on a busy host drop nothing): thresholds scaled down to it.
    const config = f("netguard.json");
    await Deno.writeTextFile(
      config,
      JSON.stringify({
        thresholds: { synPps: 400, rstPps: 400, flows: 400, pps: 1500, bps: 500_000 },
      }),
    );
    const kinds = await alertKinds(f("lo.pcap"), config);
    assert.ok(kinds.includes("inbound:syn_flood"), `the SYN flood is seen: ${kinds}`);
    for (const name of ["lo_ns.pcapng", "any2.pcap", "any1.pcap", "null.pcap"]) {
      assert.deepEqual(await alertKinds(f(name), config), kinds, `${name}: alerts`);
    }
  } finally {
    await ns.delete();
    if (Deno.env.get("KEEP") === undefined) await Deno.remove(dir, { recursive: true });
    else console.log(dir);
  }
});
