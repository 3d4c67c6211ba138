import assert from "node:assert/strict";
import { FileSuiRegistry } from "../../san/mod.ts";
import { backingFile, Tgtd } from "../san/tgt.ts";
import { bootBlkGuest } from "./virtio_blk_guest.ts";

const TARGET = "iqn.2026-01.dev.vmkit.test:vm-disks";
const HOST_TEXT = "the host wrote this LUN";

Deno.test("VM A's guest reads a tgtd LUN masked to its own SUI; VM B's SUI is refused with the login failure named (needs /dev/kvm, tgtd)", async () => {
  const dir = await Deno.makeTempDir({ prefix: "vmkit-blk-iscsi-" });
  const registry = `${dir}/sui.journal`;
  const reg = await FileSuiRegistry.open(registry);
  const a = await reg.alloc("vm-a", "iqn");
  await reg.alloc("vm-b", "iqn");
  await reg.close();
  const tgt = await Tgtd.start();
  try {
    const lun = await backingFile(dir, "lun1.img", 4 << 20);
    const f = await Deno.open(lun, { write: true });
    await f.write(new TextEncoder().encode(HOST_TEXT));
    f.close();
    await tgt.addTarget({
      tid: 1,
      name: TARGET,
      luns: [{ lun: 1, path: lun }],
      initiators: [a.sui],
    });
    const url = `iscsi://127.0.0.1:${tgt.port}/${TARGET}/1`;

    const r = await bootBlkGuest("guest-vmlinux.elf", [{
      id: "vda",
      backend: { kind: "iscsi", url },
    }], {
      identity: { vmId: "vm-a", registry },
    });
    assert.equal(r.status, 0, `${r.reason}\n${r.out}`);
    assert.match(r.out, /blk sector0 the host wrote this LUN/);
    assert.equal(r.out.match(/blk capacity (\d+)/)?.[1], String((4 << 20) / 512));
    assert.match(r.out, /blk write status 0/);
    assert.match(r.out, /blk flush status 0/, "FLUSH is SYNCHRONIZE CACHE");
    assert.match(r.out, /blk readback ok/);
    assert.match(r.out, /blk inflight ok 8/);
    const written = await Deno.readFile(lun);
    assert.equal(written[512 + 1], (1 * 7 + 3) & 0xff, "the guest's write reached the LUN file");

    const err = await bootBlkGuest("guest-vmlinux.elf", [{
      id: "vda",
      backend: { kind: "iscsi", url },
    }], {
      identity: { vmId: "vm-b", registry },
    }).then(() => undefined, (e: unknown) => e);
    assert.ok(err instanceof Error, "VM B does not start");
    assert.match(err.message, /virtio device 'vda'/);
    assert.match(
      err.message,
      /iSCSI login of 'iqn\.[^']+' to 'iqn\.2026-01\.dev\.vmkit\.test:vm-disks' rejected/,
    );
    assert.match(err.message, /authorization failure|not found/);
    assert.ok(!err.message.includes(a.sui), "VM B logs in under its own SUI, not VM A's");
  } finally {
    await tgt.stop();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("an iSCSI drive without a storage identity is refused before any login", async () => {
  const err = await bootBlkGuest("guest-vmlinux.elf", [{
    id: "vda",
    backend: { kind: "iscsi", url: "iscsi://127.0.0.1:1/iqn.2026-01.x:y/1" },
  }]).then(() => undefined, (e: unknown) => e);
  assert.ok(err instanceof Error);
  assert.match(err.message, /needs the VM's storage identity/);
});
