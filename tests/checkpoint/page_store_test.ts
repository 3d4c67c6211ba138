import assert from "node:assert/strict";
import { PageStore } from "../../checkpoint/page_store.ts";
import { CheckpointError } from "../../checkpoint/errors.ts";
import { openUffdShim } from "../../native/uffd_ffi.ts";

const ID = (n: number) => n.toString(16).padStart(32, "0");

Deno.test("page stores: shared by their users, removed by the last, stale ones swept, foreign ones refused", async () => {
  await openUffdShim();
  const dir = await Deno.makeTempDir({ dir: "/dev/shm", prefix: "vmkit-store-" });
  try {
    const a1 = PageStore.open(dir, ID(1), 1 << 20);
    const a2 = PageStore.open(dir, ID(1), 1 << 20);
    assert.ok(a1 !== undefined && a2 !== undefined, "/dev/shm is not a tmpfs");
    assert.equal(a1.path, a2.path);
    // A store whose VMs all died: a file nobody holds a lock on.
    const stale = `${dir}/vmkit-pages-${ID(2)}`;
    await Deno.writeFile(stale, new Uint8Array(4096));
    const other = `${dir}/not-a-store`;
    await Deno.writeFile(other, new Uint8Array(1));
    const b = PageStore.open(dir, ID(3), 1 << 20);
    assert.throws(() => Deno.statSync(stale), Deno.errors.NotFound, "the stale store stayed");
    assert.ok(Deno.statSync(a1.path).isFile, "a store in use was swept");
    assert.ok(Deno.statSync(other).isFile, "a file that is no store was swept");
    // Another size under this id is not this checkpoint's store.
    assert.throws(() => PageStore.open(dir, ID(1), 2 << 20), CheckpointError);
    a1.close();
    assert.ok(Deno.statSync(a2.path).isFile, "removed while a user remains");
    a2.close();
    assert.throws(() => Deno.statSync(a2.path), Deno.errors.NotFound, "the last user left it");
    b?.close();
    assert.throws(() => PageStore.open(dir, "not-hex", 4096), CheckpointError);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
