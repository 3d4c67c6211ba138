/**
 * FFI bindings of the network shim (`net.c`): TAP devices (optionally with
 * a virtio-net header), AF_PACKET sockets (optionally inside a named network
 * namespace), batched reads that wait in `poll` on Deno's FFI thread pool
 * (`nonblocking: true`), and the virtio-net back end's batched
 * scatter/gather TAP reads and writes (synchronous: the TAP is non-blocking).
 *
 * @module
 */

import { buildShim } from "./build.ts";

/** Words of per-frame metadata written by `vmkit_net_read_batch`: caplen, origlen, pkttype, offset. */
export const NET_META_WORDS = 4;

/** Symbols of `net.c`. */
export const NET_SYMBOLS = {
  vmkit_net_tap_open: { parameters: ["buffer", "buffer"], result: "i32" },
  vmkit_net_packet_open: { parameters: ["buffer", "buffer", "i32"], result: "i32" },
  vmkit_net_read_batch: {
    parameters: ["i32", "i32", "buffer", "i32", "i32", "buffer", "buffer", "i32", "i32"],
    result: "i32",
    nonblocking: true,
  },
  vmkit_net_write: { parameters: ["i32", "buffer", "i32"], result: "i32" },
  vmkit_net_tap_open_vnet: { parameters: ["buffer", "buffer", "i32"], result: "i32" },
  vmkit_net_tap_set_offload: { parameters: ["i32", "u32"], result: "i32" },
  vmkit_net_tap_read_chains: {
    parameters: [
      "i32",
      "buffer",
      "buffer",
      "i32",
      "i32",
      "i32",
      "buffer",
      "i32",
      "buffer",
      "i32",
      "i32",
    ],
    result: "i32",
  },
  vmkit_net_tap_write_frames: {
    parameters: ["i32", "buffer", "buffer", "i32", "buffer"],
    result: "i32",
  },
  vmkit_net_timer_create: { parameters: [], result: "i32" },
  vmkit_net_timer_arm: { parameters: ["i32", "f64"], result: "i32" },
  vmkit_net_timer_drain: { parameters: ["i32"], result: "i32" },
  vmkit_net_close: { parameters: ["i32"], result: "i32" },
  vmkit_net_strerror: { parameters: ["i32", "buffer", "i32"], result: "i32" },
} as const satisfies Deno.ForeignLibraryInterface;

/** The opened network shim's callable symbols. */
export type NetShim = Deno.DynamicLibrary<typeof NET_SYMBOLS>["symbols"];

let loaded: Promise<NetShim> | null = null;

/** Builds (if needed) and opens the shim once per process; returns its network symbols. */
export function openNetShim(): Promise<NetShim> {
  if (loaded === null) {
    loaded = buildShim().then((path) => Deno.dlopen(path, NET_SYMBOLS).symbols);
  }
  return loaded;
}

/** A NUL-terminated C string for a `buffer` parameter. */
export function cString(s: string): Uint8Array<ArrayBuffer> {
  const b = new TextEncoder().encode(s);
  const out = new Uint8Array(b.length + 1);
  out.set(b);
  return out;
}

/** The C library's text for positive `errno`. */
export function netStrerror(shim: NetShim, errno: number): string {
  const buf = new Uint8Array(256);
  const n = shim.vmkit_net_strerror(errno, buf, buf.length);
  return n > 0 ? new TextDecoder().decode(buf.subarray(0, n)) : `errno ${errno}`;
}
