/**
 * `vmkit disk check` beside `qemu-img check` on images QEMU itself made
 * (zero-flagged allocated clusters, compressed clusters, fragmentation
 * inside and across L2 tables, a leak, a doubly referenced cluster, an empty
 * image): the same report on stdout, the same exit status, and every key of
 * qemu-img's JSON with the same value.
 */

import assert from "node:assert/strict";
import { vmkitCli } from "../vmkit_cli.ts";

async function sh(cmd: string, args: string[], cwd: string): Promise<void> {
  const out = await new Deno.Command(cmd, { args, cwd, stdout: "null", stderr: "piped" }).output();
  assert.equal(out.code, 0, `${cmd} ${args.join(" ")}: ${new TextDecoder().decode(out.stderr)}`);
}

async function qemuImgCheck(path: string, json: boolean) {
  const out = await new Deno.Command("qemu-img", {
    args: ["check", ...(json ? ["--output", "json"] : []), path],
    stdout: "piped",
    stderr: "piped",
  }).output();
  return { code: out.code, stdout: new TextDecoder().decode(out.stdout) };
}

/** Rewrites bytes of `path` at `offset`. */
async function poke(path: string, offset: number, bytes: Uint8Array): Promise<void> {
  using f = await Deno.open(path, { read: true, write: true });
  await f.seek(offset, Deno.SeekMode.Start);
  await f.write(bytes);
}

async function readU64(path: string, offset: number): Promise<number> {
  using f = await Deno.open(path, { read: true });
  await f.seek(offset, Deno.SeekMode.Start);
  const b = new Uint8Array(8);
  await f.read(b);
  return Number(new DataView(b.buffer).getBigUint64(0) & 0x00ff_ffff_ffff_fe00n);
}

Deno.test("vmkit disk check reports what qemu-img check reports, with its exit status and JSON keys, on images QEMU made", async () => {
  const dir = await Deno.makeTempDir({ prefix: "vmkit-check-parity-" });
  try {
    const img = (name: string, size: string, ...io: string[]) =>
      (async () => {
        await sh("qemu-img", ["create", "-q", "-f", "qcow2", name, size], dir);
        if (io.length > 0) await sh("qemu-io", io.flatMap((c) => ["-c", c]).concat(name), dir);
        return name;
      })();
    const names = [
      await img("empty.qcow2", "1M"),
      await img("zero-alloc.qcow2", "16M", "write -P 1 0 4M", "write -z 1M 1M", "write 8M 64k"),
      await img("cross-l2.qcow2", "1G", "write 536805376 64k", "write 536870912 64k"),
      await img("fragmented.qcow2", "64M", "write 1M 64k", "write 0 64k", "write 2M 64k"),
    ];
    await sh(
      "qemu-img",
      ["convert", "-c", "-O", "qcow2", "zero-alloc.qcow2", "compressed.qcow2"],
      dir,
    );
    names.push("compressed.qcow2");
    // A leak: a refcount for a cluster nothing references (inside the file, as QEMU checks).
    await Deno.copyFile(`${dir}/fragmented.qcow2`, `${dir}/leak.qcow2`);
    await Deno.truncate(`${dir}/leak.qcow2`, 1 << 20);
    const rcTable = await readU64(`${dir}/leak.qcow2`, 48);
    const rcBlock = await readU64(`${dir}/leak.qcow2`, rcTable);
    await poke(`${dir}/leak.qcow2`, rcBlock + 2 * 12, new Uint8Array([0, 1]));
    names.push("leak.qcow2");
    // A corruption: guest cluster 5 points at guest cluster 0's host cluster.
    await Deno.copyFile(`${dir}/fragmented.qcow2`, `${dir}/corrupt.qcow2`);
    const l1 = await readU64(`${dir}/corrupt.qcow2`, 40);
    const l2 = await readU64(`${dir}/corrupt.qcow2`, l1);
    {
      using f = await Deno.open(`${dir}/corrupt.qcow2`, { read: true });
      await f.seek(l2 + 8 * 16, Deno.SeekMode.Start); // guest 1 MiB = cluster 16: written first
      const e = new Uint8Array(8);
      await f.read(e);
      await poke(`${dir}/corrupt.qcow2`, l2 + 8 * 5, e);
    }
    names.push("corrupt.qcow2");

    const codes: number[] = [];
    for (const name of names) {
      const path = `${dir}/${name}`;
      const q = await qemuImgCheck(path, false);
      const v = await vmkitCli(["disk", "check", path]);
      assert.equal(v.code, q.code, `${name}: exit status`);
      assert.equal(v.stdout, q.stdout, `${name}: report`);
      codes.push(q.code);
      const qj = JSON.parse((await qemuImgCheck(path, true)).stdout) as Record<string, unknown>;
      const vj = JSON.parse((await vmkitCli(["disk", "check", "--output", "json", path])).stdout);
      for (const [k, val] of Object.entries(qj)) assert.deepEqual(vj[k], val, `${name}: "${k}"`);
    }
    assert.deepEqual(codes, [0, 0, 0, 0, 0, 3, 2], "the images cover clean, leaked and corrupt");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
