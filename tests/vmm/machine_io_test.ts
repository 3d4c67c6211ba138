import assert from "node:assert/strict";
import { defaultDeviceSpecs } from "../../vmm/devices/mod.ts";
import { Machine, type MachineConfig } from "../../vmm/machine.ts";
import { buildGuests } from "../guests/build.ts";

const GUESTS = await buildGuests();

async function withDisks<T>(
  n: number,
  fn: (paths: string[], serial: string) => Promise<T>,
): Promise<T> {
  const dir = await Deno.makeTempDir({ prefix: "vmkit-machine-io-" });
  try {
    const paths: string[] = [];
    for (let i = 0; i < n; i++) {
      paths.push(`${dir}/d${i}.raw`);
      await Deno.writeFile(`${dir}/d${i}.raw`, new Uint8Array(1 << 20));
    }
    return await fn(paths, `${dir}/serial.txt`);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

async function config(
  cmdline: string,
  serial: string,
  extra: Partial<MachineConfig>,
): Promise<MachineConfig> {
  return {
    memMiB: 32,
    vcpus: 1,
    kernel: await Deno.readFile(`${GUESTS}guest-pvh.elf`),
    cmdline,
    devices: defaultDeviceSpecs({ memMiB: 32, serialOut: { path: serial }, serialIn: false }),
    ...extra,
  };
}

Deno.test("drives are announced on the kernel command line in Linux's virtio_mmio syntax, root first (needs /dev/kvm)", async () => {
  await withDisks(2, async ([a, b], serial) => {
    await using m = await Machine.create(
      await config("mode=info", serial, {
        drives: [
          { id: "data", backend: { kind: "file", path: a ?? "" } },
          { id: "rootfs", backend: { kind: "file", path: b ?? "" }, root: true, readOnly: true },
        ],
      }),
    );
    assert.deepEqual(m.mmioDevices, [
      { name: "rootfs", base: 0xd000_0000, size: 4096, gsi: 5 },
      { name: "data", base: 0xd000_1000, size: 4096, gsi: 6 },
    ]);
    await m.start();
    assert.equal((await m.wait()).status, 0);
    const out = await Deno.readTextFile(serial);
    assert.match(
      out,
      /cmdline=mode=info virtio_mmio\.device=4K@0xd0000000:5 virtio_mmio\.device=4K@0xd0001000:6 root=\/dev\/vda ro\n/,
    );
  });
});

Deno.test("announceOnCmdline: false leaves the caller's command line alone (needs /dev/kvm)", async () => {
  await withDisks(1, async ([a], serial) => {
    await using m = await Machine.create(
      await config("mode=info console=none", serial, {
        drives: [{ id: "vda", backend: { kind: "file", path: a ?? "" } }],
        announceOnCmdline: false,
      }),
    );
    await m.start();
    await m.wait();
    assert.match(await Deno.readTextFile(serial), /cmdline=mode=info console=none\n/);
  });
});

Deno.test("saveDevices needs quiesced I/O devices; quiesceDevices, save, restore, resumeDevices round-trip (needs /dev/kvm)", async () => {
  await withDisks(1, async ([a], serial) => {
    await using m = await Machine.create(
      await config("mode=spin", serial, {
        drives: [{ id: "vda", backend: { kind: "file", path: a ?? "" } }],
      }),
    );
    await m.start();
    await m.pause();
    assert.throws(
      () => m.saveDevices(),
      /device 'vda' is not quiesced; call quiesceDevices\(\) first/,
    );
    await m.resume();
    await m.quiesceDevices();
    await m.pause();
    const saved = m.saveDevices();
    assert.ok(saved.vda !== undefined && saved.com1 !== undefined);
    m.restoreDevices(saved);
    await m.resume();
    m.resumeDevices();
    assert.equal(m.device("vda")?.quiesced, false);
    const disk = m.disk("vda");
    assert.ok(disk !== undefined);
    assert.equal((await disk.describe()).layers[0]?.path, a);
    await m.stop();
  });
});

Deno.test("bad drive configuration is refused with what to change", async () => {
  await withDisks(1, async ([a], serial) => {
    const path = a ?? "";
    await assert.rejects(
      async () =>
        await Machine.create(
          await config("", serial, {
            drives: [{ id: "x", backend: { kind: "file", path } }, {
              id: "x",
              backend: { kind: "file", path },
            }],
          }),
        ),
      /two drives have the id 'x'/,
    );
    await assert.rejects(
      async () =>
        await Machine.create(
          await config("", serial, { drives: [{ id: "a b", backend: { kind: "file", path } }] }),
        ),
      /drive id 'a b' must be/,
    );
    await assert.rejects(
      async () =>
        await Machine.create(
          await config("", serial, {
            drives: [{ id: "vda", backend: { kind: "file", path: `${path}.missing` } }],
          }),
        ),
      /virtio device 'vda'.*does not exist/,
    );
  });
});
