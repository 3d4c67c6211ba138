import assert from "node:assert/strict";
import { type CliResult, vmkitCli } from "../vmkit_cli.ts";

const vmkitRun = (...args: string[]): Promise<CliResult> => vmkitCli(["run", ...args]);

function assertOneLineError(stderr: string, re: RegExp): void {
  assert.equal(stderr.trimEnd().split("\n").length, 1, `one line expected, got: ${stderr}`);
  assert.match(stderr, /^vmkit run: /);
  assert.match(stderr, re);
}

Deno.test("vmkit run --help prints every option and exits 0", async () => {
  const r = await vmkitRun("--help");
  assert.equal(r.code, 0);
  for (const flag of ["--kernel", "--initrd", "--cmdline", "--mem", "--vcpus", "--api-sock"]) {
    assert.match(r.stdout, new RegExp(`^  ${flag} `, "m"));
  }
  assert.match(r.stdout, /--serial-out PATH/);
  assert.match(r.stdout, /--debug-exit PORT/);
  assert.equal(r.stderr, "");
});

Deno.test("vmkit run rejects bad flags with a one-line error and exit 64", async () => {
  const cases: Array<[string[], RegExp]> = [
    [["--frobnicate"], /unknown option '--frobnicate'/],
    [
      ["--kernel", "k", "--mem", "abc"],
      /--mem must be an integer in 1\.\.65536 \(MiB\), got 'abc'/,
    ],
    [["--kernel", "k", "--vcpus", "0"], /--vcpus must be an integer in 1\.\.64, got '0'/],
    [["--kernel", "k", "--mem", "1000000"], /--mem .* got '1000000'/],
    [["--kernel", "k", "--vcpus", "65"], /--vcpus .* got '65'/],
    [["--kernel", "k", "--debug-exit", "0x10000"], /--debug-exit must be an integer in 0\.\.65535/],
    [["--kernel", "k", "--mem=-5"], /--mem .* got '-5'/],
    [["--kernel", "k", "--mem", "-5"], /--mem must be an integer in 1\.\.65536 \(MiB\), got '-5'/],
    [["--kernel", "--mem", "64"], /--kernel needs a value, got the option '--mem'/],
    [["--kernel", "k", "stray"], /unexpected argument 'stray'/],
    [["--mem", "64"], /--kernel PATH is required/],
  ];
  for (const [args, re] of cases) {
    const r = await vmkitRun(...args);
    assert.equal(r.code, 64, `${args.join(" ")}: ${r.stderr}`);
    assertOneLineError(r.stderr, re);
    assert.equal(r.stdout, "");
  }
});

Deno.test("vmkit run with a missing or unreadable kernel exits 1 naming the file", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const missing = await vmkitRun("--kernel", `${dir}/nope.elf`, "--mem", "0x40");
    assert.equal(missing.code, 1);
    assertOneLineError(missing.stderr, /cannot read kernel '.*nope\.elf': no such file/);
    const isDir = await vmkitRun("--kernel", dir);
    assert.equal(isDir.code, 1);
    assertOneLineError(isDir.stderr, /it is a directory/);
    await Deno.writeTextFile(`${dir}/k`, "not a kernel at all");
    const missingInitrd = await vmkitRun("--kernel", `${dir}/k`, "--initrd", `${dir}/rd`);
    assert.equal(missingInitrd.code, 1);
    assertOneLineError(missingInitrd.stderr, /cannot read initrd '.*rd': no such file/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
