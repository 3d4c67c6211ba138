/**
 * DSM programs written as an outside user writes them, from the module docs
 * alone (`fixtures/outsider/`): a lock-protected shared counter with
 * per-worker partial sums, and a two-barrier prefix sum over `blocked`
 * regions with 32- and 64-bit accesses. Run through `vmkit dsm run PATH`,
 * from another folder, and checked against their sequential versions; a
 * program's bad region is refused before any node starts.
 */

import assert from "node:assert/strict";
import { vmkitCli } from "../vmkit_cli.ts";

const dir = new URL("./fixtures/outsider/", import.meta.url).pathname;

Deno.test("an outsider's counter and prefix-sum programs run on 3 nodes and match their sequential runs, which may depend on the cluster's shape", async () => {
  const cwd = await Deno.makeTempDir({ prefix: "vmkit-dsm-outsider-" });
  try {
    for (
      const [file, args] of [
        ["counter.ts", ["--workers", "2", "--param", "rounds=20"]],
        ["scan.ts", ["--workers", "2", "--param", "n=3000"]],
      ] as const
    ) {
      // From a folder of the user's own, as the program's path names it.
      const r = await vmkitCli(
        ["dsm", "run", `${dir}${file}`, "--nodes", "3", ...args, "--check", "--output", "json"],
        { cwd },
      );
      assert.equal(r.code, 0, `${file}: ${r.stderr}`);
      const out = JSON.parse(r.stdout) as { check: boolean; result: Record<string, unknown> };
      assert.equal(out.check, true, `${file}: ${JSON.stringify(out.result)}`);
    }
    // The counter's result does depend on the shape: 6 workers adding rank+1, 20 times.
    const c = await vmkitCli(
      [
        "dsm",
        "run",
        `${dir}counter.ts`,
        "--nodes",
        "3",
        "--workers",
        "2",
        "--param",
        "rounds=20",
        "--output",
        "json",
      ],
      { cwd },
    );
    assert.equal(JSON.parse(c.stdout).result.counter, 20 * 21);
  } finally {
    await Deno.remove(cwd, { recursive: true });
  }
});

Deno.test("a program declaring a bad region is refused before any node starts, naming the region", async () => {
  const cwd = await Deno.makeTempDir({ prefix: "vmkit-dsm-outsider-" });
  try {
    const path = `${cwd}/bad.ts`;
    await Deno.writeTextFile(
      path,
      `export const program = {
  name: "bad", defaults: {},
  regions: () => [{ name: "r", size: 128, blockSize: 100 }],
  run() {},
};
`,
    );
    const r = await vmkitCli(["dsm", "run", path, "--nodes", "2"], { cwd });
    assert.equal(r.code, 1);
    assert.match(r.stderr, /region 'r': block size 100 must be a power of two/);
    assert.doesNotMatch(r.stderr, /node \d exited/, "no node was started");
  } finally {
    await Deno.remove(cwd, { recursive: true });
  }
});
