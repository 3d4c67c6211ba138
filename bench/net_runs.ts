/**
 * One timed transmit or receive run of the virtio-net bench, on vmkit's
 * device and on the C peer, each timed the same way.
 *
 * @module
 */

import { loadShim } from "../native/ffi.ts";
import { FdWaiter } from "../native/io_ffi.ts";
import { NetStat, type NetStats } from "../vmm/devices/virtio/net_format.ts";
import { HostMemory } from "../vmm/memory.ts";
import { queueLayout } from "../tests/vmm/virtio_driver.ts";
import { benchFrame, FRAME_LEN, frameFile, type FrameKind } from "./net_frames.ts";
import {
  active,
  BUFS,
  device,
  F_CSUM,
  F_HOST_TSO4,
  F_MRG,
  GUEST_MAC_TEXT,
  type Place,
  QSIZE,
  ringViews,
  type Run,
  RX_RING,
  TX_RING,
} from "./net_rig.ts";

export async function vmkitTx(
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

/** The peer's best write mode here (blocking or O_NONBLOCK), chosen by the bench's calibration. */
let peerEnv: Record<string, string> = {};

/** Sets the environment {@link peerTx} runs the peer with by default (its best write mode). */
export function setPeerEnv(env: Record<string, string>): void {
  peerEnv = env;
}

export async function peerTx(
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

export function injector(p: Place, count: number, file: string): Deno.ChildProcess {
  return new Deno.Command(p.peer, {
    args: ["inject", p.ns, p.tap, file, String(count)],
    stdout: "piped",
    stderr: "piped",
  }).spawn();
}

export async function rxFile(p: Place, kind: FrameKind): Promise<string> {
  const file = `${p.dir}/rx-${kind}`;
  const mac = GUEST_MAC_TEXT.split(":").map((h) => parseInt(h, 16));
  // On the wire, without the virtio-net header.
  const frames = Array.from({ length: 16 }, (_, i) => benchFrame(kind, mac, i).subarray(12));
  await Deno.writeFile(file, frameFile(frames));
  return file;
}

export async function vmkitRx(p: Place, kind: FrameKind, count: number): Promise<Run> {
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

export async function peerRx(p: Place, kind: FrameKind, count: number): Promise<Run> {
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
