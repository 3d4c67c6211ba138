import assert from "node:assert/strict";
import { loadProgram } from "../../dsm/node_main.ts";
import { BAD_NAME, vmkitNonUtf8 } from "../non_utf8.ts";
import { type CliResult, vmkitCli } from "../vmkit_cli.ts";

const MAIN = new URL("../../cli/main.ts", import.meta.url).pathname;
const FIXTURE = new URL("./fixtures/typed_program.ts", import.meta.url).pathname;

const vmkit = (...args: string[]): Promise<CliResult> =>
  vmkitCli(["dsm", ...args], { env: { VMKIT_DSM_SECRET: "dsm-cli-test-secret-0123456789" } });

Deno.test("vmkit dsm run matmul --nodes 2 --check reports a result identical to the sequential run", async () => {
  const r = await vmkit("run", "matmul", "--nodes", "2", "--param", "n=24", "--check", "--json");
  assert.equal(r.code, 0, r.stderr);
  const out = JSON.parse(r.stdout) as { check: boolean; messages: number; stats: unknown[] };
  assert.equal(out.check, true);
  assert.equal(out.stats.length, 2);
  assert.ok(out.messages > 0);
});

Deno.test("vmkit dsm run accepts a program given as a module path", async () => {
  const r = await vmkit("run", FIXTURE, "--nodes", "2");
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /"u32":4000000000/);
});

Deno.test("vmkit dsm --help and node --help print usage and exit 0", async () => {
  const a = await vmkit("--help");
  assert.equal(a.code, 0);
  assert.match(a.stdout, /vmkit dsm run PROGRAM --nodes N/);
  const b = await vmkit("node", "--help");
  assert.equal(b.code, 0);
  assert.match(b.stdout, /--listen HOST:PORT --peers HOST:PORT/);
});

Deno.test("vmkit dsm with bad arguments prints one clear line and exits 64", async () => {
  const cases: Array<[string[], RegExp]> = [
    [["run", "sor"], /--nodes N is required/],
    [["run", "sor", "--nodes", "33"], /--nodes must be an integer in 1\.\.32, got '33'/],
    [["run", "sor", "--nodes", "2", "--bogus"], /unknown option '--bogus'/],
    [["node", "--listen", "nohost", "--program", "sor"], /'nohost' is not HOST:PORT/],
    [["frob"], /unknown subcommand 'frob'/],
    [["run", "sor", "--nodes", "2", "--param", "n=-1"], /n=-1 is out of range: .*from 1 to 8190/],
    [["run", "sor", "--nodes", "2", "--param", "n=2.5"], /n=2\.5 is out of range/],
    [["run", "matmul", "--nodes", "2", "--param", "n=1e9"], /n=1e9 is out of range/],
    [
      ["run", "sor", "--nodes", "2", "--param", "size=4"],
      /no parameter 'size' \(its parameters: n, iters\)/,
    ],
    [["run", "sor", "--nodes", "2", "--param", "n="], /'n=' is not KEY=NUMBER/],
  ];
  for (const [args, re] of cases) {
    const r = await vmkit(...args);
    assert.equal(r.code, 64, args.join(" "));
    assert.match(r.stderr, re);
    assert.equal(r.stderr.trimEnd().split("\n").length, 1, r.stderr);
  }
  const noSecret = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", MAIN, "dsm", "node", "--listen", "127.0.0.1:1", "--program", "sor"],
    env: { VMKIT_DSM_SECRET: "" },
    stderr: "piped",
  }).output();
  const err = new TextDecoder().decode(noSecret.stderr);
  assert.equal(noSecret.code, 64, err);
  assert.match(
    err,
    /a cluster secret is required: give --secret-file FILE or set \$VMKIT_DSM_SECRET/,
  );
});

Deno.test("vmkit dsm run with an unknown program exits 1 naming the built-ins", async () => {
  const r = await vmkit("run", "no_such_program", "--nodes", "2");
  assert.equal(r.code, 1);
  assert.match(r.stderr, /neither a built-in \(sor, matmul, lu, histogram/);
});

Deno.test("two 'vmkit dsm node' processes given each other as peers run LU and node 0 prints the sequential result", async () => {
  const ports: number[] = [];
  for (let i = 0; i < 2; i++) {
    const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    ports.push((l.addr as Deno.NetAddr).port);
    l.close();
  }
  ports.sort((a, b) => a - b);
  const [p0, p1] = ports;
  const node = (self: number | undefined, peer: number | undefined) =>
    vmkit(
      "node",
      "--listen",
      `127.0.0.1:${self}`,
      "--peers",
      `127.0.0.1:${peer}`,
      "--program",
      "lu",
      "--param",
      "n=16",
    );
  const [a, b] = await Promise.all([node(p0, p1), node(p1, p0)]);
  assert.equal(a.code, 0, a.stderr);
  assert.equal(b.code, 0, b.stderr);
  const { program } = await loadProgram("lu");
  const expected = JSON.stringify(program.sequential?.({ n: 16 }));
  assert.match(a.stdout, /^DSM-READY$/m);
  assert.ok(a.stdout.includes(`DSM-RESULT ${expected}`), a.stdout);
  assert.doesNotMatch(b.stdout, /DSM-RESULT/);
  assert.match(b.stdout, /DSM-STATS \{"node":1,/);
});

Deno.test("vmkit dsm run on a directory, FIFO, device or non-UTF-8 program path gives one line, never hangs", async () => {
  const dir = await Deno.makeTempDir({ prefix: "vmkit-dsm-cli-" });
  try {
    const fifo = `${dir}/fifo`;
    await new Deno.Command("mkfifo", { args: [fifo] }).output();
    const cases: Array<[string[], RegExp]> = [
      [["run", fifo, "--nodes", "2"], /is not a regular file/],
      [["run", "/dev/zero", "--nodes", "2"], /is not a regular file/],
      [["run", dir, "--nodes", "2"], /is a directory/],
      [
        ["node", "--listen", "127.0.0.1:1", "--program", "sor", "--secret-file", "/dev/zero"],
        /--secret-file '\/dev\/zero' must be a regular file/,
      ],
    ];
    for (const [args, re] of cases) {
      const t0 = performance.now();
      const r = await vmkit(...args);
      assert.notEqual(r.code, 0, args.join(" "));
      assert.match(r.stderr, re);
      assert.equal(r.stderr.trimEnd().split("\n").length, 1, r.stderr);
      assert.ok(performance.now() - t0 < 20_000, `${args.join(" ")} took too long`);
    }
    const bad = await vmkitNonUtf8(`${dir}/p`, ".ts", "dsm", "run", BAD_NAME, "--nodes", "2");
    assert.equal(bad.code, 64, bad.stderr);
    assert.match(bad.stderr, /not valid UTF-8/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
