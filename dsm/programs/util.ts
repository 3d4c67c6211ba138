/**
 * Helpers shared by the built-in programs: a digest of region bytes (so two
 * runs compare byte for byte) and a small seeded PRNG.
 *
 * @module
 */

import type { Region } from "../region.ts";

/** FNV-1a digests of bytes with two offsets, as 16 hex digits. */
export function digestBytes(bytes: Uint8Array): string {
  let h1 = 0x811c9dc5;
  let h2 = 0x01000193 ^ 0x5bd1e995;
  for (let i = 0; i < bytes.length; i++) {
    const b = bytes[i] ?? 0;
    h1 = Math.imul(h1 ^ b, 0x01000193);
    h2 = Math.imul(h2 ^ b ^ (i & 0xff), 0x01000193);
  }
  return (h1 >>> 0).toString(16).padStart(8, "0") + (h2 >>> 0).toString(16).padStart(8, "0");
}

/** Reads `length` bytes of a region (through the coherence protocol) and digests them. */
export function digestRegion(region: Region, length: number): string {
  const buf = new Uint8Array(length);
  region.read(0, buf);
  return digestBytes(buf);
}

/** A seeded 32-bit PRNG (mulberry32); deterministic for a seed. */
export function prng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return (t ^ (t >>> 14)) >>> 0;
  };
}

/** A deterministic 32-bit hash of integers. */
export function hash32(...xs: number[]): number {
  let h = 0x9e3779b9;
  for (const x of xs) {
    h = Math.imul(h ^ (x >>> 0), 0x85ebca6b);
    h ^= h >>> 13;
    h = Math.imul(h, 0xc2b2ae35);
    h ^= h >>> 16;
  }
  return h >>> 0;
}

/** The contiguous share `[start, end)` of `n` items for worker `rank` of `size`. */
export function share(n: number, rank: number, size: number): [number, number] {
  return [Math.floor((n * rank) / size), Math.floor((n * (rank + 1)) / size)];
}
