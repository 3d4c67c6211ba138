/**
 * What bench/netguard_classify_bench.ts needs besides its timing loop: the
 * traffic mix it classifies, the BPF filter with the same meaning as
 * netguard's `tcp_syn` class, and the C peer (bench/netguard_bpf_peer.c,
 * libpcap's `bpf_filter` and offline reader) built and run.
 *
 * @module
 */

import { buildFrame, PcapWriter, prng } from "../netguard/mod.ts";
import { ensurePackages } from "../tests/setup.ts";

const ROOT = new URL("../", import.meta.url).pathname;

/**
 * The filter both sides evaluate: a TCP segment with SYN set and ACK and
 * RST clear (netguard's `tcp_syn` class), over IPv4 (first fragment only, as
 * `tcp[]` checks), IPv6 without extension headers, and either of them
 * behind one VLAN tag. On well-formed frames it matches exactly the frames
 * netguard classifies `tcp_syn`; the bench checks both sides' counts agree.
 * (netguard also follows IPv6 extension headers and up to three VLAN tags,
 * and refuses bad header lengths that BPF reads through; the mix has none.)
 */
export const SYN_FILTER = "(tcp[tcpflags] & (tcp-syn|tcp-ack|tcp-rst) == tcp-syn)" +
  " or (ip6 and ip6[6] == 6 and ip6[53] & 0x16 == 0x02)" +
  " or (vlan and ((tcp[tcpflags] & (tcp-syn|tcp-ack|tcp-rst) == tcp-syn)" +
  " or (ip6 and ip6[6] == 6 and ip6[53] & 0x16 == 0x02)))";

/** A capture of `packets` frames and how many of them are TCP SYNs. */
export interface Mix {
  /** The pcap file's bytes. */
  bytes: Uint8Array<ArrayBuffer>;
  /** Frames with SYN set and ACK/RST clear. */
  syns: number;
}

/**
 * The traffic mix: a SYN flood from random sources (40%), UDP (20%),
 * VLAN-tagged ICMP (10%), IPv6 ACKs (10%), established TCP with data (20%).
 */
export function buildMix(packets: number, seed: number): Mix {
  const rnd = prng(seed);
  const w = new PcapWriter();
  let syns = 0;
  for (let i = 0; i < packets; i++) {
    const r = rnd();
    const src = `198.51.${Math.floor(rnd() * 256)}.${Math.floor(rnd() * 256)}`;
    let f: Uint8Array;
    if (r < 0.4) {
      f = buildFrame({
        src,
        dst: "10.0.0.2",
        proto: "tcp",
        flags: 0x02,
        sport: 1024 + (i & 0xfff),
      });
      syns++;
    } else if (r < 0.6) f = buildFrame({ src, dst: "10.0.0.2", proto: "udp", payload: 32 });
    else if (r < 0.7) f = buildFrame({ src, dst: "10.0.0.2", proto: "icmp", payload: 16, vlan: 5 });
    else if (r < 0.8) {
      f = buildFrame({ src: "2001:db8::1", dst: "2001:db8::2", proto: "tcp", flags: 0x10 });
    } else f = buildFrame({ src, dst: "10.0.0.2", proto: "tcp", flags: 0x18, payload: 100 });
    w.write(f, 1_800_000_000_000 + i * 0.05);
  }
  return { bytes: w.bytes(), syns };
}

/** One timed run of the peer: nanoseconds, records read, records matched. */
export interface PeerRun {
  /** Time of the timed part, ns. */
  ns: number;
  /** Records the peer read (0 when its reader does not count rejected ones). */
  frames: number;
  /** Records the filter accepted. */
  matched: number;
  /** libpcap's version string. */
  lib: string;
}

/** Builds bench/netguard_bpf_peer.c against libpcap (installed through setup) and returns its path. */
export async function buildPeer(): Promise<string> {
  await ensurePackages([
    { probe: "/usr/bin/gcc", pkg: "gcc" },
    { probe: "/usr/include/pcap/pcap.h", pkg: "libpcap-dev" },
  ]);
  await Deno.mkdir(`${ROOT}native/out`, { recursive: true });
  const out = `${ROOT}native/out/netguard_bpf_peer`;
  const r = await new Deno.Command("cc", {
    args: [
      "-O2",
      "-Wall",
      "-Wextra",
      "-Werror",
      "-o",
      out,
      `${ROOT}bench/netguard_bpf_peer.c`,
      "-lpcap",
    ],
  }).output();
  if (!r.success) {
    throw new Error(`cc bench/netguard_bpf_peer.c failed: ${new TextDecoder().decode(r.stderr)}`);
  }
  return out;
}

/** Runs the peer with `args` and returns its own in-process timing. */
export async function runPeer(peer: string, args: string[]): Promise<PeerRun> {
  const r = await new Deno.Command(peer, { args, stderr: "piped" }).output();
  if (!r.success) {
    throw new Error(`netguard_bpf_peer ${args[0]} failed: ${new TextDecoder().decode(r.stderr)}`);
  }
  return JSON.parse(new TextDecoder().decode(r.stdout)) as PeerRun;
}

/** Drops `file`'s pages from the page cache (fdatasync + posix_fadvise DONTNEED, in the peer). */
export async function dropCache(peer: string, file: string): Promise<void> {
  const r = await new Deno.Command(peer, { args: ["drop", file], stderr: "piped" }).output();
  if (!r.success) throw new Error(`drop ${file}: ${new TextDecoder().decode(r.stderr)}`);
}
