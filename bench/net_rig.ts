/**
 * The virtio-net bench's rig: a network namespace with a TAP, the C peer,
 * a virtio-net device over the TAP and the driver's ring views.
 *
 * @module
 */

import { MmioAllocator } from "../vmm/devices/mmio_allocator.ts";
import { VirtioDeviceHost } from "../vmm/devices/virtio/host.ts";
import { Backend, W } from "../vmm/devices/virtio/layout.ts";
import { netDevice } from "../vmm/devices/virtio/net_format.ts";
import type { HostMemory } from "../vmm/memory.ts";
import { HostDriver } from "../tests/vmm/virtio_driver.ts";

export const ROOT = new URL("../", import.meta.url).pathname;
export const QSIZE = 256;
export const TX_RING = 0x10000;
export const RX_RING = 0x20000;
export const BUFS = 0x100000;
export const F_MAC = 1n << 5n, F_CSUM = 1n, F_HOST_TSO4 = 1n << 11n, F_MRG = 1n << 15n;
export const F_VERSION_1 = 1n << 32n;

export interface Run {
  frames: number;
  bytes: number;
  ms: number;
}

export async function sh(cmd: string, a: string[], allowFail = false): Promise<string> {
  const out = await new Deno.Command(cmd, { args: a, stdout: "piped", stderr: "piped" }).output();
  const text = new TextDecoder().decode(out.stdout);
  if (!out.success && !allowFail) {
    throw new Error(`${cmd} ${a.join(" ")}: ${new TextDecoder().decode(out.stderr)}`);
  }
  return text;
}

export async function buildPeer(dir: string): Promise<string> {
  const out = `${dir}/net_tap_peer`;
  await sh("cc", ["-O2", "-Wall", "-Wextra", "-Werror", "-o", out, `${ROOT}bench/net_tap_peer.c`]);
  return out;
}

/** The namespace and its persistent TAP (so vmkit and the peer open the same device in turn). */
export interface Place {
  ns: string;
  tap: string;
  tapMac: number[];
  dir: string;
  peer: string;
}

export async function setup(): Promise<Place> {
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

export async function teardown(p: Place): Promise<void> {
  await sh("ip", ["netns", "del", p.ns], true);
  await Deno.remove(p.dir, { recursive: true });
}

export const GUEST_MAC_TEXT = "02:00:00:00:93:02";

/** A vmkit net device on the place's TAP and a bench driver for it. */
export async function device(p: Place, mem: HostMemory, features: bigint) {
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

export async function active(host: VirtioDeviceHost): Promise<void> {
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

export function ringViews(mem: HostMemory, l: { avail: number; used: number }) {
  const a = mem.view(l.avail, 6 + 2 * QSIZE);
  const u = mem.view(l.used, 6 + 8 * QSIZE);
  return {
    avail: new DataView(a.buffer, a.byteOffset, a.byteLength),
    used: new DataView(u.buffer, u.byteOffset, u.byteLength),
  };
}
