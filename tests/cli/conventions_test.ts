import assert from "node:assert/strict";
import { isGroup } from "../../cli/command.ts";
import { allEntries } from "../../cli/main.ts";
import { VERSION } from "../../version.ts";
import { vmkitCli } from "../vmkit_cli.ts";

const ROOT = new URL("../../", import.meta.url).pathname;

interface Out {
  code: number;
  stdout: string;
  stderr: string;
}

async function run(cmd: string, args: string[], cwd?: string): Promise<Out> {
  const o = await new Deno.Command(cmd, {
    args,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
    ...(cwd === undefined ? {} : { cwd }),
  }).output();
  const dec = new TextDecoder();
  return { code: o.code, stdout: dec.decode(o.stdout), stderr: dec.decode(o.stderr) };
}

function vmkit(args: string[], cwd?: string): Promise<Out> {
  return vmkitCli(args, cwd === undefined ? {} : { cwd });
}

Deno.test("vmkit --version prints the version deno.json declares", async () => {
  const manifest = JSON.parse(await Deno.readTextFile(`${ROOT}deno.json`)) as { version: string };
  assert.equal(VERSION, manifest.version);
  const r = await vmkit(["--version"]);
  assert.equal(r.code, 0);
  assert.equal(r.stdout, `vmkit ${VERSION}\n`);
});

Deno.test("vmkit --help lists the exit-status table", async () => {
  const r = await vmkit(["--help"]);
  assert.equal(r.code, 0);
  assert.match(r.stdout, /exit status:/);
  assert.match(r.stdout, /^ +2 {2}corrupt input/m);
  assert.match(r.stdout, /^ +64 {2}usage error/m);
});

Deno.test("vmkit disk create --help prints create's options only", async () => {
  const r = await vmkit(["disk", "create", "--help"]);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /^usage: vmkit disk create FILE \[SIZE\] \[options\]/);
  assert.match(r.stdout, /^ {2}-F, --backing-format qcow2\|raw/m);
  assert.match(r.stdout, /^ {2}--output text\|json/m);
  assert.doesNotMatch(r.stdout, /--bandwidth/, "copy's option is not create's");
  const viaHelp = await vmkit(["help", "disk", "create"]);
  assert.equal(viaHelp.stdout, r.stdout);
});

Deno.test("every command's --help shows each of its options", async () => {
  for (const e of await allEntries()) {
    const cmds = isGroup(e) ? e.commands.map((c) => [[e.name], c] as const) : [[[], e] as const];
    for (const [path, c] of cmds) {
      const text = c.help(path);
      assert.match(text, new RegExp(`^usage: vmkit ${[...path, c.name].join(" ")} `));
      for (const [name, o] of Object.entries(c.options)) {
        if (o.hidden === true) continue;
        assert.ok(text.includes(`--${name}`), `${c.name} --help lacks --${name}`);
      }
    }
  }
});

/** Offsets of a qcow2 image's first L2 table and its first entry's data cluster. */
async function firstL2(path: string): Promise<{ l2: number; entry: bigint }> {
  const f = await Deno.readFile(path);
  const v = new DataView(f.buffer);
  const l1 = Number(v.getBigUint64(40));
  const l2 = Number(v.getBigUint64(l1) & 0x00ff_ffff_ffff_fe00n);
  return { l2, entry: v.getBigUint64(l2) };
}

async function patchU64(path: string, offset: number, value: bigint): Promise<void> {
  const f = await Deno.readFile(path);
  new DataView(f.buffer).setBigUint64(offset, value);
  await Deno.writeFile(path, f);
}

Deno.test("vmkit disk check exits as qemu-img check: 0 clean, 2 corrupt, 3 leaks, 63 raw, 1 missing", async () => {
  const dir = await Deno.makeTempDir({ prefix: "vmkit-check-" });
  try {
    for (const name of ["clean", "leak", "corrupt"]) {
      const p = `${dir}/${name}.qcow2`;
      assert.equal((await run("qemu-img", ["create", "-q", "-f", "qcow2", p, "1M"])).code, 0);
      const w = await run("qemu-io", ["-f", "qcow2", "-c", "write -P 0x5a 0 64k", p]);
      assert.equal(w.code, 0, w.stderr);
    }
    const leak = await firstL2(`${dir}/leak.qcow2`);
    assert.notEqual(leak.entry, 0n);
    await patchU64(`${dir}/leak.qcow2`, leak.l2, 0n); // the data cluster keeps its refcount
    const bad = await firstL2(`${dir}/corrupt.qcow2`);
    // The guest's cluster now points at the L2 table itself: referenced twice, refcount 1.
    await patchU64(`${dir}/corrupt.qcow2`, bad.l2, (1n << 63n) | BigInt(bad.l2));
    await Deno.writeFile(`${dir}/disk.raw`, new Uint8Array(65536));
    const cases: Array<[string, number]> = [
      ["clean.qcow2", 0],
      ["corrupt.qcow2", 2],
      ["leak.qcow2", 3],
      ["disk.raw", 63],
      ["missing.qcow2", 1],
    ];
    for (const [file, want] of cases) {
      const q = await run("qemu-img", ["check", file], dir);
      assert.equal(q.code, want, `qemu-img check ${file}: ${q.stdout}${q.stderr}`);
      const r = await vmkit(["disk", "check", file], dir);
      assert.equal(r.code, want, `vmkit disk check ${file}: ${r.stdout}${r.stderr}`);
    }
    const j = await vmkit(["disk", "check", "--output", "json", "leak.qcow2"], dir);
    assert.equal(j.code, 3);
    const res = JSON.parse(j.stdout) as Record<string, unknown>;
    assert.equal(res.leaks, 1);
    assert.equal(res.corruptions, 0);
    assert.equal(res.filename, "leak.qcow2");
    assert.equal(typeof res["image-end-offset"], "number");
    const u = await vmkit(["disk", "check"], dir);
    assert.equal(u.code, 64, "a usage error is neither corrupt (2) nor a failure (1)");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("vmkit disk copy and commit print JSON results and show progress only when asked off a terminal", async () => {
  const dir = await Deno.makeTempDir({ prefix: "vmkit-json-" });
  try {
    assert.equal((await vmkit(["disk", "create", "base.qcow2", "--size", "2M"], dir)).code, 0);
    let r = await vmkit(["disk", "create", "top.qcow2", "--backing", "base.qcow2"], dir);
    assert.equal(r.code, 0, r.stderr);
    const w = await run("qemu-io", ["-f", "qcow2", "-c", "write -P 7 0 128k", `${dir}/top.qcow2`]);
    assert.equal(w.code, 0, w.stderr);

    r = await vmkit(["disk", "copy", "top.qcow2", "a.qcow2", "--output", "json"], dir);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stderr, "", "no progress bar when stderr is not a terminal");
    const copied = JSON.parse(r.stdout) as Record<string, unknown>;
    assert.deepEqual(Object.keys(copied), ["source", "destination", "size", "written"]);
    assert.equal(copied.size, 2 << 20);
    assert.ok(Number(copied.written) >= 128 << 10 && Number(copied.written) < 2 << 20);
    r = await vmkit(["disk", "copy", "-p", "top.qcow2", "b.qcow2"], dir);
    assert.match(r.stderr, /copy \[#+\] 100%/);
    r = await vmkit(["disk", "copy", "-p", "-q", "top.qcow2", "c.qcow2"], dir);
    assert.equal(r.stderr, "", "-q silences progress");

    r = await vmkit(["disk", "commit", "top.qcow2", "--output=json"], dir);
    assert.equal(r.code, 0, r.stderr);
    const c = JSON.parse(r.stdout) as Record<string, unknown>;
    assert.equal(c.filename, "top.qcow2");
    assert.equal(c["resumed-from"], 0);
    assert.ok(typeof c.copied === "number" && c.copied >= 128 << 10);

    r = await vmkit(["disk", "info", "top.qcow2", "--output", "json"], dir);
    const info = JSON.parse(r.stdout) as Record<string, unknown>;
    assert.equal(info["virtual-size"], 2 << 20);
    assert.equal(info["backing-filename"], "base.qcow2");
    // As qemu-img prints it: the backing name beside the image as it was named.
    assert.equal(info["full-backing-filename"], "base.qcow2");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

async function completionScript(shell: string, dir: string): Promise<string> {
  const r = await vmkit(["completion", shell]);
  assert.equal(r.code, 0, r.stderr);
  const path = `${dir}/vmkit.${shell}`;
  await Deno.writeTextFile(path, r.stdout);
  return path;
}

Deno.test("bash completion, generated from the option tables, completes commands, options and values", async () => {
  const dir = await Deno.makeTempDir({ prefix: "vmkit-comp-" });
  try {
    const script = await completionScript("bash", dir);
    await Deno.writeTextFile(`${dir}/img.qcow2`, "");
    const complete = async (...words: string[]): Promise<string[]> => {
      const arr = words.map((w) => `'${w}'`).join(" ");
      const r = await run("bash", [
        "-c",
        `source ${script}; cd ${dir}; COMP_WORDS=(${arr}); COMP_CWORD=${words.length - 1}; ` +
        `_vmkit; printf '%s\\n' "\${COMPREPLY[@]}"`,
      ]);
      assert.equal(r.code, 0, r.stderr);
      return r.stdout.split("\n").filter((l) => l !== "").sort();
    };
    assert.deepEqual(await complete("vmkit", "di"), ["disk"]);
    assert.deepEqual(await complete("vmkit", "disk", "c"), ["check", "commit", "copy", "create"]);
    assert.deepEqual(await complete("vmkit", "disk", "create", "--backing-"), ["--backing-format"]);
    assert.deepEqual(await complete("vmkit", "disk", "create", "--format", ""), ["qcow2", "raw"]);
    assert.deepEqual(await complete("vmkit", "disk", "info", "im"), ["img.qcow2"]);
    assert.deepEqual(await complete("vmkit", "run", "--v"), ["--vcpus", "--vm-id"]);
    assert.deepEqual(await complete("vmkit", "disk", "copy", "--output", "j"), ["json"]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("zsh completion, generated from the option tables, hands zsh each command's options", async () => {
  const dir = await Deno.makeTempDir({ prefix: "vmkit-comp-" });
  try {
    const script = await completionScript("zsh", dir);
    const syntax = await run("zsh", ["-n", script]);
    assert.equal(syntax.code, 0, syntax.stderr);
    // zsh's completion widgets need a terminal; record what _vmkit hands them instead.
    const call = async (...words: string[]): Promise<string> => {
      const arr = words.map((w) => `'${w}'`).join(" ");
      const r = await run("zsh", [
        "-f",
        "-c",
        `_describe() { print -r -- "describe $1 \${(P)2}" }; ` +
        `_arguments() { print -r -- "arguments $*" }; compdef() { :; }; ` +
        `source ${script}; words=(${arr}); CURRENT=${words.length}; _vmkit`,
      ]);
      assert.equal(r.code, 0, r.stderr);
      return r.stdout;
    };
    assert.match(await call("vmkit", ""), /^describe command .*disk:copy-on-write disk images/);
    assert.match(await call("vmkit", "disk", ""), /^describe subcommand .*create:create a qcow2/);
    const create = await call("vmkit", "disk", "create", "--");
    assert.match(create, /^arguments -s /);
    assert.match(
      create,
      /--backing-format\[format of the backing file \(default: probed\)\]:qcow2\|raw:\(qcow2 raw\)/,
    );
    assert.match(create, /\(-h --help\)/);
    assert.doesNotMatch(create, /--bandwidth/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("vmkit run --output json prints the final status (needs /dev/kvm)", async () => {
  const dir = await Deno.makeTempDir({ prefix: "vmkit-runjson-" });
  try {
    const r = await vmkit([
      "run",
      "--kernel",
      `${ROOT}tests/guests/out/demo.elf`,
      "--serial-out",
      `${dir}/serial.txt`,
      "--output",
      "json",
    ]);
    assert.equal(r.code, 0, r.stderr);
    const status = JSON.parse(r.stdout) as Record<string, unknown>;
    assert.equal(status.status, 0);
    assert.equal(status["exit-code"], 0);
    assert.equal(typeof status.reason, "string");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
