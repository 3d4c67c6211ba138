/**
 * Firecracker's API as its own clients use it (getting-started curl, SDK
 * clients that index `GET /vm/config`, snapshot load bodies from current
 * Firecracker), checked against `firecracker.yaml` rather than against what
 * vmkit's own tests send.
 */

import assert from "node:assert/strict";
import { loadShim } from "../../native/ffi.ts";
import { apiRequest, startApiServer, VmController, VmResources } from "../../vmm/api/mod.ts";
import { parseNetworkInterface } from "../../vmm/api/vm_config_parse.ts";
import { machineApiVm } from "../../vmm/api/launch.ts";
import { DiskHandle } from "../../vmm/disk_handle.ts";
import { HostMemory } from "../../vmm/memory.ts";
import type { DriveConfig } from "../../vmm/io_config.ts";
import { guestMachine } from "../checkpoint/helpers.ts";
import { HostDriver, queueLayout, startBlk } from "./virtio_driver.ts";

await loadShim();

/** `FullVmConfiguration`'s properties in firecracker.yaml: Firecracker writes all of them. */
const FULL_VM_CONFIGURATION_KEYS = [
  "balloon",
  "boot-source",
  "cpu-config",
  "drives",
  "entropy",
  "logger",
  "machine-config",
  "memory-hotplug",
  "metrics",
  "mmds-config",
  "network-interfaces",
  "pmem",
  "vsock",
];

Deno.test("GET /vm/config names every FullVmConfiguration section, and Firecracker's own output reads back as a config file", () => {
  const r = new VmResources();
  r.bootSource = { kernel_image_path: "/k", boot_args: "console=ttyS0" };
  const cfg = JSON.parse(JSON.stringify(r.toJSON())) as Record<string, unknown>;
  assert.deepEqual(Object.keys(cfg).sort(), FULL_VM_CONFIGURATION_KEYS);
  // As a Firecracker 1.x `GET /vm/config` writes it for a VM without those devices.
  const fromFirecracker = {
    "balloon": null,
    "drives": [],
    "boot-source": { kernel_image_path: "/k", initrd_path: null, boot_args: "console=ttyS0" },
    "cpu-config": null,
    "logger": null,
    "machine-config": {
      vcpu_count: 2,
      mem_size_mib: 256,
      smt: false,
      track_dirty_pages: false,
      huge_pages: "None",
    },
    "metrics": null,
    "mmds-config": null,
    "network-interfaces": [],
    "vsock": null,
    "entropy": null,
    "pmem": [],
    "memory-hotplug": null,
  };
  const back = VmResources.fromConfigFile(fromFirecracker);
  assert.equal(back.machine.vcpu_count, 2);
  assert.deepEqual(VmResources.fromConfigFile(cfg).toJSON(), r.toJSON());
  assert.throws(
    () => VmResources.fromConfigFile({ ...fromFirecracker, pmem: [{ id: "p" }] }),
    /pmem/,
  );
});

Deno.test("PUT /snapshot/load takes the fields current Firecracker clients send and refuses what vmkit cannot honour", async () => {
  const dir = await Deno.makeTempDir({ prefix: "vmkit-fc-" });
  const sock = `${dir}/api.sock`;
  const server = await startApiServer(sock, new VmController());
  try {
    const load = (body: Record<string, unknown>) =>
      apiRequest(sock, "PUT", "/snapshot/load", { snapshot_path: `${dir}/none.ckpt`, ...body });
    // Accepted fields: the refusal is about the missing file, not the request.
    for (
      const body of [
        { track_dirty_pages: true, resume_vm: true },
        { enable_diff_snapshots: false, clock_realtime: false, huge_pages: "Snapshot" },
        { mem_backend: { backend_type: "File", backend_path: `${dir}/none.mem` } },
      ]
    ) {
      const r = await load(body);
      assert.equal(r.status, 400);
      const msg = (r.body as { fault_message: string }).fault_message;
      assert.doesNotMatch(msg, /unknown field|must be/, JSON.stringify(body));
      assert.match(msg, /none\.ckpt/);
    }
    for (
      const [body, re] of [
        [
          { mem_file_path: "/m", mem_backend: { backend_type: "File", backend_path: "/m" } },
          /not both/,
        ],
        [{ mem_backend: { backend_type: "Uffd", backend_path: "/uffd.sock" } }, /mem_backend/],
        [{ huge_pages: "2M" }, /huge_pages/],
        [{ clock_realtime: true }, /clock_realtime/],
        [{ vsock_override: { uds_path: "/v.sock" } }, /vsock/],
        [{ track_dirty_pages: "yes" }, /track_dirty_pages/],
      ] as const
    ) {
      const r = await load(body);
      assert.equal(r.status, 400, JSON.stringify(body));
      assert.match((r.body as { fault_message: string }).fault_message, re);
    }
  } finally {
    await server.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a loaded snapshot's vCPUs, memory and drives show in GET /vm/config and take PATCH /drives, as after Firecracker's load (needs /dev/kvm)", async () => {
  const dir = await Deno.makeTempDir({ prefix: "vmkit-fc-" });
  const sock = `${dir}/api.sock`;
  const disk = `${dir}/rootfs.raw`;
  await Deno.writeFile(disk, new Uint8Array(1 << 20));
  const snap = `${dir}/vm.snap`;
  const mem = `${dir}/vm.mem`;
  {
    await using m = await guestMachine(32, "mode=spin", {
      vcpus: 1,
      drives: [{ id: "rootfs", backend: { kind: "file", path: disk }, root: true }],
    });
    const server = await startApiServer(sock, new VmController({ vm: machineApiVm(m) }));
    try {
      await apiRequest(sock, "PATCH", "/vm", { state: "Paused" });
      const r = await apiRequest(sock, "PUT", "/snapshot/create", {
        snapshot_type: "Full",
        snapshot_path: snap,
        mem_file_path: mem,
      });
      // Firecracker's reply to a paused VM's create: 204 once the snapshot is complete.
      assert.equal(r.status, 204, JSON.stringify(r.body));
    } finally {
      await server.close();
    }
  }
  const ctl = new VmController();
  const server = await startApiServer(sock, ctl);
  try {
    const load = await apiRequest(sock, "PUT", "/snapshot/load", {
      snapshot_path: snap,
      mem_backend: { backend_type: "File", backend_path: mem },
      track_dirty_pages: true,
      resume_vm: false,
    });
    assert.equal(load.status, 204, JSON.stringify(load.body));
    const cfg = (await apiRequest(sock, "GET", "/vm/config")).body as {
      "machine-config": { vcpu_count: number; mem_size_mib: number };
      "drives": { drive_id: string; path_on_host: string; is_root_device: boolean }[];
      "boot-source": unknown;
    };
    assert.equal(cfg["machine-config"].mem_size_mib, 32);
    assert.equal(cfg["machine-config"].vcpu_count, 1);
    assert.equal(cfg["boot-source"], null);
    assert.deepEqual(cfg.drives.map((d) => [d.drive_id, d.is_root_device]), [["rootfs", true]]);
    // The drive is found; the restored drive's own file again is a rescan, not a conflict.
    const path = cfg.drives[0]?.path_on_host ?? "";
    const patch = await apiRequest(sock, "PATCH", "/drives/rootfs", {
      drive_id: "rootfs",
      path_on_host: path,
    });
    assert.equal(patch.status, 204, JSON.stringify(patch.body));
    await ctl.vm?.machine?.[Symbol.asyncDispose]();
  } finally {
    await server.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("PATCH /drives with the drive's own file picks up a host-side resize and keeps the image locked against QEMU", async () => {
  const dir = await Deno.makeTempDir({ prefix: "vmkit-fc-" });
  const path = `${dir}/disk.raw`;
  await Deno.writeFile(path, new Uint8Array(1 << 20));
  using mem = HostMemory.create(16 << 20);
  const drive: DriveConfig = { id: "vda", backend: { kind: "file", path, format: "raw" } };
  const host = await startBlk(mem, drive);
  try {
    const d = new HostDriver(mem, host);
    d.negotiate((1n << 32n) | (1n << 29n));
    d.setupQueue(0, queueLayout(0x10000, 64));
    d.driverOk();
    assert.equal(d.config(0, 4), 2048);
    await Deno.truncate(path, 2 << 20); // the host grows the file, as before Firecracker's rescan
    const desc = await new DiskHandle(host, drive).replace({ kind: "file", path, format: "raw" });
    assert.equal(desc.size, 2 << 20);
    assert.equal(d.config(0, 4), 4096, "capacity in sectors after the rescan");
    const q = await new Deno.Command("qemu-io", {
      args: ["-f", "raw", "-c", "write 0 512", path],
      stdout: "piped",
      stderr: "piped",
    }).output();
    assert.notEqual(q.code, 0, "qemu-io wrote an image a running drive holds");
    assert.match(new TextDecoder().decode(q.stderr), /lock/);
  } finally {
    await host.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a network interface takes Firecracker 1.16's mtu (68..65535) through to the device's NetConfig and GET /vm/config", () => {
  const r = new VmResources();
  r.putNet(parseNetworkInterface({ iface_id: "eth0", host_dev_name: "tap0", mtu: 9000 }, "eth0"));
  assert.equal(r.toJSON()["network-interfaces"][0]?.mtu, 9000);
  assert.equal(r.ioConfig().nets[0]?.mtu, 9000);
  for (const mtu of [67, 65536, 1500.5, "1500"]) {
    assert.throws(
      () => parseNetworkInterface({ iface_id: "eth0", host_dev_name: "tap0", mtu }, "eth0"),
      /mtu/,
    );
  }
});

Deno.test("a snapshot's mem_file_path is a plain image of guest RAM, byte for byte at guest-physical offsets, as Firecracker's memory file (needs /dev/kvm)", async () => {
  const dir = await Deno.makeTempDir({ prefix: "vmkit-fcmem-" });
  const sock = `${dir}/api.sock`;
  try {
    await using m = await guestMachine(32, "mode=spin");
    const server = await startApiServer(sock, new VmController({ vm: machineApiVm(m) }));
    try {
      await apiRequest(sock, "PATCH", "/vm", { state: "Paused" });
      // Marks a tool would look for: a page of 0xa5 at 20 MiB, a word at the last page.
      m.memory.write(20 << 20, new Uint8Array(4096).fill(0xa5));
      m.memory.write((32 << 20) - 8, new Uint8Array([1, 2, 3, 4, 5, 6, 7, 8]));
      const ram = m.memory.read(0, 32 << 20);
      const r = await apiRequest(sock, "PUT", "/snapshot/create", {
        snapshot_type: "Full",
        snapshot_path: `${dir}/vm.snap`,
        mem_file_path: `${dir}/vm.mem`,
      });
      assert.equal(r.status, 204, JSON.stringify(r.body));
      const file = await Deno.readFile(`${dir}/vm.mem`);
      assert.equal(file.length, 32 << 20, "exactly the RAM's size");
      assert.equal(file[20 << 20], 0xa5);
      assert.deepEqual(file.subarray((32 << 20) - 8), new Uint8Array([1, 2, 3, 4, 5, 6, 7, 8]));
      const diff = file.findIndex((b, i) => b !== ram[i]);
      assert.equal(diff, -1, `the file is the paused guest's RAM (first difference at ${diff})`);
    } finally {
      await server.close();
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

/**
 * Firecracker's `rebase-snap`: copies every data extent (SEEK_DATA..SEEK_HOLE) of a diff
 * snapshot's memory file onto the base memory file.
 */
function rebaseSnap(base: string, diff: string): void {
  const libc = Deno.dlopen("libc.so.6", {
    open: { parameters: ["buffer", "i32"], result: "i32" },
    lseek: { parameters: ["i32", "i64", "i32"], result: "i64" },
    close: { parameters: ["i32"], result: "i32" },
  });
  const SEEK_DATA = 3, SEEK_HOLE = 4;
  const fd = libc.symbols.open(new TextEncoder().encode(`${diff}\0`), 0);
  assert.ok(fd >= 0, "open the diff memory file");
  try {
    const src = Deno.readFileSync(diff);
    const out = Deno.openSync(base, { read: true, write: true });
    try {
      let at = 0n;
      for (;;) {
        const start = libc.symbols.lseek(fd, at, SEEK_DATA);
        if (start < 0n) break; // ENXIO: no data past `at`
        const end = libc.symbols.lseek(fd, start, SEEK_HOLE);
        out.seekSync(Number(start), Deno.SeekMode.Start);
        out.writeSync(src.subarray(Number(start), Number(end)));
        at = end;
      }
    } finally {
      out.close();
    }
  } finally {
    libc.symbols.close(fd);
    libc.close();
  }
}

Deno.test("a Diff snapshot's memory file holds every page written since the Full one, zeroed pages too, so Firecracker's rebase-snap merge gives the guest's RAM (needs /dev/kvm)", async () => {
  const dir = await Deno.makeTempDir({ dir: "/var/tmp", prefix: "vmkit-fcdiff-" });
  const sock = `${dir}/api.sock`;
  const MIB = 1 << 20;
  try {
    await using m = await guestMachine(32, "mode=spin");
    const server = await startApiServer(sock, new VmController({ vm: machineApiVm(m) }));
    try {
      await apiRequest(sock, "PATCH", "/vm", { state: "Paused" });
      m.memory.write(20 * MIB, new Uint8Array(8192).fill(0xa5));
      const full = await apiRequest(sock, "PUT", "/snapshot/create", {
        snapshot_type: "Full",
        snapshot_path: `${dir}/full.snap`,
        mem_file_path: `${dir}/full.mem`,
      });
      assert.equal(full.status, 204, JSON.stringify(full.body));
      // Since the Full one: a page zeroed (as a guest kernel zeroes the pages it frees) and a
      // page written.
      m.memory.write(20 * MIB, new Uint8Array(4096));
      m.memory.write(8 * MIB, new Uint8Array(4096).fill(0x5a));
      const ram = m.memory.read(0, 32 * MIB);
      const diff = await apiRequest(sock, "PUT", "/snapshot/create", {
        snapshot_type: "Diff",
        snapshot_path: `${dir}/diff.snap`,
        mem_file_path: `${dir}/diff.mem`,
      });
      assert.equal(diff.status, 204, JSON.stringify(diff.body));
      rebaseSnap(`${dir}/full.mem`, `${dir}/diff.mem`);
      const merged = await Deno.readFile(`${dir}/full.mem`);
      assert.equal(merged[8 * MIB], 0x5a);
      assert.equal(merged[20 * MIB + 4096], 0xa5, "the page written before the Full one");
      assert.equal(merged[20 * MIB], 0, "the page zeroed since the Full one");
      const first = merged.findIndex((b, i) => b !== ram[i]);
      assert.equal(first, -1, `the merged file is the guest's RAM (first difference at ${first})`);
    } finally {
      await server.close();
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
