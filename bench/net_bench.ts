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

import { NetGuard, parseConfig } from "../netguard/mod.ts";
import { benchFrame, type FrameKind } from "./net_frames.ts";
import { loadAverage, machineLine, median, medianRange } from "./stats.ts";
import { type Place, ROOT, type Run, setup, teardown } from "./net_rig.ts";
import { peerRx, peerTx, setPeerEnv, vmkitRx, vmkitTx } from "./net_runs.ts";

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
  setPeerEnv(modes[best] ?? {});
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
