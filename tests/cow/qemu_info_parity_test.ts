/**
 * `vmkit disk info --output json` beside `qemu-img info --output json` on
 * images QEMU made: every key qemu-img prints is there with the same value
 * (scripts written against qemu-img's JSON read vmkit's unchanged); vmkit
 * adds only `allocated-bytes`.
 */

import assert from "node:assert/strict";
import { vmkitCli } from "../vmkit_cli.ts";

async function run(cmd: string, args: string[], cwd: string): Promise<string> {
  const out = await new Deno.Command(cmd, { args, cwd, stdout: "piped", stderr: "piped" }).output();
  const err = new TextDecoder().decode(out.stderr);
  assert.equal(out.code, 0, `${cmd} ${args.join(" ")}: ${err}`);
  return new TextDecoder().decode(out.stdout);
}

Deno.test("vmkit disk info --output json has every key and value of qemu-img info's, on images QEMU made", async () => {
  const dir = await Deno.makeTempDir({ prefix: "vmkit-infoparity-" });
  try {
    const images: Array<[string, string[]]> = [
      ["base.raw", ["-f", "raw"]],
      ["v3.qcow2", ["-f", "qcow2"]],
      ["v2.qcow2", ["-f", "qcow2", "-o", "compat=0.10"]],
      ["lazy.qcow2", ["-f", "qcow2", "-o", "lazy_refcounts=on,refcount_bits=8"]],
      ["small.qcow2", ["-f", "qcow2", "-o", "cluster_size=4096"]],
      ["top.qcow2", ["-f", "qcow2", "-b", "base.raw", "-F", "raw"]],
    ];
    for (const [name, opts] of images) {
      await run("qemu-img", ["create", "-q", ...opts, name, "8M"], dir);
    }
    await run("qemu-io", ["-f", "qcow2", "-c", "write -P 7 64k 128k", "top.qcow2"], dir);
    // A chain across folders: sub/up.qcow2 -> ../top.qcow2 -> base.raw.
    await Deno.mkdir(`${dir}/sub`);
    await run("qemu-img", [
      "create",
      "-q",
      "-f",
      "qcow2",
      "-b",
      "../top.qcow2",
      "-F",
      "qcow2",
      "sub/up.qcow2",
    ], dir);
    const same = (name: string, qemu: Record<string, unknown>, ours: Record<string, unknown>) => {
      for (const [key, value] of Object.entries(qemu)) {
        assert.deepEqual(ours[key], value, `${name}: '${key}'`);
      }
      const extra = Object.keys(ours).filter((k) => !(k in qemu));
      assert.deepEqual(extra, ["allocated-bytes"], `${name}: keys qemu-img does not print`);
    };
    for (const [name] of [...images, ["sub/up.qcow2"]]) {
      const qemu = JSON.parse(await run("qemu-img", ["info", "--output", "json", name], dir));
      const r = await vmkitCli(["disk", "info", "--output", "json", name], { cwd: dir });
      assert.equal(r.code, 0, r.stderr);
      same(name, qemu, JSON.parse(r.stdout));
    }
    const args = ["info", "--backing-chain", "--output", "json", "sub/up.qcow2"];
    const qemu = JSON.parse(await run("qemu-img", args, dir)) as Record<string, unknown>[];
    const r = await vmkitCli(["disk", ...args], { cwd: dir });
    assert.equal(r.code, 0, r.stderr);
    const ours = JSON.parse(r.stdout) as Record<string, unknown>[];
    assert.equal(ours.length, 3);
    qemu.forEach((layer, i) => same(`chain layer ${i}`, layer, ours[i] ?? {}));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("vmkit disk create takes qemu-img create's arguments (-f, -b, -F, FILE SIZE) and makes the image qemu-img makes", async () => {
  const dir = await Deno.makeTempDir({ prefix: "vmkit-createargs-" });
  try {
    await run("qemu-img", ["create", "-q", "-f", "raw", "base.raw", "8M"], dir);
    const cases = [
      ["-f", "qcow2", "-b", "base.raw", "-F", "raw", "NAME", "16M"],
      ["-f", "qcow2", "-b", "base.raw", "-F", "raw", "NAME"],
      ["-f", "raw", "NAME", "1M"],
      // Without -f qemu-img makes raw, vmkit qcow2 (its documented default).
      ["-f", "qcow2", "NAME", "64K"],
    ];
    const same = ["virtual-size", "format", "cluster-size", "backing-filename", "format-specific"];
    for (const [i, args] of cases.entries()) {
      const named = (n: string) => args.map((a) => a === "NAME" ? n : a);
      await run("qemu-img", ["create", "-q", ...named(`q${i}`)], dir);
      const r = await vmkitCli(["disk", "create", ...named(`v${i}`)], { cwd: dir });
      assert.equal(r.code, 0, `${args.join(" ")}: ${r.stderr}`);
      const info = async (n: string) =>
        JSON.parse(await run("qemu-img", ["info", "--output", "json", n], dir));
      const q = await info(`q${i}`);
      const v = await info(`v${i}`);
      for (const key of same) assert.deepEqual(v[key], q[key], `${args.join(" ")}: '${key}'`);
    }
    const twice = await vmkitCli(["disk", "create", "--size", "1M", "x.qcow2", "1M"], { cwd: dir });
    assert.equal(twice.code, 64);
    assert.match(twice.stderr, /give the size once/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
