import assert from "node:assert/strict";
import { openUffdShim, uffd, UffdError, WP_PAGE, WriteProtect } from "../../native/uffd_ffi.ts";
import { HostMemory } from "../../vmm/memory.ts";

const PAGES = 4;

/** Page `i` of the source: filled with `i + 1`, except page 2, which is zero. */
function sourceBytes(): Uint8Array {
  const b = new Uint8Array(PAGES * WP_PAGE);
  for (let i = 0; i < PAGES; i++) if (i !== 2) b.fill(i + 1, i * WP_PAGE, (i + 1) * WP_PAGE);
  return b;
}

Deno.test("the VMM's own write into lazily restored RAM fills the page, is tracked and needs no fault thread", async () => {
  await openUffdShim();
  const dir = await Deno.makeTempDir({ prefix: "vmkit-uffd-write-" });
  const path = `${dir}/source`;
  const src = sourceBytes();
  await Deno.writeFile(path, src);
  const fd = uffd().vk_file_open(new TextEncoder().encode(`${path}\0`), 0, 0);
  assert.ok(fd >= 0, `open: ${fd}`);
  const source = BigInt(uffd().vk_map_file_ro(fd, BigInt(src.length), 0n));
  assert.ok(source > 0n, `mmap: ${source}`);
  const memory = HostMemory.create(PAGES * WP_PAGE, { hugePages: false });
  try {
    const region = memory.regions[0];
    assert.ok(region !== undefined);
    using wp = WriteProtect.create([{ hostAddr: region.hostAddr, size: region.size, source }]);
    wp.setProtecting(true); // as a restore that tracks writes from the first instruction on

    const id = new Uint8Array(16).fill(0xaa);
    wp.write(region.hostAddr + BigInt(WP_PAGE + 100), id);
    // Across a boundary: the end of the zero page 2 and the start of page 3.
    const across = new Uint8Array(16).fill(0x55);
    wp.write(region.hostAddr + BigInt(3 * WP_PAGE - 8), across);
    let c = wp.counters();
    assert.equal(c.faults, 0, "a write on this thread went through the fault thread");
    assert.equal(c.missing, 3, "pages 1, 2 and 3 are filled");

    const expect = src.slice();
    expect.set(id, WP_PAGE + 100);
    expect.set(across, 3 * WP_PAGE - 8);
    // Reading page 0 (still missing) goes through the fault thread, as a guest access would.
    assert.deepEqual(memory.read(0, PAGES * WP_PAGE), expect);
    c = wp.counters();
    assert.equal(c.faults, 1, "only page 0 faulted");
    assert.equal(c.errors, 0);

    // The written pages are recorded (a diff checkpoint includes them), page 0 is not.
    assert.equal(wp.dirtyMap(0)[0], 0b1110n);
    assert.throws(
      () => wp.write(region.hostAddr + BigInt(PAGES * WP_PAGE - 8), id),
      UffdError,
      "a write past the region",
    );
    assert.deepEqual(
      memory.read(PAGES * WP_PAGE - 8, 8),
      expect.slice(-8),
      "a refused write wrote",
    );
  } finally {
    memory.close();
    uffd().vk_unmap(source, BigInt(src.length));
    uffd().vk_file_close(fd);
    await Deno.remove(dir, { recursive: true });
  }
});
