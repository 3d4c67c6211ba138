/**
 * A decoder for LZ4's legacy frame (magic 0x184C2102), the format of Linux
 * bzImage payloads built with CONFIG_KERNEL_LZ4. Written here rather than
 * using Debian's `lz4` tool because that tool rejects the 4-byte size the
 * kernel build appends after the last block.
 *
 * @module
 */

const LEGACY_MAGIC = 0x184c2102;
const MAX_BLOCK = 8 << 20;

/** Decodes one raw LZ4 block `src` into `dst` at `pos`; returns the new position. */
function decodeBlock(src: Uint8Array, dst: Uint8Array, pos: number): number {
  let i = 0;
  while (i < src.length) {
    const token = src[i++] ?? 0;
    let lit = token >> 4;
    if (lit === 15) {
      let b = 255;
      while (b === 255) lit += b = src[i++] ?? 0;
    }
    if (i + lit > src.length || pos + lit > dst.length) {
      throw new Error("lz4: literal run overflows");
    }
    dst.set(src.subarray(i, i + lit), pos);
    i += lit;
    pos += lit;
    if (i >= src.length) break; // the last sequence has literals only
    const offset = (src[i] ?? 0) | ((src[i + 1] ?? 0) << 8);
    i += 2;
    let len = (token & 15) + 4;
    if ((token & 15) === 15) {
      let b = 255;
      while (b === 255) len += b = src[i++] ?? 0;
    }
    if (offset === 0 || offset > pos || pos + len > dst.length) throw new Error("lz4: bad match");
    for (let k = 0; k < len; k++, pos++) dst[pos] = dst[pos - offset] ?? 0;
  }
  return pos;
}

/** Decompresses a legacy-frame LZ4 stream; stops at the first non-block trailer. */
export function lz4LegacyDecompress(input: Uint8Array): Uint8Array {
  const dv = new DataView(input.buffer, input.byteOffset, input.byteLength);
  if (input.length < 4 || dv.getUint32(0, true) !== LEGACY_MAGIC) {
    throw new Error("lz4: not a legacy LZ4 frame");
  }
  const chunks: Uint8Array[] = [];
  const scratch = new Uint8Array(MAX_BLOCK);
  let i = 4;
  while (i + 4 <= input.length) {
    const size = dv.getUint32(i, true);
    if (size === LEGACY_MAGIC) {
      i += 4;
      continue;
    }
    if (size === 0 || i + 4 + size > input.length) break; // the appended length, or the end
    const n = decodeBlock(input.subarray(i + 4, i + 4 + size), scratch, 0);
    chunks.push(scratch.slice(0, n));
    i += 4 + size;
  }
  const out = new Uint8Array(chunks.reduce((n, c) => n + c.length, 0));
  let pos = 0;
  for (const c of chunks) {
    out.set(c, pos);
    pos += c.length;
  }
  return out;
}
