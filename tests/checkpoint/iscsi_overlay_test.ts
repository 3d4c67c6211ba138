/**
 * The disk step for a drive that is an iSCSI LUN (a private tgtd, the LUN
 * masked to the VM's own SUI): the checkpoint puts a qcow2 overlay given by
 * the caller over the LUN (backing file `iscsi://…`, format raw, as qemu-img
 * writes it), switches inside the pause, and keeps the LUN as the frozen
 * parent. The guest keeps writing sequence numbers to its disk (`blk.seq`);
 * at the pause the test reads the LUN's backing file as the reference.
 */
import assert from "node:assert/strict";
import { Checkpointer } from "../../checkpoint/mod.ts";
import { openCheckpoint } from "../../checkpoint/reader.ts";
import { openImageAsync } from "../../cow/chain.ts";
import { RawImage } from "../../cow/raw.ts";
import type { MachineCpuState } from "../../checkpoint/target.ts";
import { FileSuiRegistry } from "../../san/mod.ts";
import { MachineTarget, restoreMachine } from "../../vmm/checkpoint.ts";
import { defaultDeviceSpecs } from "../../vmm/devices/mod.ts";
import { Machine } from "../../vmm/machine.ts";
import { apiRequest, startApiServer, VmController } from "../../vmm/api/mod.ts";
import { machineApiVm } from "../../vmm/api/launch.ts";
import { vmkit } from "../vmm/run_helpers.ts";
import { buildGuests } from "../guests/build.ts";
import { backingFile, Tgtd } from "../san/tgt.ts";
import { bootBlkGuest } from "../vmm/virtio_blk_guest.ts";
import { sleep, waitForText } from "./helpers.ts";

const LUN_BYTES = 1 << 20;
const SEQ_FIRST = 16;
const SEQ_SECTORS = 64;
const SEQ_DONE = 0xf00000;
const TARGET = "iqn.2026-01.dev.vmkit.test:ckpt-lun";
/** Sector 0 of the LUN: 24 bytes the mode=blk guest prints as it reads them. */
const MARK = "checkpointed LUN sector0";

function sectorValue(disk: Uint8Array, k: number): number {
  return new DataView(disk.buffer, disk.byteOffset + (SEQ_FIRST + k) * 512, 4).getUint32(0, true);
}

/** Every sector of the guest's range holds a value of its residue, all near `done`. */
function assertConsistent(disk: Uint8Array, done: number, what: string): void {
  let seen = 0;
  for (let k = 0; k < SEQ_SECTORS; k++) {
    const v = sectorValue(disk, k);
    if (v === 0) continue;
    seen++;
    assert.equal(v % SEQ_SECTORS, k, `${what}: sector ${k} holds ${v}`);
    assert.ok(v <= done + 1 && v + SEQ_SECTORS > done - SEQ_SECTORS, `${what}: ${v} vs ${done}`);
  }
  assert.ok(seen > 0, `${what}: no sequence numbers`);
}

/** The whole disk an overlay chain over the LUN shows, reading the LUN's file on the host. */
async function readOverLun(overlay: string, lunFile: string): Promise<Uint8Array> {
  const img = await openImageAsync(overlay, {
    readOnly: true,
    forceShare: true,
    openBacking: () => RawImage.open(lunFile, { readOnly: true, lock: "force-share" }),
  });
  try {
    const buf = new Uint8Array(img.size);
    await img.read(0, buf);
    return buf;
  } finally {
    await img.close();
  }
}

async function qemu(cmd: string, ...args: string[]): Promise<string> {
  const out = await new Deno.Command(cmd, { args, stdout: "piped", stderr: "piped" }).output();
  const text = new TextDecoder().decode(out.stdout) + new TextDecoder().decode(out.stderr);
  assert.equal(out.code, 0, `${cmd} ${args.join(" ")}:\n${text}`);
  return text;
}

/**
 * A qcow2 chain (top first) over the LUN as QEMU opens it, with the LUN
 * logged in under `initiator` through QEMU's own iSCSI driver (libiscsi).
 */
function qemuSpec(chain: string[], port: number, initiator: string): string {
  let spec: Record<string, unknown> = {
    driver: "iscsi",
    transport: "tcp",
    portal: `127.0.0.1:${port}`,
    target: TARGET,
    lun: 1,
    "initiator-name": initiator,
  };
  for (const path of [...chain].reverse()) {
    spec = { driver: "qcow2", file: { driver: "file", filename: path }, backing: spec };
  }
  return `json:${JSON.stringify(spec)}`;
}

/** Copies files and the guest's count inside the pause (the drive already switched). */
class PauseCopy extends MachineTarget {
  files: Uint8Array[] = [];
  done = 0;
  constructor(machine: Machine, public paths: string[]) {
    super(machine);
  }
  override saveCpuState(): MachineCpuState {
    this.files = this.paths.map((p) => Deno.readFileSync(p));
    this.done = new DataView(this.machine.memory.read(SEQ_DONE, 4).buffer).getUint32(0, true);
    return super.saveCpuState();
  }
}

interface Recorded {
  policy: string;
  disks: {
    layers: {
      path: string;
      format: string;
      identity?: unknown;
      lun?: {
        url: string;
        initiatorName: string;
        identity: { bytes: number; designators: unknown[] };
      };
    }[];
  }[];
}

Deno.test("an iSCSI drive is checkpointed through a given qcow2 overlay over the LUN: the LUN keeps the pause instant, later writes land in the overlay, QEMU reads the chain, a restore reads the checkpoint's bytes, a changed LUN is refused (needs /dev/kvm, tgtd)", async () => {
  const dir = await Deno.makeTempDir({ prefix: "vmkit-ckpt-lun-" });
  const registry = `${dir}/sui.journal`;
  const reg = await FileSuiRegistry.open(registry);
  const sui = (await reg.alloc("vm-a", "iqn")).sui;
  await reg.close();
  const tgt = await Tgtd.start();
  try {
    const lunFile = await backingFile(dir, "lun1.img", LUN_BYTES);
    // Bytes everywhere but the guest's range, so reads that reach the LUN are seen to.
    const content = new Uint8Array(LUN_BYTES);
    for (let i = 0; i < content.length; i++) content[i] = (i * 131 + (i >> 9)) & 0xff;
    content.fill(0, SEQ_FIRST * 512, (SEQ_FIRST + SEQ_SECTORS) * 512);
    content.set(new TextEncoder().encode(MARK), 0);
    await Deno.writeFile(lunFile, content);
    await tgt.addTarget({
      tid: 1,
      name: TARGET,
      luns: [{ lun: 1, path: lunFile }],
      initiators: [sui],
    });
    const url = `iscsi://127.0.0.1:${tgt.port}/${TARGET}/1`;
    const serial = `${dir}/serial.log`;
    await Deno.writeTextFile(serial, "");
    const ckpt = `${dir}/vm.ckpt`;
    const ckpt2 = `${dir}/vm2.ckpt`;
    const overlay = `${dir}/vda.ckpt.qcow2`;
    let reference: Uint8Array = new Uint8Array();
    let reference2: Uint8Array = new Uint8Array();
    let overlay2 = "";
    let done = 0;
    {
      await using m = await Machine.create({
        memMiB: 32,
        vcpus: 1,
        kernel: await Deno.readFile(`${await buildGuests()}guest-pvh.elf`),
        cmdline: "mode=blk blk.seq",
        devices: defaultDeviceSpecs({ memMiB: 32, serialOut: { path: serial }, serialIn: false }),
        drives: [{ id: "vda", backend: { kind: "iscsi", url } }],
        identity: { vmId: "vm-a", registry },
      });
      await m.start();
      await waitForText(serial, /^blk seq$/m);
      await sleep(200);
      const target = new PauseCopy(m, [lunFile]);
      using cp = await Checkpointer.create(target);

      // Without an overlay file: refused with the reason, nothing written, the VM runs on.
      const files = [...Deno.readDirSync(dir)].map((e) => e.name).sort();
      await assert.rejects(
        cp.checkpoint({ path: ckpt }),
        (e: Error) =>
          /disk 'vda' is the iSCSI LUN iscsi:\/\/127\.0\.0\.1:\d+\/iqn[^ ]+\/1: a checkpoint freezes a disk by putting a qcow2 overlay file over it/
            .test(e.message) &&
          /"disk_overlays"/.test(e.message) && /--overlay vda=PATH/.test(e.message),
      );
      await assert.rejects(
        cp.checkpoint({ path: ckpt, diskPolicy: "copy-parent", overlays: { vda: overlay } }),
        /copy-parent .* vmkit copies and commits local image files only; use keep-parent/,
      );
      assert.deepEqual([...Deno.readDirSync(dir)].map((e) => e.name).sort(), files);
      assert.equal((await m.disk("vda")?.describe())?.kind, "iscsi", "the drive is still the LUN");

      const save = await cp.checkpoint({ path: ckpt, overlays: { vda: overlay } });
      const summary = await save.done;
      assert.equal(summary.warning, undefined);
      assert.ok(target.done > 0, "the guest wrote nothing before the pause");
      reference = target.files[0] ?? new Uint8Array();
      assertConsistent(reference, target.done, "the LUN at the pause");
      // Past the guest's first sectors the LUN still holds what the host wrote.
      assert.deepEqual(reference.subarray(64 * 1024), content.subarray(64 * 1024));

      // The record: the LUN by URL, SUI and identity.
      using chain = await openCheckpoint(ckpt);
      const rec = chain.top.disks() as unknown as Recorded;
      assert.equal(rec.policy, "keep-parent");
      const layer = rec.disks[0]?.layers[0];
      assert.equal(layer?.path, url);
      assert.equal(layer?.format, "raw");
      assert.equal(layer?.lun?.url, url);
      assert.equal(layer?.lun?.initiatorName, sui);
      assert.equal(layer?.lun?.identity.bytes, LUN_BYTES);
      assert.ok(
        (layer?.lun?.identity.designators.length ?? 0) > 0,
        "VPD 0x83 designators recorded",
      );

      // The VM goes on in the overlay over the LUN; QEMU reads the chain as vmkit made it.
      const now = await m.disk("vda")?.describe();
      assert.equal(now?.kind, "file");
      assert.deepEqual(now?.layers.map((l) => l.path), [overlay, url]);
      const info = JSON.parse(await qemu("qemu-img", "info", "-U", "--output", "json", overlay));
      assert.equal(info["backing-filename"], url);
      assert.equal(info["backing-filename-format"], "raw");

      await sleep(400);
      assert.deepEqual(Deno.readFileSync(lunFile), reference, "the LUN changed after the pause");

      // A second checkpoint: its overlay goes over the first (a file) over the LUN.
      const done1 = target.done;
      target.paths = [overlay, lunFile];
      await (await cp.checkpoint({ path: ckpt2 })).done;
      const target2 = target;
      assert.ok(target2.done > done1 + SEQ_SECTORS, "the guest wrote too little between");
      using c2 = await openCheckpoint(ckpt2);
      const rec2 = c2.top.disks() as unknown as Recorded;
      assert.deepEqual(rec2.disks[0]?.layers.map((l) => l.path), [overlay, url]);
      assert.ok(rec2.disks[0]?.layers[0]?.identity !== undefined, "the overlay's file identity");
      assert.equal(rec2.disks[0]?.layers[1]?.lun?.url, url);
      assert.equal((Deno.statSync(overlay).mode ?? 0) & 0o222, 0, "the kept overlay is read-only");
      const d2 = await m.disk("vda")?.describe();
      overlay2 = d2?.layers[0]?.path ?? "";
      assert.deepEqual(d2?.layers.map((l) => l.path), [overlay2, overlay, url]);
      // The first overlay and the LUN at the second pause, as files, read as a chain.
      await Deno.writeFile(`${dir}/ref2.qcow2`, target2.files[0] ?? new Uint8Array());
      await Deno.writeFile(`${dir}/ref2.lun`, target2.files[1] ?? new Uint8Array());
      reference2 = await readOverLun(`${dir}/ref2.qcow2`, `${dir}/ref2.lun`);
      assertConsistent(reference2, target2.done, "the disk at the second pause");
      Deno.removeSync(`${dir}/ref2.qcow2`);
      Deno.removeSync(`${dir}/ref2.lun`);

      await sleep(300);
      await m.quiesceDevices();
      await m.pause();
      done = new DataView(m.memory.read(SEQ_DONE, 4).buffer).getUint32(0, true);
      assert.ok(
        done > target2.done + SEQ_SECTORS,
        `the guest wrote only ${done - target2.done} more`,
      );
      assert.deepEqual(Deno.readFileSync(lunFile), reference, "the LUN changed after the pause");
    } // closing the machine flushes the overlays' metadata

    const later = await readOverLun(overlay2, lunFile);
    assertConsistent(later, done, "the top overlay after the checkpoints");
    assert.equal(sectorValue(later, done % SEQ_SECTORS), done, "the last write is in the overlay");
    assert.deepEqual(await readOverLun(overlay, lunFile), reference2, "the kept overlay changed");
    // QEMU, logged in to the LUN with the VM's SUI, sees the same disk through the chain.
    const laterRaw = `${dir}/later.raw`;
    await Deno.writeFile(laterRaw, later);
    const spec = qemuSpec([overlay2, overlay], tgt.port, sui);
    assert.match(
      await qemu("qemu-img", "compare", "-f", "raw", laterRaw, spec),
      /Images are identical/,
    );
    assert.match(await qemu("qemu-img", "check", spec), /No errors were found/);
    assert.match(
      await qemu("qemu-img", "check", qemuSpec([overlay], tgt.port, sui)),
      /No errors were found/,
    );
    Deno.removeSync(laterRaw);

    // Restore: a fresh overlay over the LUN, logged in under the restored VM's SUI.
    let restoredDone = 0;
    let restoredDisk = "";
    {
      await using r = await restoreMachine(ckpt, { vmGenId: false });
      const d = await r.machine.disk("vda")?.describe();
      const fresh = d?.layers[0]?.path ?? "";
      assert.ok(fresh.startsWith(`${dir}/vm.ckpt.vda.`), `restored onto ${fresh}`);
      assert.equal(d?.layers[1]?.path, url);
      assert.equal(d?.initiatorName, sui);
      assert.deepEqual(await readOverLun(fresh, lunFile), reference, "the restored disk");
      await r.machine.start();
      await sleep(300);
      await r.machine.quiesceDevices();
      await r.machine.pause();
      restoredDone = new DataView(r.machine.memory.read(SEQ_DONE, 4).buffer).getUint32(0, true);
      restoredDisk = fresh;
    }
    assertConsistent(
      await readOverLun(restoredDisk, lunFile),
      restoredDone,
      "the restored VM's disk",
    );
    assert.equal(
      sectorValue(await readOverLun(restoredDisk, lunFile), restoredDone % SEQ_SECTORS),
      restoredDone,
      "the restored VM's last write is in its overlay",
    );
    // A VM booted on the restored disk reads the checkpointed LUN's bytes through the chain,
    // logged in to the LUN under its own SUI (the LUN read-only below the overlay).
    const boot = await bootBlkGuest("guest-pvh.elf", [{
      id: "vda",
      backend: { kind: "file", path: restoredDisk, format: "qcow2" },
    }], { identity: { vmId: "vm-a", registry } });
    assert.equal(boot.status, 0, `${boot.reason}\n${boot.out}`);
    assert.match(boot.out, new RegExp(`blk sector0 ${MARK}`));
    assert.match(boot.out, /blk write status 0/);
    assert.match(boot.out, /blk readback ok/);
    assert.match(boot.out, /blk inflight ok 8/);
    assert.deepEqual(Deno.readFileSync(lunFile), reference, "the restore wrote to the LUN");
    // The second checkpoint restores onto its chain: the kept overlay over the LUN.
    {
      await using r = await restoreMachine(ckpt2, { vmGenId: false });
      const d = await r.machine.disk("vda")?.describe();
      assert.deepEqual(d?.layers.slice(1).map((l) => l.path), [overlay, url]);
      assert.deepEqual(await readOverLun(d?.layers[0]?.path ?? "", lunFile), reference2);
    }

    // A changed LUN is refused before anything is created: its bytes, then its identity.
    const files = [...Deno.readDirSync(dir)].length;
    const f = await Deno.open(lunFile, { write: true });
    await f.write(new Uint8Array([0x5a]));
    f.close();
    await assert.rejects(
      restoreMachine(ckpt),
      /disk 'vda': the iSCSI LUN iscsi:\S+ changed since the checkpoint \(its first 64 KiB changed\)/,
    );
    await Deno.writeFile(lunFile, reference);
    await tgt.adm([
      "--mode",
      "logicalunit",
      "--op",
      "update",
      "--tid",
      "1",
      "--lun",
      "1",
      "--params",
      "scsi_id=another-lun",
    ]);
    await assert.rejects(
      restoreMachine(ckpt),
      /changed since the checkpoint \(its device identification \(VPD page 0x83\)/,
    );
    assert.equal([...Deno.readDirSync(dir)].length, files, "a refused restore left files");
  } finally {
    await tgt.stop();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("PUT /snapshot/create takes an iSCSI drive's overlay in disk_overlays and refuses without it; vmkit checkpoint create --overlay ID=PATH passes it (needs /dev/kvm, tgtd)", async () => {
  const dir = await Deno.makeTempDir({ prefix: "vmkit-ckpt-lun-api-" });
  const registry = `${dir}/sui.journal`;
  const reg = await FileSuiRegistry.open(registry);
  const sui = (await reg.alloc("vm-api", "iqn")).sui;
  await reg.close();
  const tgt = await Tgtd.start();
  try {
    const lunFile = await backingFile(dir, "lun1.img", LUN_BYTES);
    await tgt.addTarget({
      tid: 1,
      name: TARGET,
      luns: [{ lun: 1, path: lunFile }],
      initiators: [sui],
    });
    const url = `iscsi://127.0.0.1:${tgt.port}/${TARGET}/1`;
    const sock = `${dir}/api.sock`;
    await using m = await Machine.create({
      memMiB: 32,
      vcpus: 1,
      kernel: await Deno.readFile(`${await buildGuests()}guest-pvh.elf`),
      cmdline: "mode=blk blk.seq",
      devices: defaultDeviceSpecs({ memMiB: 32, serialOut: "none", serialIn: false }),
      drives: [{ id: "vda", backend: { kind: "iscsi", url } }],
      identity: { vmId: "vm-api", registry },
    });
    await m.start();
    const server = await startApiServer(sock, new VmController({ vm: machineApiVm(m) }));
    try {
      const none = await apiRequest(sock, "PUT", "/snapshot/create", {
        snapshot_path: `${dir}/a.ckpt`,
      });
      assert.equal(none.status, 400);
      assert.match(JSON.stringify(none.body), /is the iSCSI LUN iscsi:.*disk_overlays/);
      for (
        const bad of [
          { disk_overlays: { vda: "x" } },
          { disk_overlays: [{ drive_id: "vda" }] },
          { disk_overlays: [{ drive_id: "vda", path_on_host: "/x", extra: 1 }] },
          { disk_overlays: [{ drive_id: "nope", path_on_host: `${dir}/n.qcow2` }] },
        ]
      ) {
        const r = await apiRequest(sock, "PUT", "/snapshot/create", {
          snapshot_path: `${dir}/a.ckpt`,
          ...bad,
        });
        assert.equal(r.status, 400, JSON.stringify(bad));
      }
      const overlay = `${dir}/vda.api.qcow2`;
      const ok = await apiRequest(sock, "PUT", "/snapshot/create", {
        snapshot_path: `${dir}/a.ckpt`,
        disk_overlays: [{ drive_id: "vda", path_on_host: overlay }],
      });
      assert.equal(ok.status, 200, JSON.stringify(ok.body));
      for (;;) {
        const st = await apiRequest(sock, "GET", "/snapshot");
        const state = (st.body as { state: string }).state;
        if (state === "saving") {
          await sleep(50);
          continue;
        }
        assert.equal(state, "done", JSON.stringify(st.body));
        break;
      }
      const info = JSON.parse(await qemu("qemu-img", "info", "-U", "--output", "json", overlay));
      assert.equal(info["backing-filename"], url);

      // The CLI: the drive now runs on that overlay (a file over the LUN), which takes a new one.
      const next = `${dir}/vda.cli.qcow2`;
      const r = await vmkit([
        "checkpoint",
        "create",
        "--api-sock",
        sock,
        "--overlay",
        `vda=${next}`,
        "--wait",
        `${dir}/b.ckpt`,
      ]);
      assert.equal(r.code, 0, r.stderr);
      assert.deepEqual((await m.disk("vda")?.describe())?.layers.map((l) => l.path), [
        next,
        overlay,
        url,
      ]);
      const bad = await vmkit([
        "checkpoint",
        "create",
        "--api-sock",
        sock,
        "--overlay",
        "vda",
        `${dir}/c.ckpt`,
      ]);
      assert.equal(bad.code, 64, bad.stderr);
      assert.match(bad.stderr, /--overlay takes ID=PATH/);
    } finally {
      await server.close();
    }
  } finally {
    await tgt.stop();
    await Deno.remove(dir, { recursive: true });
  }
});
