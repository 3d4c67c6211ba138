import assert from "node:assert/strict";

const MAIN = new URL("../../cli/main.ts", import.meta.url).pathname;

async function vmkit(...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", MAIN, ...args],
    stdout: "piped",
    stderr: "piped",
  }).output();
  const dec = new TextDecoder();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}

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
