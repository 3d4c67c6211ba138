/**
 * virtio-net over a TAP to a peer namespace: vmkit's device path against a
 * small C program (`net_tap_peer.c`) doing the same work on the same TAP.
 *
 * Transmit (guest → TAP): a bench driver playing the guest keeps the
 * transmit queue full of the same frames the peer writes (64-byte frames,
 * 1514-byte frames, 63766-byte TSO frames), rings the queue's ioeventfd and
 * recycles chains as they come back used; the peer write(2)s the frames to
 * the TAP in a loop. Both sides' frames are dropped by the namespace right
 * after routing (a non-local address, forwarding off).
 *
 * Receive (TAP → guest): one injector (`net_tap_peer inject`, AF_PACKET
 * sendmmsg in the namespace) sends the frames out of the TAP; vmkit's device
 * puts them in receive buffers the bench driver recycles, the peer read(2)s
 * them. Rate = frames received / (last arrival − first arrival).
 *
 * Then what netguard costs the device path: the transmit runs again with
 * netguard watching the TAP through AF_PACKET (`vmkit netguard watch --iface`
 * in its own process, as the VMM's main thread would), and the cost of
 * feeding each frame to netguard inline is measured per frame.
 *
 * Sides alternate, each run is timed the same way, the median of N runs is
 * reported with the range, and the machine load is printed.
 *
 * Usage: `deno run -A bench/net_bench.ts [--runs N] [--quick] [--only tx|rx|netguard]
 * [--kind small|bulk|tso]`
 * (root: it creates a network namespace and a TAP, removed at the end).
 *
 * @module
 */

import { loadShim } from "../native/ffi.ts";
import { FdWaiter } from "../native/io_ffi.ts";
import { NetGuard, parseConfig } from "../netguard/mod.ts";
import { MmioAllocator } from "../vmm/devices/mmio_allocator.ts";
import { VirtioDeviceHost } from "../vmm/devices/virtio/host.ts";
import { Backend, W } from "../vmm/devices/virtio/layout.ts";
import { netDevice, NetStat, type NetStats } from "../vmm/devices/virtio/net_format.ts";
import { HostMemory } from "../vmm/memory.ts";
import { HostDriver, queueLayout } from "../tests/vmm/virtio_driver.ts";
import { benchFrame, FRAME_LEN, frameFile, type FrameKind } from "./net_frames.ts";
import { loadAverage, machineLine, median, medianRange } from "./stats.ts";

const ROOT = new URL("../", import.meta.url).pathname;
const args = Deno.args;
const RUNS = Number(args[args.indexOf("--runs") + 1] ?? 0) || (args.includes("--quick") ? 3 : 5);
const QUICK = args.includes("--quick");
const ONLY = args.includes("--only") ? args[args.indexOf("--only") + 1] : undefined;
const KIND = args.includes("--kind") ? args[args.indexOf("--kind") + 1] : undefined;
/** Whether section `s` (tx, rx, netguard) runs (`--only S` picks one). */
const want = (s: string) => ONLY === undefined || ONLY === s;
/** Whether frames of `kind` are measured (`--kind K` picks one). */
const wantKind = (kind: FrameKind) => KIND === undefined || KIND === kind;
const COUNT: Record<FrameKind, number> = QUICK
  ? { small: 50_000, bulk: 50_000, tso: 5_000 }
  : { small: 200_000, bulk: 200_000, tso: 20_000 };
const QSIZE = 256;
const TX_RING = 0x10000;
const RX_RING = 0x20000;
const BUFS = 0x100000;
const F_MAC = 1n << 5n, F_CSUM = 1n, F_HOST_TSO4 = 1n << 11n, F_MRG = 1n << 15n;
const F_VERSION_1 = 1n << 32n;

interface Run {
  frames: number;
  bytes: number;
  ms: number;
}

async function sh(cmd: string, a: string[], allowFail = false): Promise<string> {
  const out = await new Deno.Command(cmd, { args: a, stdout: "piped", stderr: "piped" }).output();
  const text = new TextDecoder().decode(out.stdout);
  if (!out.success && !allowFail) {
    throw new Error(`${cmd} ${a.join(" ")}: ${new TextDecoder().decode(out.stderr)}`);
  }
  return text;
}

async function buildPeer(dir: string): Promise<string> {
  const out = `${dir}/net_tap_peer`;
  await sh("cc", ["-O2", "-Wall", "-Wextra", "-Werror", "-o", out, `${ROOT}bench/net_tap_peer.c`]);
  return out;
}

/** The namespace and its persistent TAP (so vmkit and the peer open the same device in turn). */
interface Place {
  ns: string;
  tap: string;
  tapMac: number[];
  dir: string;
  peer: string;
}

async function setup(): Promise<Place> {
  const ns = `h8bench${Deno.pid}`;
  const tap = `h8bt${Deno.pid % 100000}`;
  await sh("ip", ["netns", "add", ns]);
  const ip = (s: string) => sh("ip", ["-n", ns, ...s.split(" ")]);
  await ip("link set lo up");
  await sh("ip", ["netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"]);
  await sh("ip", ["netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1"]);
  await ip(`tuntap add dev ${tap} mode tap vnet_hdr`);
  await ip(`link set ${tap} up`);
  await ip(`addr add 10.93.0.1/24 dev ${tap}`);
  const link = await sh("ip", ["-n", ns, "-br", "link", "show", tap]);
  const mac = (link.trim().split(/\s+/)[2] ?? "").split(":").map((h) => parseInt(h, 16));
  const dir = await Deno.makeTempDir({ prefix: "h8-netbench-" });
  return { ns, tap, tapMac: mac, dir, peer: await buildPeer(dir) };
}

async function teardown(p: Place): Promise<void> {
  await sh("ip", ["netns", "del", p.ns], true);
  await Deno.remove(p.dir, { recursive: true });
}

const GUEST_MAC_TEXT = "02:00:00:00:93:02";

/** A vmkit net device on the place's TAP and a bench driver for it. */
async function device(p: Place, mem: HostMemory, features: bigint) {
  const dev = netDevice({ id: "eth0", tap: p.tap, netns: p.ns, mac: GUEST_MAC_TEXT });
  const host = await VirtioDeviceHost.start(
    dev.device,
    mem.regions,
    new MmioAllocator().allocate("eth0"),
  );
  const drv = new HostDriver(mem, host);
  drv.negotiate(F_VERSION_1 | F_MAC | features);
  return { host, drv, stats: dev.stats };
}

async function active(host: VirtioDeviceHost): Promise<void> {
  const end = Date.now() + 20_000;
  while (Atomics.load(host.state, W.BACKEND) !== Backend.ACTIVE) {
    if (Date.now() > end) {
      throw new Error(
        `net device did not activate: backend ${Atomics.load(host.state, W.BACKEND)}, ` +
          `status ${Atomics.load(host.state, W.STATUS)}, ${host.guestErrors.join("; ")}`,
      );
    }
    await new Promise((r) => setTimeout(r, 5));
  }
}

function ringViews(mem: HostMemory, l: { avail: number; used: number }) {
  const a = mem.view(l.avail, 6 + 2 * QSIZE);
  const u = mem.view(l.used, 6 + 8 * QSIZE);
  return {
    avail: new DataView(a.buffer, a.byteOffset, a.byteLength),
    used: new DataView(u.buffer, u.byteOffset, u.byteLength),
  };
}

async function vmkitTx(
  p: Place,
  kind: FrameKind,
  count: number,
): Promise<Run & { stats: NetStats }> {
  await loadShim();
  const mem = HostMemory.create(64 << 20);
  const features = kind === "tso" ? F_CSUM | F_HOST_TSO4 : 0n;
  const { host, drv, stats } = await device(p, mem, features);
  try {
    const l = queueLayout(TX_RING, QSIZE);
    drv.setupQueue(1, l);
    drv.driverOk();
    const stride = Math.ceil((FRAME_LEN[kind] + 12) / 64) * 64;
    const frames = Array.from({ length: 16 }, (_, i) => benchFrame(kind, p.tapMac, i));
    frames.forEach((f, i) => mem.write(BUFS + i * stride, f));
    for (let i = 0; i < QSIZE; i++) {
      drv.writeDesc(i, BUFS + (i % 16) * stride, frames[i % 16]?.length ?? 0, 0, 0);
    }
    await active(host);
    const { avail, used } = ringViews(mem, l);
    const irq = new FdWaiter([host.irq.fd], [true]);
    const notify = host.notify[1];
    if (notify === undefined) throw new Error("no transmit notify eventfd");
    let availIdx = 0, lastUsed = 0, published = 0, done = 0;
    const t0 = performance.now();
    for (; published < Math.min(QSIZE, count); published++) {
      avail.setUint16(4 + 2 * (availIdx & (QSIZE - 1)), published, true);
      availIdx = (availIdx + 1) & 0xffff;
    }
    avail.setUint16(2, availIdx, true);
    notify.signal();
    while (done < count) {
      const u = used.getUint16(2, true);
      const n = (u - lastUsed) & 0xffff;
      if (n === 0) {
        irq.waitSync(100);
        continue;
      }
      for (let k = 0; k < n; k++) {
        const id = used.getUint32(4 + 8 * ((lastUsed + k) & (QSIZE - 1)), true);
        if (published < count) {
          avail.setUint16(4 + 2 * (availIdx & (QSIZE - 1)), id, true);
          availIdx = (availIdx + 1) & 0xffff;
          published++;
        }
      }
      lastUsed = u;
      done += n;
      avail.setUint16(2, availIdx, true);
      notify.signal();
    }
    const ms = performance.now() - t0;
    const bad = stats.get(NetStat.TX_ERRORS) + stats.get(NetStat.TX_BAD);
    if (bad > 0) throw new Error(`vmkit tx: ${bad} frames failed`);
    return { frames: stats.get(NetStat.TX_FRAMES), bytes: stats.get(NetStat.TX_BYTES), ms, stats };
  } finally {
    await host.close();
    mem.close();
  }
}

/** The peer's best write mode here (blocking or O_NONBLOCK), chosen by {@link calibratePeer}. */
let peerEnv: Record<string, string> = {};

async function peerTx(
  p: Place,
  kind: FrameKind,
  count: number,
  env: Record<string, string> = peerEnv,
): Promise<Run> {
  const file = `${p.dir}/tx-${kind}`;
  const frames = Array.from({ length: 16 }, (_, i) => benchFrame(kind, p.tapMac, i));
  await Deno.writeFile(file, frameFile(frames));
  const r = await new Deno.Command(p.peer, {
    args: ["write", p.ns, p.tap, file, String(count)],
    env,
    stdout: "piped",
    stderr: "piped",
  }).output();
  if (!r.success) throw new Error(`peer: ${new TextDecoder().decode(r.stderr)}`);
  const out = JSON.parse(new TextDecoder().decode(r.stdout));
  if (out.errors > 0) throw new Error(`peer tx: ${out.errors} errors`);
  return { frames: out.frames, bytes: out.bytes - 12 * out.frames, ms: out.ns / 1e6 };
}

function injector(p: Place, count: number, file: string): Deno.ChildProcess {
  return new Deno.Command(p.peer, {
    args: ["inject", p.ns, p.tap, file, String(count)],
    stdout: "piped",
    stderr: "piped",
  }).spawn();
}

async function rxFile(p: Place, kind: FrameKind): Promise<string> {
  const file = `${p.dir}/rx-${kind}`;
  const mac = GUEST_MAC_TEXT.split(":").map((h) => parseInt(h, 16));
  // On the wire, without the virtio-net header.
  const frames = Array.from({ length: 16 }, (_, i) => benchFrame(kind, mac, i).subarray(12));
  await Deno.writeFile(file, frameFile(frames));
  return file;
}

async function vmkitRx(p: Place, kind: FrameKind, count: number): Promise<Run> {
  await loadShim();
  const mem = HostMemory.create(64 << 20);
  const { host, drv, stats } = await device(p, mem, F_MRG);
  const file = await rxFile(p, kind);
  try {
    const l = queueLayout(RX_RING, QSIZE);
    drv.setupQueue(0, l);
    drv.setupQueue(1, queueLayout(TX_RING, QSIZE));
    drv.driverOk();
    drv.use(0);
    for (let i = 0; i < QSIZE; i++) drv.writeDesc(i, BUFS + i * 2048, 2048, 2, 0);
    await active(host);
    const { avail, used } = ringViews(mem, l);
    const irq = new FdWaiter([host.irq.fd], [true]);
    const notify = host.notify[0];
    if (notify === undefined) throw new Error("no receive notify eventfd");
    let availIdx = 0, lastUsed = 0, got = 0, first = 0, last = 0;
    for (let i = 0; i < QSIZE; i++) {
      avail.setUint16(4 + 2 * i, i, true);
      availIdx++;
    }
    avail.setUint16(2, availIdx, true);
    notify.signal();
    const child = injector(p, count, file);
    const status = child.output();
    let idleSince = performance.now();
    while (got < count) {
      const u = used.getUint16(2, true);
      const n = (u - lastUsed) & 0xffff;
      if (n === 0) {
        if (got > 0 && performance.now() - idleSince > 1000) break;
        if (got === 0 && performance.now() - idleSince > 5000) break;
        irq.waitSync(20);
        continue;
      }
      const now = performance.now();
      if (got === 0) first = now;
      last = now;
      idleSince = now;
      for (let k = 0; k < n; k++) {
        const id = used.getUint32(4 + 8 * ((lastUsed + k) & (QSIZE - 1)), true);
        avail.setUint16(4 + 2 * (availIdx & (QSIZE - 1)), id, true);
        availIdx = (availIdx + 1) & 0xffff;
      }
      got += n; // 2048-byte buffers: one per frame
      lastUsed = u;
      avail.setUint16(2, availIdx, true);
      notify.signal();
    }
    const inj = await status;
    if (!inj.success) throw new Error(`injector: ${new TextDecoder().decode(inj.stderr)}`);
    return { frames: got, bytes: stats.get(NetStat.RX_BYTES), ms: last - first };
  } finally {
    await host.close();
    mem.close();
  }
}

async function peerRx(p: Place, kind: FrameKind, count: number): Promise<Run> {
  const file = await rxFile(p, kind);
  const reader = new Deno.Command(p.peer, {
    args: ["read", p.ns, p.tap, String(count)],
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  await new Promise((r) => setTimeout(r, 300)); // the reader has the TAP open
  const inj = await injector(p, count, file).output();
  if (!inj.success) throw new Error(new TextDecoder().decode(inj.stderr));
  const out = JSON.parse(new TextDecoder().decode((await reader.output()).stdout));
  return { frames: out.frames, bytes: out.bytes - 12 * out.frames, ms: out.ns / 1e6 };
}

interface Row {
  metric: string;
  vmkit: number[];
  peer: number[];
  unit: string;
}

function fmt(x: number): string {
  return x >= 100 ? x.toFixed(0) : x >= 10 ? x.toFixed(1) : x.toFixed(2);
}

function print(rows: Row[]): void {
  console.log(
    `${"metric".padEnd(34)} ${"vmkit (median [range])".padEnd(30)} ${
      "peer (median [range])".padEnd(30)
    } ratio`,
  );
  for (const r of rows) {
    const v = median(r.vmkit), p = median(r.peer);
    const span = (xs: number[]) => medianRange(xs, fmt);
    console.log(
      `${`${r.metric} (${r.unit})`.padEnd(34)} ${span(r.vmkit).padEnd(30)} ${
        span(r.peer).padEnd(30)
      } ${(v / p).toFixed(2)}`,
    );
  }
}

const pps = (r: Run) => r.frames / (r.ms / 1000) / 1000; // kpps
const gbit = (r: Run) => (r.bytes * 8) / (r.ms / 1000) / 1e9;

/**
 * Tries the peer's write modes (blocking, O_NONBLOCK) three times each on
 * 64-byte frames, alternating, and keeps the faster for every peer run.
 */
async function calibratePeer(p: Place): Promise<string> {
  const modes: Record<string, Record<string, string>> = {
    blocking: {},
    nonblocking: { VMKIT_PEER_NONBLOCK: "1" },
  };
  const got: Record<string, number[]> = { blocking: [], nonblocking: [] };
  for (let i = 0; i < 3; i++) {
    for (const m of i % 2 === 0 ? ["blocking", "nonblocking"] : ["nonblocking", "blocking"]) {
      got[m]?.push(pps(await peerTx(p, "small", COUNT.small, modes[m])));
    }
  }
  const b = median(got.blocking ?? []), n = median(got.nonblocking ?? []);
  const best = n > b ? "nonblocking" : "blocking";
  peerEnv = modes[best] ?? {};
  return `peer write mode: ${best} (blocking ${fmt(b)} kpps, O_NONBLOCK ${
    fmt(n)
  } kpps, 64-byte frames, median of 3)`;
}

/** Runs the two sides `RUNS` times each, alternating which goes first. */
async function alternate(
  v: () => Promise<Run>,
  p: () => Promise<Run>,
): Promise<{ v: Run[]; p: Run[] }> {
  const out = { v: [] as Run[], p: [] as Run[] };
  for (let i = 0; i < RUNS; i++) {
    if (i % 2 === 0) {
      out.v.push(await v());
      out.p.push(await p());
    } else {
      out.p.push(await p());
      out.v.push(await v());
    }
  }
  return out;
}

/** netguard watching the TAP from its own process (as the VMM's main thread would). */
async function withWatcher<T>(p: Place, f: () => Promise<T>): Promise<T> {
  const w = new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "-A",
      `${ROOT}cli/main.ts`,
      "netguard",
      "watch",
      "--iface",
      p.tap,
      "--netns",
      p.ns,
      "--stats-interval",
      "0",
      "--duration",
      "600000",
    ],
    stdout: "null",
    stderr: "null",
  }).spawn();
  await new Promise((r) => setTimeout(r, 2500)); // Deno up, socket bound
  try {
    return await f();
  } finally {
    w.kill("SIGTERM");
    await w.status;
  }
}

/** Nanoseconds netguard's frame tap takes per frame of `kind` (what feeding it inline would add). */
function ingestNs(kind: FrameKind): number {
  const guard = new NetGuard(parseConfig({ detector: { adaptive: { enabled: false } } }));
  const frames = Array.from({ length: 16 }, (_, i) => benchFrame(kind, [2, 0, 0, 0, 0, 1], i));
  const n = 500_000;
  let t = Date.now();
  for (let i = 0; i < 20_000; i++) {
    const f = frames[i & 15] ?? new Uint8Array();
    guard.ingest("vm", "outbound", "tap0", f, 12, f.length - 12, f.length - 12, t, 1);
  }
  const t0 = performance.now();
  for (let i = 0; i < n; i++) {
    const f = frames[i & 15] ?? new Uint8Array();
    if ((i & 1023) === 0) t = Date.now();
    guard.ingest("vm", "outbound", "tap0", f, 12, f.length - 12, f.length - 12, t, 1);
  }
  return ((performance.now() - t0) * 1e6) / n;
}

if (import.meta.main) {
  const place = await setup();
  console.log(
    `net bench: ${machineLine()} (before), runs ${RUNS}`,
  );
  console.log(
    `TAP ${place.tap} in netns ${place.ns}; frames to 10.93.0.99 (dropped after routing)`,
  );
  console.log(
    `peer: ${place.peer} (write(2)/read(2) per frame, IFF_VNET_HDR, O_NONBLOCK+poll for read)`,
  );
  const rows: Row[] = [];
  try {
    if (want("tx") || want("netguard")) console.log(await calibratePeer(place));
    for (const kind of (want("tx") ? (["small", "bulk", "tso"] as const).filter(wantKind) : [])) {
      const r = await alternate(
        () => vmkitTx(place, kind, COUNT[kind]),
        () => peerTx(place, kind, COUNT[kind]),
      );
      rows.push({
        metric: `tx ${kind} frames`,
        vmkit: r.v.map(pps),
        peer: r.p.map(pps),
        unit: "kpps",
      });
      if (kind !== "small") {
        rows.push({
          metric: `tx ${kind} bandwidth`,
          vmkit: r.v.map(gbit),
          peer: r.p.map(gbit),
          unit: "Gbit/s",
        });
      }
    }
    for (const kind of (want("rx") ? (["small", "bulk"] as const).filter(wantKind) : [])) {
      const r = await alternate(
        () => vmkitRx(place, kind, COUNT[kind]),
        () => peerRx(place, kind, COUNT[kind]),
      );
      rows.push({
        metric: `rx ${kind} frames`,
        vmkit: r.v.map(pps),
        peer: r.p.map(pps),
        unit: "kpps",
      });
      if (kind === "bulk") {
        rows.push({
          metric: `rx ${kind} bandwidth`,
          vmkit: r.v.map(gbit),
          peer: r.p.map(gbit),
          unit: "Gbit/s",
        });
      }
      const lost = r.v.map((x) => 1 - x.frames / COUNT[kind]);
      const lostP = r.p.map((x) => 1 - x.frames / COUNT[kind]);
      console.log(
        `rx ${kind}: frames lost at the TAP (injector faster than the reader): vmkit ${
          (median(lost) * 100).toFixed(1)
        }%, peer ${(median(lostP) * 100).toFixed(1)}%`,
      );
    }
    print(rows);
    console.log(`load after ${loadAverage()}`);

    // What netguard costs the device path.
    if (want("netguard")) {
      console.log("\nnetguard on the device path (transmit of 64-byte frames):");
      const plain: number[] = [], watched: number[] = [];
      const peerPlain: number[] = [], peerWatched: number[] = [];
      for (let i = 0; i < RUNS; i++) {
        plain.push(pps(await vmkitTx(place, "small", COUNT.small)));
        peerPlain.push(pps(await peerTx(place, "small", COUNT.small)));
        await withWatcher(place, async () => {
          watched.push(pps(await vmkitTx(place, "small", COUNT.small)));
          peerWatched.push(pps(await peerTx(place, "small", COUNT.small)));
        });
      }
      const cost = (a: number[], b: number[]) => ((1 - median(b) / median(a)) * 100).toFixed(0);
      console.log(
        `  vmkit: ${fmt(median(plain))} kpps alone, ${fmt(median(watched))} kpps with netguard ` +
          `reading the TAP through AF_PACKET in another process (${cost(plain, watched)}% less)`,
      );
      console.log(
        `  peer:  ${fmt(median(peerPlain))} kpps alone, ${fmt(median(peerWatched))} kpps ` +
          `with the same watcher (${cost(peerPlain, peerWatched)}% less)`,
      );
      const perFrame = 1000 / median(plain); // µs per frame
      for (const kind of ["small", "bulk"] as const) {
        const ns = ingestNs(kind);
        console.log(
          `  netguard fed inline by the device, ${kind} frames: ${ns.toFixed(0)} ns/frame ` +
            `(${((ns / 1000 / perFrame) * 100).toFixed(0)}% of vmkit's ${perFrame.toFixed(2)} µs ` +
            `per 64-byte frame)`,
        );
      }
    }
    console.log(`load at end ${loadAverage()}`);
  } finally {
    await teardown(place);
  }
}
