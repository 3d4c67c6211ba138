import assert from "node:assert/strict";
import { crc32c, openUffdShim, PageKind, scanPages } from "../../native/uffd_ffi.ts";

/** CRC32C bit by bit (the definition), for checking the fast paths. */
function crcReference(data: Uint8Array): number {
  let c = 0xffffffff;
  for (const b of data) {
    c ^= b;
    for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ 0x82f63b78 : c >>> 1;
  }
  return (c ^ 0xffffffff) >>> 0;
}

Deno.test("CRC32C of pages (three-lane fast path) and of buffers equals the definition", async () => {
  await openUffdShim();
  assert.equal(crc32c(new TextEncoder().encode("123456789")), 0xe3069283);
  const seed = Date.now() % 100000;
  console.log(`seed ${seed}`);
  let x = seed;
  const rand = () => (x = (Math.imul(x, 1103515245) + 12345) >>> 0) >>> 24;
  const pages = 64;
  const buf = new Uint8Array(pages * 4096);
  for (let i = 0; i < buf.length; i++) buf[i] = rand();
  buf.fill(0, 5 * 4096, 6 * 4096); // one zero page
  buf[9 * 4096 + 4095] = 0x80; // a page whose only difference is its last byte
  buf.fill(0, 9 * 4096, 9 * 4096 + 4095);
  const kinds = new Uint8Array(pages);
  const crcs = new Uint32Array(pages);
  const addr = BigInt(Deno.UnsafePointer.value(Deno.UnsafePointer.of(buf)));
  scanPages(addr, pages, kinds, crcs);
  for (let p = 0; p < pages; p++) {
    const page = buf.subarray(p * 4096, (p + 1) * 4096);
    if (p === 5) {
      assert.equal(kinds[p], PageKind.ZERO);
      continue;
    }
    assert.equal(kinds[p], PageKind.DATA, `page ${p}`);
    const want = crcReference(page);
    assert.equal(crcs[p], want, `page ${p} (seed ${seed})`);
    assert.equal(crc32c(page), want, `buffer ${p} (seed ${seed})`);
  }
});
