/**
 * Shared pieces of the tests where netguard acts on real Machines: a
 * spinning guest, a guard that suspends on a UDP flood, a bounded hping3
 * flood, and the decisions a guard took.
 *
 * @module
 */

import {
  type DecisionEvent,
  NetGuard,
  type NetguardEvent,
  parseConfig,
} from "../../netguard/mod.ts";
import { defaultDeviceSpecs } from "../../vmm/devices/mod.ts";
import { Machine } from "../../vmm/machine.ts";
import type { Netns } from "../netguard/helpers.ts";
import { guest } from "./run_helpers.ts";

/** A started Machine running the `spin` guest (a tick line every ~200k iterations) into `serial`. */
export async function spinningMachine(serial: string, memMiB = 32): Promise<Machine> {
  const m = await Machine.create({
    memMiB,
    vcpus: 1,
    kernel: await Deno.readFile(guest("guest-pvh.elf")),
    cmdline: "mode=spin",
    devices: defaultDeviceSpecs({ serialOut: { path: serial }, serialIn: false, memMiB }),
  });
  await m.start();
  return m;
}

/**
 * A guard that suspends on more than 500 UDP frames/s (nothing else
 * enabled), holding 500 ms; `policy` overrides (e.g. a `drop` action).
 */
export function udpFloodGuard(
  policy: Record<string, unknown> = {},
): { guard: NetGuard; events: NetguardEvent[] } {
  const guard = new NetGuard(parseConfig({
    thresholds: { pps: 0, bps: 0, flows: 0, udpPps: 500 },
    detector: { adaptive: { enabled: false } },
    policy: { holdMs: 500, ...policy },
  }));
  const events: NetguardEvent[] = [];
  guard.onEvent((e) => events.push(e));
  return { guard, events };
}

/** The decisions among `events`, as `action:kind:targets`. */
export function decisions(events: NetguardEvent[]): string[] {
  return events
    .filter((e): e is DecisionEvent => e.event === "decision")
    .map((e) => `${e.action}:${e.kind}:${e.targets.join(",")}`);
}

/** A bounded UDP flood from `ns` at `ip`: `count` frames, ~5000/s, at most 20 s. */
export async function udpFlood(ns: Netns, ip: string, count = 3000): Promise<void> {
  const r = await ns.exec(
    ["timeout", "20", "hping3", "-2", "-p", "53", "-c", String(count), "-i", "u200", "-q", ip],
    true,
  );
  if (r.code !== 0 && r.code !== 1) throw new Error(`hping3 failed (${r.code}): ${r.stderr}`);
}
