import assert from "node:assert/strict";
import {
  FileSuiRegistry,
  parseSui,
  type Sui,
  type SuiGenerator,
  SuiRegistryError,
} from "../../san/mod.ts";
import { runConcurrentAllocations } from "./registry_concurrency.ts";

async function withDir(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "vmkit-san-reg-" });
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

/** A generator over a tiny space, so quarantine and exhaustion are observable. */
function tinyGenerator(names: string[]): SuiGenerator {
  let i = 0;
  return (type): Sui => ({ type, sui: names[i++ % names.length] ?? "" });
}

Deno.test("file registry allocation is idempotent per VM and type and unique across VMs", async () => {
  await withDir(async (dir) => {
    const reg = await FileSuiRegistry.open(`${dir}/sui.journal`);
    try {
      const a1 = await reg.alloc("vm-a", "iqn");
      const a2 = await reg.alloc("vm-a", "iqn");
      const b = await reg.alloc("vm-b", "iqn");
      const aw = await reg.alloc("vm-a", "wwpn");
      const an = await reg.alloc("vm-a", "nqn");
      assert.equal(a1.sui, a2.sui);
      assert.notEqual(a1.sui, b.sui);
      assert.ok(aw.wwnn !== undefined && aw.wwnn !== aw.sui);
      assert.match(an.sui, /^nqn\.2014-08\.org\.nvmexpress:uuid:/);
      const list = await reg.list();
      assert.deepEqual(list.map((r) => `${r.vmId}/${r.type}`), [
        "vm-a/iqn",
        "vm-a/nqn",
        "vm-a/wwpn",
        "vm-b/iqn",
      ]);
      assert.equal((await reg.get("vm-b"))?.sui, b.sui);
      assert.equal(await reg.get("vm-c"), undefined);
    } finally {
      await reg.close();
    }
  });
});

Deno.test("file registry allocations survive reopening, as after a crash", async () => {
  await withDir(async (dir) => {
    const path = `${dir}/sui.journal`;
    const reg = await FileSuiRegistry.open(path);
    const recs = await reg.allocMany(["vm-1", "vm-2", "vm-3"], "wwpn");
    await reg.release("vm-2");
    await reg.close();
    const again = await FileSuiRegistry.open(path);
    try {
      assert.deepEqual(await again.get("vm-1", "wwpn"), recs[0]);
      assert.equal(await again.get("vm-2", "wwpn"), undefined);
      assert.deepEqual((await again.alloc("vm-3", "wwpn")).sui, recs[2]?.sui);
    } finally {
      await again.close();
    }
  });
});

Deno.test("a released SUI stays in quarantine and is reused only after it ends", async () => {
  await withDir(async (dir) => {
    let now = 1_000_000;
    const reg = await FileSuiRegistry.open(`${dir}/sui.journal`, {
      generate: tinyGenerator(["iqn.2024-01.dev.vmkit:a", "iqn.2024-01.dev.vmkit:b"]),
      quarantineMs: 60_000,
      now: () => now,
    });
    try {
      const a = await reg.alloc("vm-1");
      const b = await reg.alloc("vm-2");
      assert.notEqual(a.sui, b.sui);
      assert.deepEqual((await reg.release("vm-1")).map((r) => r.sui), [a.sui]);
      // Both names are taken (one held, one quarantined): the space is exhausted.
      await assert.rejects(() => reg.alloc("vm-3"), SuiRegistryError);
      now += 60_000;
      const c = await reg.alloc("vm-3");
      assert.equal(c.sui, a.sui);
    } finally {
      await reg.close();
    }
  });
});

Deno.test("a torn journal tail left by a killed writer is dropped and the registry stays usable", async () => {
  await withDir(async (dir) => {
    const path = `${dir}/sui.journal`;
    const reg = await FileSuiRegistry.open(path);
    const a = await reg.alloc("vm-a");
    await reg.close();
    const f = await Deno.open(path, { append: true });
    await f.write(new TextEncoder().encode('{"op":"alloc","vm":"vm-x","type":"iq'));
    f.close();
    const again = await FileSuiRegistry.open(path);
    try {
      assert.equal((await again.get("vm-a"))?.sui, a.sui);
      assert.equal(await again.get("vm-x"), undefined);
      const b = await again.alloc("vm-b");
      assert.notEqual(b.sui, a.sui);
    } finally {
      await again.close();
    }
    const text = await Deno.readTextFile(path);
    for (const line of text.trimEnd().split("\n")) JSON.parse(line);
  });
});

Deno.test("a journal that is not a registry is refused with an actionable error", async () => {
  await withDir(async (dir) => {
    await Deno.writeTextFile(`${dir}/other`, "hello\nworld\n");
    await assert.rejects(
      () => FileSuiRegistry.open(`${dir}/other`),
      /not a vmkit SUI registry|corrupt/,
    );
  });
});

Deno.test("the journal is compacted and still holds every allocation", async () => {
  await withDir(async (dir) => {
    const path = `${dir}/sui.journal`;
    const reg = await FileSuiRegistry.open(path, { quarantineMs: 0 });
    try {
      for (let round = 0; round < 5; round++) {
        const ids = Array.from({ length: 1000 }, (_, i) => `vm-${i}`);
        await reg.allocMany(ids);
        // Concurrent releases are group-committed: one lock and one fsync for many.
        if (round < 4) await Promise.all(ids.map((id) => reg.release(id)));
      }
      const lines = (await Deno.readTextFile(path)).trimEnd().split("\n").length;
      assert.ok(lines < 9001, `journal was never compacted (${lines} lines)`);
      assert.equal((await reg.list()).length, 1000);
    } finally {
      await reg.close();
    }
    const again = await FileSuiRegistry.open(path);
    try {
      assert.equal((await again.list()).length, 1000);
    } finally {
      await again.close();
    }
  });
});

Deno.test("a VM's SUI saved in its configuration restores after a checkpoint and the registry agrees", async () => {
  await withDir(async (dir) => {
    const reg = await FileSuiRegistry.open(`${dir}/sui.journal`);
    try {
      const rec = await reg.alloc("vm-ckpt", "wwpn");
      const config = JSON.stringify({
        vm: "vm-ckpt",
        san: { type: rec.type, sui: rec.sui, wwnn: rec.wwnn },
      });
      const restored = parseSui((JSON.parse(config) as { san: unknown }).san);
      assert.equal(restored.sui, rec.sui);
      assert.equal(restored.wwnn, rec.wwnn);
      assert.equal((await reg.alloc("vm-ckpt", "wwpn")).sui, restored.sui);
    } finally {
      await reg.close();
    }
  });
});

Deno.test("8 processes × 1000 allocations on one journal, one killed mid-way, give 0 duplicates", async () => {
  await withDir(async (dir) => {
    await runConcurrentAllocations(`${dir}/sui.journal`, 8, 1000, 60_000);
  });
});
