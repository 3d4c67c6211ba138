import assert from "node:assert/strict";
import { backingFile, Tgtd } from "./tgt.ts";
import { BAD_NAME, vmkitNonUtf8 } from "../non_utf8.ts";
import { type CliResult, vmkitCli } from "../vmkit_cli.ts";

const vmkit = (...args: string[]): Promise<CliResult> => vmkitCli(args, { env: { NO_COLOR: "1" } });

Deno.test("vmkit sui alloc is idempotent, list shows it and release frees it", async () => {
  const dir = await Deno.makeTempDir({ prefix: "vmkit-san-cli-" });
  try {
    const reg = `${dir}/sui.journal`;
    const a = await vmkit(
      "sui",
      "alloc",
      "--vm",
      "vm-1",
      "--type",
      "wwpn",
      "--oui",
      "001b21",
      "--registry",
      reg,
    );
    assert.equal(a.code, 0, a.stderr);
    assert.match(
      a.stdout,
      /^50:01:b2:1[0-9a-f](:[0-9a-f]{2}){4} 50:01:b2:1[0-9a-f](:[0-9a-f]{2}){4}\n$/,
    );
    const again = await vmkit("sui", "alloc", "--vm", "vm-1", "--type", "wwpn", "--registry", reg);
    assert.equal(again.stdout, a.stdout);
    const list = await vmkit("sui", "list", "--registry", reg, "--json");
    assert.equal(list.code, 0, list.stderr);
    const recs = JSON.parse(list.stdout) as Array<{ "vm-id": string; sui: string }>;
    assert.deepEqual(recs.map((r) => r["vm-id"]), ["vm-1"]);
    assert.equal(recs[0]?.sui, a.stdout.split(" ")[0]);
    const rel = await vmkit("sui", "release", "--vm", "vm-1", "--registry", reg);
    assert.equal(rel.code, 0, rel.stderr);
    assert.match(rel.stdout, /^released wwpn /);
    const rel2 = await vmkit("sui", "release", "--vm", "vm-1", "--registry", reg);
    assert.equal(rel2.code, 1);
    assert.match(rel2.stderr, /holds no/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("vmkit sui list refuses a file that is not a registry and writes nothing beside it", async () => {
  const dir = await Deno.makeTempDir({ prefix: "vmkit-san-cli-" });
  try {
    const qcow = new Uint8Array(65536);
    qcow.set([0x51, 0x46, 0x49, 0xfb, 0, 0, 0, 3]);
    await Deno.writeFile(`${dir}/disk.qcow2`, qcow);
    await Deno.writeTextFile(`${dir}/notes.txt`, "keep me\n");
    for (const name of ["disk.qcow2", "notes.txt"]) {
      const before = await Deno.readFile(`${dir}/${name}`);
      for (const sub of [["list"], ["alloc", "--vm", "vm-1"], ["release", "--vm", "vm-1"]]) {
        const r = await vmkit("sui", ...sub, "--registry", `${dir}/${name}`);
        assert.equal(r.code, 1, `${sub[0]} ${name}: ${r.stderr}`);
        assert.match(r.stderr, /not a vmkit SUI registry journal/);
        assert.equal(r.stderr.trimEnd().split("\n").length, 1, r.stderr);
        assert.deepEqual(await Deno.readFile(`${dir}/${name}`), before, `${name} was modified`);
      }
    }
    // list of a registry that does not exist yet: empty, and nothing created.
    const none = await vmkit("sui", "list", "--registry", `${dir}/new.journal`, "--json");
    assert.equal(none.code, 0, none.stderr);
    assert.equal(none.stdout, "[]\n");
    const names = [...Deno.readDirSync(dir)].map((e) => e.name).sort();
    assert.deepEqual(names, ["disk.qcow2", "notes.txt"], "sui created files");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("vmkit sui on a directory, FIFO, device or non-UTF-8 registry path gives one line and exits non-zero", async () => {
  const dir = await Deno.makeTempDir({ prefix: "vmkit-san-cli-" });
  try {
    await new Deno.Command("mkfifo", { args: [`${dir}/fifo`] }).output();
    const cases: Array<[string, RegExp]> = [
      [dir, /is a directory/],
      [`${dir}/fifo`, /not a regular file/],
      ["/dev/zero", /not a regular file/],
    ];
    await Promise.all(cases.flatMap(([path, re]) =>
      ["list", "alloc"].map(async (sub) => {
        const r = await vmkit("sui", sub, "--vm", "vm-1", "--registry", path);
        assert.equal(r.code, 1, `${sub} ${path}: ${r.stderr}`);
        assert.match(r.stderr, re);
        assert.equal(r.stderr.trimEnd().split("\n").length, 1, r.stderr);
      })
    ));
    // A name that is not UTF-8 reaches Deno as U+FFFD: refused rather than mapped to another file.
    const bad = await vmkitNonUtf8(
      `${dir}/bad`,
      "",
      "sui",
      "alloc",
      "--vm",
      "vm-1",
      "--registry",
      BAD_NAME,
    );
    assert.equal(bad.code, 64, bad.stderr);
    assert.match(bad.stderr, /not valid UTF-8/);
    assert.equal(bad.stderr.trimEnd().split("\n").length, 1, bad.stderr);
    const names = [...Deno.readDirSync(dir)].map((e) => e.name);
    assert.deepEqual(names, ["fifo"], "a file was created under another name");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("vmkit sui and san reject bad input with a one-line error and exit 64", async () => {
  const cases: Array<[string[], RegExp]> = [
    [["sui", "alloc", "--registry", "/nonexistent/x"], /needs --vm/],
    [["sui", "alloc", "--vm", "bad id", "--registry", "/tmp/x"], /VM id 'bad id' is invalid/],
    [
      ["sui", "alloc", "--vm", "v", "--type", "fcoe", "--registry", "/tmp/x"],
      /unknown SUI type 'fcoe'/,
    ],
    [["sui", "frob"], /unknown subcommand 'frob'/],
    [
      ["san", "probe", "--initiator", "iqn.2024-01.a.b:c", "iscsi://127.0.0.1"],
      /probe needs iscsi:\/\/HOST/,
    ],
    [["san", "discover", "--initiator", "not-a-name", "iscsi://127.0.0.1"], /not an iSCSI name/],
    [["san", "discover", "--bogus"], /bogus/],
  ];
  await Promise.all(cases.map(async ([args, re]) => {
    const r = await vmkit(...args);
    assert.equal(r.code, 64, `${args.join(" ")}: ${r.stderr}`);
    assert.match(r.stderr, re);
    assert.equal(r.stderr.trimEnd().split("\n").length, 1, r.stderr);
  }));
  const help = await vmkit("san", "--help");
  assert.equal(help.code, 0);
  assert.match(help.stdout, /^ {2}discover /m);
});

Deno.test("vmkit san discover and probe log in with the given initiator name and refuse an unbound one", async () => {
  const dir = await Deno.makeTempDir({ prefix: "vmkit-san-cli-" });
  const tgt = await Tgtd.start();
  try {
    const target = "iqn.2026-01.dev.vmkit.test:cli";
    const vm = "iqn.2026-01.dev.vmkit.test:vm-cli";
    await tgt.addTarget({
      tid: 1,
      name: target,
      luns: [{ lun: 1, path: await backingFile(dir, "lun.img", 8 << 20) }],
      initiators: [vm],
    });
    const [disc, probe, refused] = await Promise.all([
      vmkit("san", "discover", "--initiator", vm, `iscsi://127.0.0.1:${tgt.port}`),
      vmkit("san", "probe", "--initiator", vm, `iscsi://127.0.0.1:${tgt.port}/${target}/1`),
      vmkit(
        "san",
        "probe",
        "--initiator",
        "iqn.2026-01.dev.vmkit.test:other",
        `iscsi://127.0.0.1:${tgt.port}/${target}/1`,
      ),
    ]);
    assert.equal(disc.code, 0, disc.stderr);
    assert.match(
      disc.stdout,
      new RegExp(`^${target.replaceAll(".", "\\.")}\\t127\\.0\\.0\\.1:${tgt.port},1$`, "m"),
    );
    assert.equal(probe.code, 0, probe.stderr);
    assert.match(probe.stdout, /vendor:\s+IET/);
    assert.match(probe.stdout, /capacity:\s+8388608 bytes/);
    assert.equal(refused.code, 1);
    assert.match(refused.stderr, /login of 'iqn\.2026-01\.dev\.vmkit\.test:other'.*rejected/);
  } finally {
    await tgt.stop();
    await Deno.remove(dir, { recursive: true });
  }
});
