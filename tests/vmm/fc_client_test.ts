/**
 * vmkit as Firecracker's users drive it: `fc_client.mjs`, a Node client written
 * from Firecracker's documents alone, boots a `vmkit run --api-sock` VM,
 * pauses it and snapshots it, the VMM is killed the moment `create` returns
 * (the snapshot is complete then, snapshot-support.md), and a fresh VMM loads
 * it and runs on.
 */

import assert from "node:assert/strict";
import { exists, guest, VmkitChild, waitFor } from "./run_helpers.ts";

const CLIENT = new URL("./fc_client.mjs", import.meta.url).pathname;

async function client(...args: string[]): Promise<void> {
  const out = await new Deno.Command("node", { args: [CLIENT, ...args], stderr: "piped" })
    .output();
  assert.equal(out.code, 0, `fc_client ${args[0]}: ${new TextDecoder().decode(out.stderr)}`);
}

async function readOr(path: string): Promise<string> {
  return await Deno.readTextFile(path).catch(() => "");
}

Deno.test("a Firecracker client's boot, Paused snapshot, kill and load on a fresh VMM get the documented replies and the VM runs on (needs /dev/kvm)", async () => {
  const dir = await Deno.makeTempDir({ prefix: "vmkit-fcclient-" });
  const disk = `${dir}/rootfs.ext4`;
  await Deno.writeFile(disk, new Uint8Array(1 << 20));
  const snap = `${dir}/snapshot_file`;
  const mem = `${dir}/mem_file`;
  try {
    {
      const sock = `${dir}/a.sock`;
      const serial = `${dir}/a.txt`;
      await using vmm = VmkitChild.spawn(["run", "--api-sock", sock, "--serial-out", serial]);
      await waitFor("the API socket", () => exists(sock));
      await client("boot", sock, guest("guest-pvh.elf"), "console=ttyS0 mode=kbd", disk);
      await waitFor("'kbd ready'", async () => (await readOr(serial)).includes("kbd ready"));
      await client("snapshot", sock, snap, mem);
      // Killed at once, as a user may once create has answered: nothing more is written.
      vmm.child.kill("SIGKILL");
      await vmm.exit();
    }
    const sock = `${dir}/b.sock`;
    const serial = `${dir}/b.txt`;
    await using vmm = VmkitChild.spawn(["run", "--api-sock", sock, "--serial-out", serial]);
    await waitFor("the API socket", () => exists(sock));
    await client("load", sock, snap, mem);
    // The restored guest still waits for keys: Ctrl-Alt-Del reaches it and it resets.
    await client("ctrl-alt-del", sock);
    const out = await vmm.exit();
    assert.equal(out.code, 0, out.stderr);
    assert.match(await Deno.readTextFile(serial), /^ctrl-alt-del$/m);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
