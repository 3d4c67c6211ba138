/**
 * Shared body of the "8 processes × N allocations, one killed" tests.
 *
 * @module
 */

import assert from "node:assert/strict";
import { openRegistry } from "../../san/mod.ts";

const WORKER = new URL("./registry_worker.ts", import.meta.url).pathname;

/** Runs `procs` workers of `count` allocations on `spec`, kills one mid-way, checks the result. */
export async function runConcurrentAllocations(
  spec: string,
  procs: number,
  count: number,
  deadlineMs: number,
): Promise<void> {
  const acked = new Map<string, string>();
  const children = Array.from({ length: procs }, (_, i) =>
    new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", WORKER, spec, `w${i}`, String(count), "iqn"],
      stdout: "piped",
      stderr: "piped",
    }).spawn());
  const victim = 3;
  let killed = false;
  const timer = setTimeout(() => {
    for (const c of children) {
      try {
        c.kill("SIGKILL");
      } catch (err) {
        if (!(err instanceof TypeError)) throw err;
      }
    }
  }, deadlineMs);
  const readers = children.map(async (child, i) => {
    const dec = new TextDecoderStream();
    let buf = "";
    let lines = 0;
    const errP = new Response(child.stderr).text();
    for await (const chunk of child.stdout.pipeThrough(dec)) {
      buf += chunk;
      const parts = buf.split("\n");
      buf = parts.pop() ?? "";
      for (const line of parts) {
        const [vm, sui] = line.split(" ");
        if (vm === undefined || sui === undefined) continue;
        acked.set(vm, sui);
        lines++;
      }
      if (i === victim && !killed && lines >= count / 3) {
        killed = true;
        child.kill("SIGKILL");
      }
    }
    const status = await child.status;
    const err = await errP;
    return { status, err, lines };
  });
  const results = await Promise.all(readers);
  clearTimeout(timer);
  assert.ok(killed, "the victim process was never killed mid-way");
  results.forEach((r, i) => {
    if (i === victim) {
      assert.ok(r.lines < count, "the victim finished before being killed");
      return;
    }
    assert.equal(r.status.code, 0, `worker ${i} failed: ${r.err}`);
    assert.equal(r.lines, count);
  });
  const reg = await openRegistry(spec);
  try {
    const all = await reg.list();
    const seen = new Set<string>();
    for (const r of all) {
      assert.ok(!seen.has(r.sui), `duplicate SUI ${r.sui}`);
      seen.add(r.sui);
    }
    // Every allocation a worker saw return is still there, with the same SUI.
    for (const [vm, sui] of acked) {
      const r = await reg.get(vm, "iqn");
      assert.equal(r?.sui, sui, `acknowledged allocation of ${vm} was lost`);
    }
    assert.ok(all.length >= acked.size);
    assert.ok(all.length <= procs * count);
  } finally {
    await reg.close();
  }
}
