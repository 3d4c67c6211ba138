import assert from "node:assert/strict";
import { type CliResult, vmkitCli } from "../vmkit_cli.ts";

const vmkit = (...args: string[]): Promise<CliResult> => vmkitCli(args);

Deno.test("vmkit --help lists every command and exits 0", async () => {
  const r = await vmkit("--help");
  assert.equal(r.code, 0);
  for (const cmd of ["run", "disk", "sui", "san", "netguard", "dsm"]) {
    assert.match(r.stdout, new RegExp(`^  ${cmd} `, "m"));
  }
});

Deno.test("vmkit with an unknown command exits 64 naming it", async () => {
  const r = await vmkit("frobnicate");
  assert.equal(r.code, 64);
  assert.match(r.stderr, /unknown command 'frobnicate'/);
});
