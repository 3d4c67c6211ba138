import assert from "node:assert/strict";
import { EtcdSuiRegistry, type Sui, SuiRegistryError } from "../../san/mod.ts";
import { Etcd } from "./etcd.ts";
import { runConcurrentAllocations } from "./registry_concurrency.ts";

Deno.test("etcd registry allocation is idempotent, unique, listable and releasable", async () => {
  const etcd = await Etcd.start();
  try {
    const endpoint = `http://127.0.0.1:${etcd.clientPort}`;
    const host1 = new EtcdSuiRegistry(endpoint);
    const host2 = new EtcdSuiRegistry(endpoint);
    const a = await host1.alloc("vm-a", "wwpn");
    assert.equal(
      (await host2.alloc("vm-a", "wwpn")).sui,
      a.sui,
      "another host got a different SUI",
    );
    const b = await host2.alloc("vm-b", "wwpn");
    assert.notEqual(a.sui, b.sui);
    assert.ok(a.wwnn !== undefined);
    const many = await host1.allocMany(["m1", "m2", "m3", "m4"], "nqn");
    assert.equal(new Set(many.map((r) => r.sui)).size, 4);
    const list = await host2.list();
    assert.deepEqual(list.map((r) => `${r.vmId}/${r.type}`), [
      "m1/nqn",
      "m2/nqn",
      "m3/nqn",
      "m4/nqn",
      "vm-a/wwpn",
      "vm-b/wwpn",
    ]);
    assert.deepEqual((await host2.release("vm-a")).map((r) => r.sui), [a.sui]);
    assert.equal(await host1.get("vm-a", "wwpn"), undefined);
    assert.deepEqual(await host1.release("vm-a"), []);
    await host1.close();
    await host2.close();
  } finally {
    await etcd.stop();
  }
});

Deno.test("etcd registry keeps a released SUI in quarantine until it expires", async () => {
  const etcd = await Etcd.start();
  try {
    let now = 5_000_000;
    const names = ["iqn.2024-01.dev.vmkit:x", "iqn.2024-01.dev.vmkit:y"];
    let i = 0;
    const reg = new EtcdSuiRegistry(`http://127.0.0.1:${etcd.clientPort}`, {
      generate: (type): Sui => ({ type, sui: names[i++ % 2] ?? "" }),
      quarantineMs: 1000,
      now: () => now,
    });
    const x = await reg.alloc("vm-1");
    await reg.alloc("vm-2");
    await reg.release("vm-1");
    await assert.rejects(() => reg.alloc("vm-3"), SuiRegistryError);
    now += 1000;
    assert.equal((await reg.alloc("vm-3")).sui, x.sui);
    await reg.close();
  } finally {
    await etcd.stop();
  }
});

Deno.test("8 processes × 1000 allocations on etcd, one killed mid-way, give 0 duplicates", async () => {
  const etcd = await Etcd.start();
  try {
    await runConcurrentAllocations(etcd.spec, 8, 1000, 90_000);
  } finally {
    await etcd.stop();
  }
});
