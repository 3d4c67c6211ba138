import assert from "node:assert/strict";
import { backingFile, Tgtd } from "./tgt.ts";

const MAIN = new URL("../../cli/main.ts", import.meta.url).pathname;

async function vmkit(...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", MAIN, ...args],
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1" },
  }).output();
  const dec = new TextDecoder();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}

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
    const recs = JSON.parse(list.stdout) as Array<{ vmId: string; sui: string }>;
    assert.deepEqual(recs.map((r) => r.vmId), ["vm-1"]);
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

Deno.test("vmkit sui and san reject bad input with a one-line error and exit 2", async () => {
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
    assert.equal(r.code, 2, `${args.join(" ")}: ${r.stderr}`);
    assert.match(r.stderr, re);
    assert.equal(r.stderr.trimEnd().split("\n").length, 1, r.stderr);
  }));
  const help = await vmkit("san", "--help");
  assert.equal(help.code, 0);
  assert.match(help.stdout, /vmkit san discover/);
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
