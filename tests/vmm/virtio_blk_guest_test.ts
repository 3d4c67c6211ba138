import assert from "node:assert/strict";
import { bootBlkGuest } from "./virtio_blk_guest.ts";

const SECTOR0 = "hello from the host disk";

async function rawDisk(dir: string, bytes = 1 << 20): Promise<string> {
  const path = `${dir}/disk.raw`;
  const data = new Uint8Array(bytes);
  data.set(new TextEncoder().encode(SECTOR0));
  await Deno.writeFile(path, data);
  return path;
}

function line(out: string, prefix: string): string {
  const l = out.split("\n").find((x) => x.startsWith(prefix));
  assert.ok(l !== undefined, `no '${prefix}' line in:\n${out}`);
  return l.slice(prefix.length);
}

for (const guest of ["guest-pvh.elf", "guest-vmlinux.elf"]) {
  const completion = guest === "guest-vmlinux.elf" ? "interrupts" : "polled InterruptStatus";
  Deno.test(`a ${guest} guest's own virtio-blk driver finds the disk on the command line, reads, writes, flushes and sees completions by ${completion} (needs /dev/kvm)`, async () => {
    const dir = await Deno.makeTempDir({ prefix: "vmkit-blk-g-" });
    try {
      const path = await rawDisk(dir);
      const r = await bootBlkGuest(guest, [{
        id: "vda",
        backend: { kind: "file", path },
        serial: "disk-serial-7",
      }]);
      assert.equal(r.status, 0, `${r.reason}\n${r.out}`);
      assert.match(r.out, /blk found base=0xd0000000 irq=5 id=2/);
      assert.equal(line(r.out, "blk capacity "), String((1 << 20) / 512));
      assert.equal(line(r.out, "blk serial ").replace(/\0+$/, ""), "disk-serial-7");
      assert.equal(line(r.out, "blk sector0 "), SECTOR0);
      assert.equal(line(r.out, "blk write status "), "0");
      assert.equal(line(r.out, "blk flush status "), "0");
      assert.equal(line(r.out, "blk readback "), "ok");
      assert.equal(line(r.out, "blk inflight ok "), "8");
      assert.ok(Number(line(r.out, "blk irqs ")) >= 4, `completions signalled by ${completion}`);
      const file = await Deno.readFile(path);
      assert.equal(file[512 + 1], (1 * 7 + 3) & 0xff, "the guest's write reached the file");
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  });
}

async function qemuImg(args: string[]): Promise<string> {
  const out = await new Deno.Command("qemu-img", { args, stdout: "piped", stderr: "piped" })
    .output();
  const text = new TextDecoder().decode(out.stdout) + new TextDecoder().decode(out.stderr);
  assert.ok(out.success, `qemu-img ${args.join(" ")} failed:\n${text}`);
  return text;
}

Deno.test("a guest writing to a qcow2 overlay over a raw base leaves the base untouched and qemu-img check clean (needs /dev/kvm)", async () => {
  const dir = await Deno.makeTempDir({ prefix: "vmkit-blk-q-" });
  try {
    const base = await rawDisk(dir);
    const before = await Deno.readFile(base);
    const overlay = `${dir}/overlay.qcow2`;
    await qemuImg(["create", "-q", "-f", "qcow2", "-b", base, "-F", "raw", overlay]);
    const r = await bootBlkGuest("guest-vmlinux.elf", [{
      id: "vda",
      backend: { kind: "file", path: overlay },
    }]);
    assert.equal(r.status, 0, `${r.reason}\n${r.out}`);
    assert.equal(line(r.out, "blk sector0 "), SECTOR0, "reads fall through to the base");
    assert.equal(line(r.out, "blk write status "), "0");
    assert.equal(line(r.out, "blk readback "), "ok");
    assert.deepEqual(await Deno.readFile(base), before, "base untouched");
    assert.match(await qemuImg(["check", overlay]), /No errors were found/);
    const map = await qemuImg(["map", "--output=json", overlay]);
    assert.match(
      map,
      /"start": 0, "length": 65536, "depth": 0, "present": true, "zero": false, "data": true/,
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a read-only drive fails the guest's write with IOERR and still serves reads (needs /dev/kvm)", async () => {
  const dir = await Deno.makeTempDir({ prefix: "vmkit-blk-ro-" });
  try {
    const path = await rawDisk(dir);
    const before = await Deno.readFile(path);
    const r = await bootBlkGuest("guest-vmlinux.elf", [{
      id: "vda",
      backend: { kind: "file", path },
      readOnly: true,
    }]);
    assert.equal(r.status, 0, `${r.reason}\n${r.out}`);
    assert.equal(line(r.out, "blk sector0 "), SECTOR0);
    assert.equal(line(r.out, "blk write status "), "1", "VIRTIO_BLK_S_IOERR");
    assert.deepEqual(await Deno.readFile(path), before);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
