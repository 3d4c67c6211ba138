/**
 * Issue 9.6: Firecracker's configuration API — pre-boot configuration,
 * InstanceStart, the post-boot requests and which state allows which — with
 * a fake launcher (no VM), driven by curl and by a raw HTTP/1.1 client as
 * Firecracker's users write them.
 */

import assert from "node:assert/strict";
import {
  type ApiVm,
  type DriveUpdate,
  type NetUpdate,
  POST_BOOT_MESSAGE,
  PRE_BOOT_MESSAGE,
  startApiServer,
  VmController,
  type VmResources,
} from "../../vmm/api/mod.ts";
import { VERSION } from "../../version.ts";
import { FakeMachine } from "./api_fake.ts";
import { curl, rawRequest } from "./api_raw_client.ts";

class FakeVm extends FakeMachine implements ApiVm {
  ctrlAltDel = 0;
  drives: Array<[string, DriveUpdate]> = [];
  sendCtrlAltDel(): void {
    this.ctrlAltDel++;
  }
  updateDrive(id: string, update: DriveUpdate): Promise<void> {
    this.drives.push([id, update]);
    return Promise.resolve();
  }
  nets: Array<[string, NetUpdate]> = [];
  updateNet(id: string, update: NetUpdate): Promise<void> {
    this.nets.push([id, update]);
    return Promise.resolve();
  }
}

interface Rig {
  sock: string;
  dir: string;
  ctl: VmController;
  launched: VmResources[];
  vm: FakeVm;
  failNext: string | undefined;
}

async function withRig(fn: (rig: Rig) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir();
  const vm = new FakeVm();
  const rig: Rig = {
    sock: `${dir}/fc.sock`,
    dir,
    vm,
    launched: [],
    failNext: undefined,
    ctl: undefined as unknown as VmController,
  };
  rig.ctl = new VmController({
    id: "vm-under-test",
    launch: (r) => {
      if (rig.failNext !== undefined) {
        const msg = rig.failNext;
        rig.failNext = undefined;
        return Promise.reject(new Error(msg));
      }
      rig.launched.push(r);
      vm.state = "Running";
      return Promise.resolve(vm);
    },
  });
  await Deno.writeFile(`${dir}/vmlinux`, new Uint8Array(64));
  await Deno.writeFile(`${dir}/rootfs.ext4`, new Uint8Array(4096));
  await Deno.writeFile(`${dir}/data.img`, new Uint8Array(4096));
  const server = await startApiServer(rig.sock, rig.ctl);
  try {
    await fn(rig);
  } finally {
    await server.close();
    await Deno.remove(dir, { recursive: true });
  }
}

function fault(body: string): string {
  return (JSON.parse(body) as { fault_message: string }).fault_message;
}

Deno.test("firecracker API: configure over curl before boot, InstanceStart, then post-boot only", async () => {
  await withRig(async ({ sock, dir, ctl, launched, vm }) => {
    const info = await curl(sock, "GET", "/");
    assert.equal(info.status, 200);
    assert.deepEqual(JSON.parse(info.body), {
      id: "vm-under-test",
      state: "Not started",
      vmm_version: VERSION,
      app_name: "vmkit",
    });
    assert.deepEqual(JSON.parse((await curl(sock, "GET", "/version")).body), {
      firecracker_version: VERSION,
      vmkit_version: VERSION,
    });
    assert.deepEqual(JSON.parse((await curl(sock, "GET", "/machine-config")).body), {
      vcpu_count: 1,
      mem_size_mib: 128,
      smt: false,
      track_dirty_pages: false,
      huge_pages: "None",
    });
    // The calls of Firecracker's getting-started guide, in its order.
    const put = async (path: string, body: unknown) => await curl(sock, "PUT", path, body);
    assert.equal(
      (await put("/boot-source", {
        kernel_image_path: `${dir}/vmlinux`,
        boot_args: "console=ttyS0 reboot=k panic=1 pci=off",
      })).status,
      204,
    );
    assert.equal(
      (await put("/drives/rootfs", {
        drive_id: "rootfs",
        path_on_host: `${dir}/rootfs.ext4`,
        is_root_device: true,
        is_read_only: false,
      })).status,
      204,
    );
    assert.equal(
      (await put("/drives/data", {
        drive_id: "data",
        path_on_host: `${dir}/data.img`,
        is_root_device: false,
        is_read_only: true,
        rate_limiter: {
          bandwidth: { size: 1048576, refill_time: 100 },
          ops: { size: 0, refill_time: 0 },
        },
      })).status,
      204,
    );
    assert.equal(
      (await put("/network-interfaces/eth0", {
        iface_id: "eth0",
        guest_mac: "06:00:AC:10:00:02",
        host_dev_name: "tap0",
      })).status,
      204,
    );
    assert.equal((await put("/machine-config", { vcpu_count: 2, mem_size_mib: 1024 })).status, 204);
    assert.equal((await curl(sock, "PATCH", "/machine-config", { mem_size_mib: 512 })).status, 204);
    assert.deepEqual(JSON.parse((await curl(sock, "GET", "/vm/config")).body), {
      "boot-source": {
        kernel_image_path: `${dir}/vmlinux`,
        boot_args: "console=ttyS0 reboot=k panic=1 pci=off",
      },
      "machine-config": {
        vcpu_count: 2,
        mem_size_mib: 512,
        smt: false,
        track_dirty_pages: false,
        huge_pages: "None",
      },
      "drives": [
        {
          drive_id: "rootfs",
          path_on_host: `${dir}/rootfs.ext4`,
          is_root_device: true,
          is_read_only: false,
          cache_type: "Unsafe",
          io_engine: "Sync",
        },
        {
          drive_id: "data",
          path_on_host: `${dir}/data.img`,
          is_root_device: false,
          is_read_only: true,
          cache_type: "Unsafe",
          io_engine: "Sync",
          rate_limiter: { bandwidth: { size: 1048576, refill_time: 100 } },
        },
      ],
      "network-interfaces": [{
        iface_id: "eth0",
        host_dev_name: "tap0",
        guest_mac: "06:00:ac:10:00:02",
      }],
      "logger": null,
      "metrics": null,
      "balloon": null,
      "vsock": null,
      "mmds-config": null,
      "entropy": null,
      "cpu-config": null,
      "memory-hotplug": null,
      "pmem": [],
    });
    // Post-boot requests before boot get Firecracker's message.
    for (
      const [method, path, body] of [
        ["PATCH", "/drives/rootfs", { drive_id: "rootfs", path_on_host: `${dir}/data.img` }],
        ["PUT", "/actions", { action_type: "SendCtrlAltDel" }],
        ["PATCH", "/vm", { state: "Paused" }],
      ] as const
    ) {
      const r = await curl(sock, method, path, body);
      assert.equal(r.status, 400, `${method} ${path}`);
      assert.equal(fault(r.body), PRE_BOOT_MESSAGE);
    }
    assert.equal(launched.length, 0);

    assert.equal((await put("/actions", { action_type: "InstanceStart" })).status, 204);
    assert.equal(launched.length, 1);
    // The machine appends virtio_mmio.device= and, for the root drive, root=/dev/vda rw.
    assert.equal(launched[0]?.cmdline("unused"), "console=ttyS0 reboot=k panic=1 pci=off");
    assert.deepEqual(launched[0]?.ioConfig(), {
      drives: [
        {
          id: "rootfs",
          backend: { kind: "file", path: `${dir}/rootfs.ext4` },
          readOnly: false,
          root: true,
        },
        {
          id: "data",
          backend: { kind: "file", path: `${dir}/data.img` },
          readOnly: true,
          root: false,
          rateLimiter: { bandwidth: { size: 1048576, refillTimeMs: 100 } },
        },
      ],
      nets: [{ id: "eth0", tap: "tap0", mac: "06:00:ac:10:00:02" }],
    });
    assert.equal(JSON.parse((await curl(sock, "GET", "/")).body).state, "Running");
    assert.equal(ctl.state, "Running");

    // Pre-boot requests after boot get Firecracker's message.
    for (
      const [path, body] of [
        ["/machine-config", { vcpu_count: 1, mem_size_mib: 128 }],
        ["/boot-source", { kernel_image_path: `${dir}/vmlinux` }],
        ["/drives/x", { drive_id: "x", path_on_host: `${dir}/data.img`, is_root_device: false }],
        ["/network-interfaces/eth1", { iface_id: "eth1", host_dev_name: "tap1" }],
        ["/actions", { action_type: "InstanceStart" }],
        ["/logger", { level: "Info" }],
        ["/metrics", { metrics_path: `${dir}/m` }],
      ] as const
    ) {
      const r = await put(path, body);
      assert.equal(r.status, 400, path);
      assert.equal(fault(r.body), POST_BOOT_MESSAGE);
    }
    assert.equal(launched.length, 1);

    const swap = await curl(sock, "PATCH", "/drives/data", {
      drive_id: "data",
      path_on_host: `${dir}/rootfs.ext4`,
    });
    assert.equal(swap.status, 204, swap.body);
    assert.deepEqual(vm.drives, [["data", { path: `${dir}/rootfs.ext4` }]]);
    const cfg = JSON.parse((await curl(sock, "GET", "/vm/config")).body);
    assert.equal(cfg.drives[1].path_on_host, `${dir}/rootfs.ext4`);
    const unknown = await curl(sock, "PATCH", "/drives/nope", {
      drive_id: "nope",
      path_on_host: `${dir}/data.img`,
    });
    assert.equal(unknown.status, 400);
    assert.match(fault(unknown.body), /no drive 'nope'/);
    const missing = await curl(sock, "PATCH", "/drives/data", {
      drive_id: "data",
      path_on_host: `${dir}/gone.img`,
    });
    assert.equal(missing.status, 400);
    assert.match(fault(missing.body), /gone\.img' cannot be opened: no such file/);

    assert.equal((await put("/actions", { action_type: "SendCtrlAltDel" })).status, 204);
    assert.equal(vm.ctrlAltDel, 1);
    assert.equal((await curl(sock, "PATCH", "/vm", { state: "Paused" })).status, 204);
    assert.equal(JSON.parse((await curl(sock, "GET", "/")).body).state, "Paused");
    const flush = await put("/actions", { action_type: "FlushMetrics" });
    assert.equal(flush.status, 400);
    assert.match(fault(flush.body), /metrics system is not configured/);
  });
});

Deno.test("firecracker API: PATCH /network-interfaces replaces a running NIC's rate limiters, merged as Firecracker does", async () => {
  await withRig(async ({ sock, dir, vm }) => {
    const put = async (path: string, body: unknown) => await curl(sock, "PUT", path, body);
    assert.equal(
      (await put("/boot-source", { kernel_image_path: `${dir}/vmlinux` })).status,
      204,
    );
    assert.equal(
      (await put("/network-interfaces/eth0", {
        iface_id: "eth0",
        host_dev_name: "tap0",
        rx_rate_limiter: { bandwidth: { size: 1024, one_time_burst: 1048576, refill_time: 1000 } },
        tx_rate_limiter: { bandwidth: { size: 1024, refill_time: 1000 } },
      })).status,
      204,
    );
    assert.equal((await put("/actions", { action_type: "InstanceStart" })).status, 204);
    // Firecracker's example: RX gains an ops bucket and a new bandwidth; TX is left alone.
    const rx = await curl(sock, "PATCH", "/network-interfaces/eth0", {
      iface_id: "eth0",
      rx_rate_limiter: {
        bandwidth: { size: 1048576, refill_time: 1000 },
        ops: { size: 2000, refill_time: 1000 },
      },
    });
    assert.equal(rx.status, 204, rx.body);
    // Then TX's limit is removed with 0-sized buckets.
    const tx = await curl(sock, "PATCH", "/network-interfaces/eth0", {
      iface_id: "eth0",
      tx_rate_limiter: { bandwidth: { size: 0, refill_time: 0 }, ops: { size: 0, refill_time: 0 } },
    });
    assert.equal(tx.status, 204, tx.body);
    assert.deepEqual(vm.nets, [
      ["eth0", {
        rxRateLimiter: {
          bandwidth: { size: 1048576, refillTimeMs: 1000 },
          ops: { size: 2000, refillTimeMs: 1000 },
        },
      }],
      ["eth0", {
        txRateLimiter: {
          bandwidth: { size: 0, refillTimeMs: 0 },
          ops: { size: 0, refillTimeMs: 0 },
        },
      }],
    ]);
    const cfg = JSON.parse((await curl(sock, "GET", "/vm/config")).body);
    assert.deepEqual(cfg["network-interfaces"], [{
      iface_id: "eth0",
      host_dev_name: "tap0",
      rx_rate_limiter: {
        bandwidth: { size: 1048576, refill_time: 1000 },
        ops: { size: 2000, refill_time: 1000 },
      },
    }]);
    const unknown = await curl(sock, "PATCH", "/network-interfaces/eth9", {
      iface_id: "eth9",
      rx_rate_limiter: { ops: { size: 1, refill_time: 1 } },
    });
    assert.equal(unknown.status, 400);
    assert.match(fault(unknown.body), /no network interface 'eth9'/);
    assert.equal(vm.nets.length, 2);
  });
});

Deno.test("firecracker API: a raw HTTP/1.1 client gets the same answers, and errors name the field", async () => {
  await withRig(async ({ sock, dir }) => {
    const cases: Array<[string, string, unknown, RegExp]> = [
      [
        "PUT",
        "/machine-config",
        { vcpu_count: 0, mem_size_mib: 128 },
        /'vcpu_count' .* 1\.\.64, got 0/,
      ],
      ["PUT", "/machine-config", { vcpu_count: "2", mem_size_mib: 128 }, /'vcpu_count' .* got "2"/],
      ["PUT", "/machine-config", { vcpu_count: 1 }, /'mem_size_mib' .* got nothing/],
      ["PUT", "/machine-config", { vcpu_count: 2, mem_size_mib: 128, smt: true }, /no SMT/],
      [
        "PUT",
        "/machine-config",
        { vcpu_count: 1, mem_size_mib: 128, huge_pages: "2M" },
        /4 KiB pages/,
      ],
      [
        "PUT",
        "/machine-config",
        { vcpu_count: 1, mem_size_mib: 128, cpu_template: "T2" },
        /CPU templates/,
      ],
      [
        "PUT",
        "/machine-config",
        { vcpu_count: 1, mem_size_mib: 128, foo: 1 },
        /unknown field 'foo'/,
      ],
      ["PUT", "/boot-source", {}, /'kernel_image_path' .* must be a string/],
      [
        "PUT",
        "/boot-source",
        { kernel_image_path: `${dir}/nope` },
        /cannot be opened: no such file/,
      ],
      ["PUT", "/boot-source", { kernel_image_path: dir }, /is a directory/],
      [
        "PUT",
        "/drives/rootfs",
        { drive_id: "other", path_on_host: `${dir}/data.img`, is_root_device: true },
        /id from the path \[rootfs\] does not match the id from the body \[other\]/,
      ],
      [
        "PUT",
        "/drives/bad-id",
        { drive_id: "bad-id", path_on_host: "x", is_root_device: false },
        /letters, digits/,
      ],
      ["PUT", "/drives/d", { drive_id: "d", path_on_host: `${dir}/data.img` }, /'is_root_device'/],
      [
        "PUT",
        "/drives/d",
        { drive_id: "d", path_on_host: `${dir}/data.img`, is_root_device: false, socket: "/s" },
        /vhost-user/,
      ],
      [
        "PUT",
        "/drives/d",
        { drive_id: "d", path_on_host: "iscsi://host/iqn.2024-01.x:y", is_root_device: false },
        /not iscsi:\/\/HOST\[:PORT\]\/TARGET\/LUN/,
      ],
      [
        "PUT",
        "/drives/d",
        {
          drive_id: "d",
          path_on_host: `${dir}/data.img`,
          is_root_device: false,
          rate_limiter: { ops: { size: 10 } },
        },
        /'refill_time' of drive rate_limiter\.ops/,
      ],
      ["PUT", "/network-interfaces/eth0", { iface_id: "eth0" }, /'host_dev_name'/],
      [
        "PUT",
        "/network-interfaces/eth0",
        { iface_id: "eth0", host_dev_name: "tap0", guest_mac: "01:00:00:00:00:01" },
        /multicast/,
      ],
      [
        "PUT",
        "/network-interfaces/eth0",
        { iface_id: "eth0", host_dev_name: "a-name-longer-than-15" },
        /1 to 15 bytes/,
      ],
      ["PUT", "/actions", { action_type: "InstanceStart" }, /without a kernel/],
      ["PUT", "/actions", { action_type: "Reboot" }, /must be one of InstanceStart/],
      ["PUT", "/logger", { level: "Loud" }, /one of Off, Error/],
      ["PUT", "/vsock", { guest_cid: 3, uds_path: "/tmp/v.sock" }, /vmkit has no vsock device/],
      ["PUT", "/balloon", { amount_mib: 1, deflate_on_oom: true }, /no balloon device/],
      ["GET", "/mmds", undefined, /vmkit has no MMDS: GET \/mmds is not supported/],
    ];
    for (const [method, path, body, re] of cases) {
      const r = await rawRequest(sock, method, path, body);
      assert.equal(r.status, 400, `${method} ${path} ${JSON.stringify(body)}: ${r.body}`);
      assert.equal(r.headers["content-type"], "application/json");
      assert.match(fault(r.body), re, `${method} ${path}`);
    }
    // A second root device, and a TAP or MAC used twice.
    const root = { path_on_host: `${dir}/data.img`, is_root_device: true };
    assert.equal(
      (await rawRequest(sock, "PUT", "/drives/a", { drive_id: "a", ...root })).status,
      204,
    );
    const two = await rawRequest(sock, "PUT", "/drives/b", { drive_id: "b", ...root });
    assert.equal(two.status, 400);
    assert.match(fault(two.body), /root block device already exists \('a'\)/);
    // Replacing drive a itself (still root) is fine.
    assert.equal(
      (await rawRequest(sock, "PUT", "/drives/a", { drive_id: "a", ...root })).status,
      204,
    );
    const nic = { host_dev_name: "tap0", guest_mac: "06:00:00:00:00:01" };
    assert.equal(
      (await rawRequest(sock, "PUT", "/network-interfaces/n1", { iface_id: "n1", ...nic })).status,
      204,
    );
    const dupTap = await rawRequest(sock, "PUT", "/network-interfaces/n2", {
      iface_id: "n2",
      ...nic,
    });
    assert.match(fault(dupTap.body), /host_dev_name 'tap0' is already used by interface 'n1'/);
    const dupMac = await rawRequest(sock, "PUT", "/network-interfaces/n2", {
      iface_id: "n2",
      host_dev_name: "tap1",
      guest_mac: "06:00:00:00:00:01",
    });
    assert.match(fault(dupMac.body), /guest_mac '06:00:00:00:00:01' is already used/);
    const ok = await rawRequest(sock, "GET", "/vm/config");
    assert.equal(ok.status, 200);
    assert.equal(JSON.parse(ok.body).drives.length, 1);
  });
});

Deno.test("firecracker API: a failed InstanceStart leaves the VM configurable, a retry starts it", async () => {
  await withRig(async (rig) => {
    await curl(rig.sock, "PUT", "/boot-source", { kernel_image_path: `${rig.dir}/vmlinux` });
    rig.failNext = "the kernel is not an ELF or bzImage";
    const r = await curl(rig.sock, "PUT", "/actions", { action_type: "InstanceStart" });
    assert.equal(r.status, 400);
    assert.equal(fault(r.body), "cannot start the microVM: the kernel is not an ELF or bzImage");
    assert.equal(rig.ctl.state, "Not started");
    assert.equal(
      (await curl(rig.sock, "PUT", "/machine-config", { vcpu_count: 1, mem_size_mib: 64 })).status,
      204,
    );
    assert.equal(
      (await curl(rig.sock, "PUT", "/actions", { action_type: "InstanceStart" })).status,
      204,
    );
    assert.equal(rig.launched[0]?.machine.mem_size_mib, 64);
    assert.equal(await rig.ctl.launched(), rig.vm);
  });
});

Deno.test("firecracker API: concurrent InstanceStarts launch once", async () => {
  await withRig(async (rig) => {
    await curl(rig.sock, "PUT", "/boot-source", { kernel_image_path: `${rig.dir}/vmlinux` });
    const replies = await Promise.all(
      Array.from(
        { length: 5 },
        () => rawRequest(rig.sock, "PUT", "/actions", { action_type: "InstanceStart" }),
      ),
    );
    assert.deepEqual(replies.map((r) => r.status).sort(), [204, 400, 400, 400, 400]);
    assert.equal(rig.launched.length, 1);
  });
});

Deno.test("firecracker API: Shutdown before start ends the wait without launching", async () => {
  await withRig(async (rig) => {
    assert.equal(
      (await curl(rig.sock, "PUT", "/actions", { action_type: "Shutdown" })).status,
      204,
    );
    assert.equal(await rig.ctl.launched(), undefined);
    assert.equal(rig.ctl.state, "Stopped");
    const late = await curl(rig.sock, "PUT", "/boot-source", {
      kernel_image_path: `${rig.dir}/vmlinux`,
    });
    assert.equal(late.status, 400);
    assert.equal(rig.launched.length, 0);
  });
});

Deno.test("firecracker API: a route set added from another file can adopt a VM before boot", async () => {
  const dir = await Deno.makeTempDir();
  const vm = new FakeVm();
  const ctl = new VmController();
  const server = await startApiServer(`${dir}/s`, ctl, {
    routes: [{
      method: "PUT",
      path: "/test/adopt",
      handler: async (c) => {
        const body = await c.body();
        await ctl.adopt(() => {
          vm.state = body.resume_vm === true ? "Running" : "Paused";
          return Promise.resolve(vm);
        });
        return new Response(null, { status: 204 });
      },
    }],
  });
  try {
    const r = await rawRequest(`${dir}/s`, "PUT", "/test/adopt", { resume_vm: false });
    assert.equal(r.status, 204);
    assert.equal(ctl.state, "Paused");
    const again = await rawRequest(`${dir}/s`, "PUT", "/test/adopt", {});
    assert.equal(again.status, 400);
    assert.equal(fault(again.body), POST_BOOT_MESSAGE);
    assert.equal((await rawRequest(`${dir}/s`, "PATCH", "/vm", { state: "Resumed" })).status, 204);
    assert.equal(vm.state, "Running");
  } finally {
    await server.close();
    await Deno.remove(dir, { recursive: true });
  }
});
