import assert from "node:assert/strict";
import { VmConfigError, VmResources } from "../../vmm/api/mod.ts";

const FILE = {
  "boot-source": {
    kernel_image_path: "vmlinux.bin",
    boot_args: "console=ttyS0 reboot=k panic=1 pci=off",
    initrd_path: null,
  },
  "drives": [
    {
      drive_id: "rootfs",
      path_on_host: "bionic.rootfs.ext4",
      is_root_device: true,
      partuuid: null,
      is_read_only: true,
      cache_type: "Unsafe",
      io_engine: "Sync",
      rate_limiter: null,
    },
    {
      drive_id: "san",
      path_on_host: "iscsi://127.0.0.1:3260/iqn.2024-01.test:t/1",
      is_root_device: false,
    },
  ],
  "machine-config": { vcpu_count: 2, mem_size_mib: 1024, smt: false, track_dirty_pages: true },
  "network-interfaces": [{
    iface_id: "eth0",
    host_dev_name: "tap0",
    guest_mac: "AA:FC:00:00:00:01",
  }],
  "balloon": null,
  "vsock": null,
  "logger": { log_path: "fc.log", level: "debug" },
  "metrics": { metrics_path: "fc.metrics" },
  "mmds-config": null,
  "entropy": null,
};

Deno.test("a Firecracker config file becomes the VM's resources and machine records", () => {
  // The nulls are what Firecracker's own GET /vm/config writes for absent fields.
  const r = VmResources.fromConfigFile(FILE);
  assert.equal(r.machine.vcpu_count, 2);
  assert.equal(r.machine.track_dirty_pages, true);
  assert.equal(r.logger?.level, "Debug");
  assert.equal(r.metrics?.metrics_path, "fc.metrics");
  assert.equal(r.cmdline("x"), "console=ttyS0 reboot=k panic=1 pci=off");
  assert.deepEqual(r.ioConfig(), {
    drives: [
      {
        id: "rootfs",
        backend: { kind: "file", path: "bionic.rootfs.ext4" },
        readOnly: true,
        root: true,
      },
      {
        id: "san",
        backend: { kind: "iscsi", url: "iscsi://127.0.0.1:3260/iqn.2024-01.test:t/1" },
        readOnly: false,
        root: false,
      },
    ],
    nets: [{ id: "eth0", tap: "tap0", mac: "aa:fc:00:00:00:01" }],
  });
  // What GET /vm/config serves reads back as the same resources.
  const again = VmResources.fromConfigFile(JSON.parse(JSON.stringify(r.toJSON())));
  assert.deepEqual(again.toJSON(), r.toJSON());
});

Deno.test("a config file with a partuuid root boots root=PARTUUID=, without boot_args the default", () => {
  const r = VmResources.fromConfigFile({
    "boot-source": { kernel_image_path: "k" },
    "drives": [{ drive_id: "r", path_on_host: "d", is_root_device: true, partuuid: "0eaa91a0-01" }],
  });
  assert.equal(r.cmdline("console=ttyS0"), "console=ttyS0 root=PARTUUID=0eaa91a0-01 rw");
  // The machine must not add its own root=/dev/vda after it.
  assert.equal(r.ioConfig().drives[0]?.root, false);
  assert.equal(r.machine.mem_size_mib, 128);
});

Deno.test("bad config files are refused naming the section or field", () => {
  const bad: Array<[unknown, RegExp]> = [
    [[], /one JSON object/],
    [{}, /needs a 'boot-source'/],
    [{ ...FILE, "boot-source": { kernel_image_path: "" } }, /non-empty path/],
    [{ ...FILE, "frobs": [] }, /unknown section 'frobs'/],
    [{ ...FILE, "balloon": { amount_mib: 1, deflate_on_oom: true } }, /no balloon device/],
    [{ ...FILE, "vsock": { guest_cid: 3, uds_path: "v.sock" } }, /no vsock device/],
    [{ ...FILE, "drives": {} }, /'drives' must be a JSON array/],
    [
      {
        ...FILE,
        "drives": [FILE.drives[1], FILE.drives[1]],
      },
      /lists 'san' twice/,
    ],
    [
      {
        ...FILE,
        "drives": [FILE.drives[0], { ...FILE.drives[0], drive_id: "root2" }],
      },
      /root block device already exists/,
    ],
    [{ ...FILE, "machine-config": { vcpu_count: 2 } }, /'mem_size_mib'/],
    [
      {
        ...FILE,
        "network-interfaces": [{ iface_id: "eth0", host_dev_name: "tap0", queue_size: 512 }],
      },
      /unknown field 'queue_size'/,
    ],
    [
      { ...FILE, "network-interfaces": [{ iface_id: "eth0", host_dev_name: "tap0", mtu: 67 }] },
      /'mtu'/,
    ],
    [{ ...FILE, "logger": { level: "verbose" } }, /'level' of logger must be one of/],
  ];
  for (const [json, re] of bad) {
    assert.throws(() => VmResources.fromConfigFile(json), (err: unknown) => {
      assert.ok(err instanceof VmConfigError, String(err));
      assert.match(err.message, re);
      return true;
    });
  }
});
