/**
 * Guests with their own virtio-net driver (`mode=net` of the 64-bit guest)
 * on TAPs in a test namespace, for the net tests that boot VMs: boot one,
 * ping it, read its receive counters over serial.
 *
 * @module
 */

import assert from "node:assert/strict";
import { defaultDeviceSpecs } from "../../vmm/devices/mod.ts";
import type { Serial16550 } from "../../vmm/devices/serial.ts";
import { Machine } from "../../vmm/machine.ts";
import { Netns, sleep } from "../netguard/helpers.ts";
import { guest } from "./run_helpers.ts";

let tapCounter = 0;

/** A booted guest running mode=net with one NIC whose TAP is in `ns` at `subnet`.1/24. */
export interface NetVm {
  machine: Machine;
  tap: string;
  serial: string;
  ip: string;
  log(): Promise<string>;
  command(line: string): void;
}

/** What the guest counted (`stats` on its serial line). */
export interface GuestNetStats {
  rx: number;
  tx: number;
  arp: number;
  icmp: number;
  /** Frames neither ARP for it nor echo requests to it (a UDP flood lands here). */
  other: number;
  merged: number;
  bad: number;
}

const STATS_RE =
  /net stats rx=(\d+) tx=(\d+) arp=(\d+) icmp=(\d+) other=(\d+) merged=(\d+) bad=(\d+)/g;

/** Boots a mode=net guest whose TAP (`<prefix><pid>x<n>`) gets `subnet`.1/24 in `ns`. */
export async function netVm(
  ns: Netns,
  dir: string,
  subnet: string,
  extra = "",
  prefix = "h8v",
): Promise<NetVm> {
  const tap = `${prefix}${Deno.pid % 10000}x${tapCounter++}`;
  const serial = `${dir}/${tap}.serial`;
  const ip = `${subnet}.2`;
  const machine = await Machine.create({
    memMiB: 32,
    vcpus: 1,
    // The 64-bit guest: this host's KVM cannot emulate a 32-bit IRET, so the PVH guest takes no interrupts.
    kernel: await Deno.readFile(guest("guest-vmlinux.elf")),
    cmdline: `mode=net net.ip=${ip} ${extra}`,
    devices: defaultDeviceSpecs({ serialOut: { path: serial }, memMiB: 32 }),
    nets: [{ id: "eth0", tap, netns: ns.name }],
  });
  await ns.ip(`link set ${tap} up`);
  await ns.ip(`addr add ${subnet}.1/24 dev ${tap}`);
  await machine.start();
  const log = () => Deno.readTextFile(serial).catch(() => "");
  const vm: NetVm = {
    machine,
    tap,
    serial,
    ip,
    log,
    command(line: string) {
      const com1 = machine.device("com1") as Serial16550 | undefined;
      com1?.pushInput(new TextEncoder().encode(`${line}\n`));
    },
  };
  const up = await waitText(vm, /net up .*\n/, 30_000);
  assert.ok(up !== null, `guest did not come up: ${await log()}`);
  return vm;
}

/** Waits (up to `timeoutMs`) for `re` in the guest's serial log. */
export async function waitText(
  vm: NetVm,
  re: RegExp,
  timeoutMs: number,
): Promise<RegExpExecArray | null> {
  const end = Date.now() + timeoutMs;
  while (Date.now() < end) {
    const m = re.exec(await vm.log());
    if (m !== null) return m;
    await sleep(50);
  }
  return re.exec(await vm.log());
}

/** Asks the guest for its counters and waits (up to `timeoutMs`) for the answer. */
export async function guestStats(vm: NetVm, timeoutMs = 10_000): Promise<GuestNetStats> {
  const before = [...(await vm.log()).matchAll(STATS_RE)].length;
  vm.command("stats");
  const end = Date.now() + timeoutMs;
  for (;;) {
    const all = [...(await vm.log()).matchAll(STATS_RE)];
    const m = all[before];
    if (m !== undefined) {
      const [rx, tx, arp, icmp, other, merged, bad] = m.slice(1).map(Number);
      return {
        rx: rx ?? 0,
        tx: tx ?? 0,
        arp: arp ?? 0,
        icmp: icmp ?? 0,
        other: other ?? 0,
        merged: merged ?? 0,
        bad: bad ?? 0,
      };
    }
    if (Date.now() > end) assert.fail(`no stats from the guest: ${await vm.log()}`);
    await sleep(50);
  }
}

/** A counter of the TAP in `ns` (`/sys/class/net/TAP/statistics`). */
export async function tapStat(
  ns: Netns,
  tap: string,
  what: "rx_packets" | "tx_packets",
): Promise<number> {
  const r = await ns.exec(["cat", `/sys/class/net/${tap}/statistics/${what}`]);
  return Number(r.stdout.trim());
}

/** Pings `ip` from `ns` `count` times (0.1 s apart); returns the replies. */
export async function pings(ns: Netns, ip: string, count: number, size = 56): Promise<number> {
  const r = await ns.exec(
    ["ping", "-c", String(count), "-i", "0.1", "-W", "2", "-s", String(size), ip],
    true,
  );
  const m = /(\d+) received/.exec(r.stdout);
  return m === null ? 0 : Number(m[1]);
}

/** A fresh namespace with IPv6 off (no router solicitations in the counts). */
export async function namespace(): Promise<Netns> {
  const ns = await Netns.create("v");
  await ns.exec(["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"]);
  await ns.exec(["sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1"]);
  return ns;
}
