import assert from "node:assert/strict";
import { command, kebabKeys } from "../../cli/command.ts";
import { choice, flag, int, list, parseOptions, size, str } from "../../cli/options.ts";
import { UsageError } from "../../cli/usage.ts";

const TABLE = {
  mem: int("MiB", "guest RAM", { min: 1, max: 65536, default: 256, unit: "MiB" }),
  port: int("PORT", "a port", { max: 0xffff }),
  size: size("BYTES", "virtual size"),
  name: str("NAME", "a name"),
  format: choice(["qcow2", "raw"], "format", { default: "qcow2" }),
  param: list("K=V", "a parameter"),
  progress: flag("progress", { short: "p" }),
  quiet: flag("quiet", { short: "q" }),
};

function usageError(args: string[], re: RegExp): void {
  assert.throws(() => parseOptions(TABLE, args), (err: unknown) => {
    assert.ok(err instanceof UsageError, String(err));
    assert.match(err.message, re);
    return true;
  });
}

Deno.test("option parser reads long, =, short and clustered options into typed values", () => {
  const { values, positionals, given } = parseOptions(TABLE, [
    "a.qcow2",
    "--mem",
    "0x80",
    "--size=64K",
    "-pq",
    "--param",
    "n=1",
    "--param=m=2",
    "--format",
    "raw",
    "--",
    "--not-an-option",
  ]);
  assert.equal(values.mem, 128);
  assert.equal(values.size, 65536);
  assert.equal(values.format, "raw");
  assert.deepEqual(values.param, ["n=1", "m=2"]);
  assert.equal(values.progress, true);
  assert.equal(values.quiet, true);
  assert.equal(values.name, undefined);
  assert.equal(values.port, undefined);
  assert.deepEqual(positionals, ["a.qcow2", "--not-an-option"]);
  assert.deepEqual([...given].sort(), ["format", "mem", "param", "progress", "quiet", "size"]);
});

Deno.test("option parser fills defaults for absent options", () => {
  const { values } = parseOptions(TABLE, []);
  assert.equal(values.mem, 256);
  assert.equal(values.format, "qcow2");
  assert.equal(values.progress, false);
  assert.deepEqual(values.param, []);
});

Deno.test("a negative number after an option is its value, refused by range with a clear message", () => {
  usageError(["--mem", "-5"], /^--mem must be an integer in 1\.\.65536 \(MiB\), got '-5'$/);
  usageError(["--mem=-5"], /got '-5'/);
  usageError(["--port", "-0x10"], /--port must be an integer in 0\.\.65535, got '-0x10'/);
  assert.doesNotMatch(
    (() => {
      try {
        parseOptions(TABLE, ["--mem", "-5"]);
      } catch (err) {
        return (err as Error).message;
      }
      return "";
    })(),
    /ambiguous/,
  );
});

Deno.test("option parser names the bad option in every usage error", () => {
  usageError(["--sise", "1M"], /^unknown option '--sise' \(did you mean --size\?\)$/);
  usageError(["--frobnicate"], /^unknown option '--frobnicate'$/);
  usageError(["-x"], /unknown option '-x'/);
  usageError(["--name"], /--name needs a value/);
  usageError(
    ["--name", "--mem", "4"],
    /--name needs a value, got the option '--mem' \(write --name=VALUE/,
  );
  usageError(["--mem", "1", "--mem", "2"], /--mem is given twice/);
  usageError(["--progress=yes"], /--progress takes no value/);
  usageError(["--size", "lots"], /--size must be a size \(e\.g\. 4096, 64K, 1G\)/);
  usageError(["--format", "vmdk"], /--format must be one of qcow2, raw, got 'vmdk'/);
  assert.throws(
    () => parseOptions(TABLE, ["a", "b"], { min: 1, max: 1 }),
    /unexpected argument 'b'/,
  );
  assert.throws(() => parseOptions(TABLE, [], { min: 1, max: 1 }), /expected 1 argument, got 0/);
});

Deno.test("JSON output keys are kebab-case as qemu-img's, recursively", () => {
  assert.deepEqual(kebabKeys({ imageEndOffset: 1, chain: [{ virtualSize: 2n }], a: null }), {
    "image-end-offset": 1,
    chain: [{ "virtual-size": 2 }],
    a: null,
  });
});

Deno.test("a command prints its own --help with every option and its synopsis", async () => {
  let printed = "";
  const log = console.log;
  console.log = (s: string) => void (printed += s);
  try {
    const c = command({
      name: "create",
      summary: "create an image",
      args: ["FILE"],
      options: { size: size("BYTES", "virtual size") },
      output: true,
      progress: true,
      run: () => 7,
    });
    assert.equal(await c.main(["--help"], ["disk"]), 0);
    assert.match(printed, /^usage: vmkit disk create FILE \[options\]/);
    for (const o of ["--size BYTES", "--output text|json", "-p, --progress", "-q, --quiet"]) {
      assert.ok(printed.includes(o), `${o} in ${printed}`);
    }
    assert.equal(await c.main(["f"], ["disk"]), 7);
  } finally {
    console.log = log;
  }
});
