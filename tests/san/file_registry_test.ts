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
    const [header, ...records] = (await Deno.readTextFile(path)).trimEnd().split("\n");
    assert.equal(header, '{"vmkit-sui-registry":2}');
    for (const line of records) JSON.parse(line.replace(/^[0-9a-f]{8} /, ""));
    assert.equal(records.length, 2, "the torn entry was truncated and vm-b appended");
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

/** The journal's lines (without their newlines). */
async function journalLines(path: string): Promise<string[]> {
  return (await Deno.readTextFile(path)).replace(/\n$/, "").split("\n");
}

async function writeLines(path: string, lines: string[]): Promise<void> {
  await Deno.writeTextFile(path, lines.map((l) => `${l}\n`).join(""));
}

/** A journal at `dir/sui.journal` holding vm-a, vm-b and vm-c; returns its path and lines. */
async function threeAllocations(dir: string): Promise<{ path: string; lines: string[] }> {
  const path = `${dir}/sui.journal`;
  const reg = await FileSuiRegistry.open(path);
  await reg.allocMany(["vm-a", "vm-b", "vm-c"]);
  await reg.close();
  return { path, lines: await journalLines(path) };
}

Deno.test("a corrupted final complete record is refused with its line number and the file is left alone", async () => {
  await withDir(async (dir) => {
    const path = `${dir}/sui.journal`;
    const reg = await FileSuiRegistry.open(path);
    await reg.alloc("vm-a");
    await reg.alloc("vm-b");
    await reg.close();
    const lines = await journalLines(path);
    assert.equal(lines.length, 3);
    // A complete, newline-terminated last record whose bytes went bad is not a torn write.
    lines[2] = (lines[2] ?? "").replace('"vm-b"', '"vm-b\u0001');
    await writeLines(path, lines);
    const before = await Deno.readFile(path);
    await assert.rejects(() => FileSuiRegistry.open(path), /line 3\b/);
    await assert.rejects(() => FileSuiRegistry.open(path, { readOnly: true }), /line 3\b/);
    assert.deepEqual(await Deno.readFile(path), before, "the refused journal was modified");
  });
});

Deno.test("a record altered into other valid JSON anywhere in the journal fails its checksum", async () => {
  await withDir(async (dir) => {
    const { path, lines } = await threeAllocations(dir);
    assert.ok((lines[2] ?? "").includes('"vm-b"'));
    // Still well-formed JSON and a well-formed entry: only a checksum can tell.
    lines[2] = (lines[2] ?? "").replace('"vm-b"', '"vm-x"');
    await writeLines(path, lines);
    await assert.rejects(() => FileSuiRegistry.open(path), /line 3 fails its checksum/);
  });
});

Deno.test("a record deleted from the middle of the journal is detected at the next line", async () => {
  await withDir(async (dir) => {
    const { path, lines } = await threeAllocations(dir);
    lines.splice(2, 1);
    await writeLines(path, lines);
    await assert.rejects(() => FileSuiRegistry.open(path), /line 3\b/);
  });
});

Deno.test("an empty journal left by a crash at creation is initialised and stays usable", async () => {
  await withDir(async (dir) => {
    for (const content of ["", '{"vmkit-sui']) {
      const path = `${dir}/sui-${content.length}.journal`;
      await Deno.writeTextFile(path, content);
      const reg = await FileSuiRegistry.open(path);
      const a = await reg.alloc("vm-a");
      await reg.close();
      const again = await FileSuiRegistry.open(path);
      try {
        assert.equal((await again.get("vm-a"))?.sui, a.sui);
      } finally {
        await again.close();
      }
    }
  });
});

Deno.test("a read-only registry writes nothing: no lock file, no truncated tail, no new journal", async () => {
  await withDir(async (dir) => {
    const path = `${dir}/sui.journal`;
    const none = await FileSuiRegistry.open(path, { readOnly: true });
    assert.deepEqual(await none.list(), []);
    await none.close();
    assert.deepEqual([...Deno.readDirSync(dir)], [], "a read-only open created files");
    const reg = await FileSuiRegistry.open(path);
    const a = await reg.alloc("vm-a");
    await reg.close();
    await Deno.remove(`${path}.lock`);
    const f = await Deno.open(path, { append: true });
    await f.write(new TextEncoder().encode('0badc0de {"op":"al'));
    f.close();
    const before = await Deno.readFile(path);
    const ro = await FileSuiRegistry.open(path, { readOnly: true });
    try {
      assert.deepEqual((await ro.list()).map((r) => r.sui), [a.sui]);
      await assert.rejects(() => ro.alloc("vm-b"), /read-only/);
    } finally {
      await ro.close();
    }
    assert.deepEqual(await Deno.readFile(path), before);
    assert.deepEqual([...Deno.readDirSync(dir)].map((e) => e.name), ["sui.journal"]);
  });
});

Deno.test("files that are not registries are refused unchanged and gain no lock file beside them", async () => {
  await withDir(async (dir) => {
    const qcow = new Uint8Array(512);
    qcow.set([0x51, 0x46, 0x49, 0xfb, 0, 0, 0, 3]);
    const files: Record<string, Uint8Array> = {
      "disk.qcow2": qcow,
      "notes.txt": new TextEncoder().encode("hello\nworld\n"),
      "one-line.txt": new TextEncoder().encode("no newline here"),
      "json.txt": new TextEncoder().encode('{"op":"alloc"}\n'),
    };
    for (const [name, bytes] of Object.entries(files)) {
      await Deno.writeFile(`${dir}/${name}`, bytes);
      for (const readOnly of [true, false]) {
        await assert.rejects(
          () => FileSuiRegistry.open(`${dir}/${name}`, { readOnly }),
          /not a vmkit SUI registry journal/,
          `${name} (readOnly ${readOnly})`,
        );
        assert.deepEqual(await Deno.readFile(`${dir}/${name}`), bytes, `${name} was modified`);
      }
    }
    const names = [...Deno.readDirSync(dir)].map((e) => e.name).sort();
    assert.deepEqual(names, Object.keys(files).sort(), "lock files were created");
  });
});

Deno.test("a version 1 journal (no checksums) is read as is and rewritten as version 2 by the first writer", async () => {
  await withDir(async (dir) => {
    const path = `${dir}/sui.journal`;
    const v1 = [
      '{"vmkit-sui-registry":1}',
      '{"op":"alloc","vm":"vm-a","type":"iqn","sui":"iqn.2024-01.dev.vmkit:a","at":1}',
      '{"op":"alloc","vm":"vm-b","type":"iqn","sui":"iqn.2024-01.dev.vmkit:b","at":2}',
      '{"op":"release","vm":"vm-b","type":"iqn","sui":"iqn.2024-01.dev.vmkit:b","at":3}',
    ];
    await writeLines(path, v1);
    const before = await Deno.readFile(path);
    const ro = await FileSuiRegistry.open(path, { readOnly: true });
    assert.deepEqual((await ro.list()).map((r) => r.vmId), ["vm-a"]);
    await ro.close();
    assert.deepEqual(await Deno.readFile(path), before, "a reader migrated the journal");
    const reg = await FileSuiRegistry.open(path, { now: () => 10 });
    try {
      assert.equal((await reg.get("vm-a"))?.sui, "iqn.2024-01.dev.vmkit:a");
      await reg.alloc("vm-c");
    } finally {
      await reg.close();
    }
    const lines = await journalLines(path);
    assert.equal(lines[0], '{"vmkit-sui-registry":2}');
    for (const l of lines.slice(1)) assert.match(l, /^[0-9a-f]{8} \{/);
    const again = await FileSuiRegistry.open(path, { readOnly: true, now: () => 10 });
    try {
      assert.deepEqual((await again.list()).map((r) => r.vmId), ["vm-a", "vm-c"]);
    } finally {
      await again.close();
    }
  });
});

Deno.test("registry paths that are not regular files fail with one clear error and never block", async () => {
  await withDir(async (dir) => {
    const fifo = `${dir}/fifo`;
    await new Deno.Command("mkfifo", { args: [fifo] }).output();
    const cases: Array<[string, RegExp]> = [
      [dir, /is a directory/],
      [fifo, /not a regular file/],
      ["/dev/zero", /not a regular file/],
      [`${dir}/a\0b`, /NUL/],
      [`${dir}/missing-dir/sui.journal`, /directory/],
    ];
    for (const [path, re] of cases) {
      for (const readOnly of [true, false]) {
        if (readOnly && path.includes("missing-dir")) continue;
        await assert.rejects(
          () => FileSuiRegistry.open(path, { readOnly }),
          (err: unknown) => err instanceof SuiRegistryError && re.test(err.message),
          `${JSON.stringify(path)} readOnly=${readOnly}`,
        );
      }
    }
  });
});
