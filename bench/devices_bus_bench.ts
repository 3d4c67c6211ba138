/**
 * Device bus dispatch cost: vmkit's `DeviceBus` (typed-array port table, shared
 * lock, devices over SharedArrayBuffers, safe from every vCPU Worker) against
 * the peer, the dispatch a single-threaded VMM would write: a `Map` from port
 * to device and a direct call, no lock. Both drive the same device instances.
 *
 * Prints ns per guest access as the median of 7 rounds with the range (the
 * sides alternate which goes first each round) and the load; ratio = peer ns
 * / vmkit ns (higher is better).
 *
 * @module
 */

import {
  createDevices,
  defaultDeviceSpecs,
  type Device,
  DeviceBus,
  type DeviceEnv,
} from "../vmm/devices/mod.ts";
import { machineLine, median, medianRange } from "./stats.ts";

const N = 1_000_000;
const ROUNDS = 7;

const env: DeviceEnv = { setIrq() {}, requestStop() {} };
const devices = createDevices(defaultDeviceSpecs({ serialOut: "none" }), env);
const bus = new DeviceBus(devices, DeviceBus.createLock());

/** The peer: port → device map, direct calls, no lock. */
const peer = new Map<number, Device>();
for (const d of devices) {
  for (const r of d.ports) for (let p = r.base; p < r.base + r.length; p++) peer.set(p, d);
}
function peerRead(port: number, size: number): number | undefined {
  const d = peer.get(port);
  return d === undefined ? undefined : d.read(port, size);
}
function peerWrite(port: number, size: number, value: number): boolean {
  const d = peer.get(port);
  if (d === undefined) return false;
  d.write(port, size, value);
  return true;
}

interface Case {
  name: string;
  vmkit: (i: number) => unknown;
  peer: (i: number) => unknown;
}

const cases: Case[] = [
  {
    name: "unclaimed port write (0x80)",
    vmkit: (i) => bus.pioWrite(0x80, 1, i),
    peer: (i) => peerWrite(0x80, 1, i),
  },
  {
    name: "UART scratch write (0x3ff)",
    vmkit: (i) => bus.pioWrite(0x3ff, 1, i),
    peer: (i) => peerWrite(0x3ff, 1, i),
  },
  {
    name: "UART LSR read (0x3fd)",
    vmkit: () => bus.pioRead(0x3fd, 1),
    peer: () => peerRead(0x3fd, 1),
  },
  {
    name: "UART THR write, sink none (0x3f8)",
    vmkit: (i) => bus.pioWrite(0x3f8, 1, 0x41 + (i & 15)),
    peer: (i) => peerWrite(0x3f8, 1, 0x41 + (i & 15)),
  },
  {
    name: "RTC index write (0x70)",
    vmkit: (i) => bus.pioWrite(0x70, 1, i & 0x3f),
    peer: (i) => peerWrite(0x70, 1, i & 0x3f),
  },
];

/** ns per call of `fn` over one pass of N calls. */
function nsPerOp(fn: (i: number) => unknown): number {
  const t0 = performance.now();
  for (let i = 0; i < N; i++) fn(i);
  return ((performance.now() - t0) * 1e6) / N;
}

const rows: string[][] = [];
for (const c of cases) {
  nsPerOp(c.vmkit); // warm both paths before measuring
  nsPerOp(c.peer);
  const v: number[] = [];
  const p: number[] = [];
  for (let r = 0; r < ROUNDS; r++) {
    if (r % 2 === 0) {
      v.push(nsPerOp(c.vmkit));
      p.push(nsPerOp(c.peer));
    } else {
      p.push(nsPerOp(c.peer));
      v.push(nsPerOp(c.vmkit));
    }
  }
  const fmt = (x: number) => x.toFixed(1);
  rows.push([
    `${c.name}, ns/access`,
    medianRange(v, fmt),
    medianRange(p, fmt),
    (median(p) / median(v)).toFixed(2),
  ]);
}
console.log(`machine: ${machineLine()}`);
console.log(
  "peer: in-process Map<port, Device> dispatch with direct calls and no lock " +
    `(same device instances), ${N} accesses per round, median [range] of ${ROUNDS} ` +
    "alternating rounds",
);
const header = ["metric", "vmkit", "peer", "ratio (peer/vmkit ns)"];
const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? "").length)));
const line = (r: string[]) => r.map((c, i) => c.padEnd(widths[i] ?? 0)).join(" | ");
console.log(line(header));
console.log(widths.map((w) => "-".repeat(w)).join("-|-"));
for (const r of rows) console.log(line(r));
console.log(`load after: ${machineLine()}`);
