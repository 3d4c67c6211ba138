/**
 * `vmkit run --disk/--net/--netguard` end to end (issue 9.7), and a drive
 * swapped with `PATCH /drives/{id}` under a running guest (9.6): the suite's
 * guests drive the virtio devices with their own drivers.
 */

import assert from "node:assert/strict";
import { Netns, run } from "../netguard/helpers.ts";
import { curl } from "../vmm/api_raw_client.ts";
import { exists, guest, vmkit, VmkitChild, waitFor } from "../vmm/run_helpers.ts";

const PVH = guest("guest-pvh.elf");
const MIB = 1024 * 1024;

async function disk(path: string, text: string, bytes = MIB): Promise<void> {
  const data = new Uint8Array(bytes);
  data.set(new TextEncoder().encode(text));
  await Deno.writeFile(path, data);
}

Deno.test("vmkit run --disk gives the guest a virtio-blk disk announced on its command line (needs /dev/kvm)", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const img = `${dir}/a.img`;
    await disk(img, "hello from disk A");
    const rw = await vmkit(["run", "--kernel", PVH, "--cmdline", "mode=blk", "--disk", img]);
    assert.equal(rw.code, 0, rw.stderr);
    assert.match(rw.stdout, /^blk found base=0xd0000000 irq=5 id=2$/m);
    assert.match(rw.stdout, /^blk sector0 hello from disk A/m);
    assert.match(rw.stdout, /^blk write status 0$/m);
    assert.equal((await Deno.readFile(img))[512 + 1], (1 * 7 + 3) & 0xff);
    const ro = await vmkit([
      "run",
      "--kernel",
      PVH,
      "--cmdline",
      "mode=blk",
      "--disk",
      `path=${img},readonly=on,id=ro_disk`,
    ]);
    assert.equal(ro.code, 0, ro.stderr);
    assert.match(ro.stdout, /^blk sector0 hello from disk A/m);
    assert.match(ro.stdout, /^blk write status 1$/m); // VIRTIO_BLK_S_IOERR
    // A command line that names the device itself is taken as final: nothing is appended.
    const own = await vmkit([
      "run",
      "--kernel",
      PVH,
      "--cmdline",
      "mode=info virtio_mmio.device=4K@0xd0000000:5",
      "--disk",
      img,
    ]);
    assert.equal(own.code, 0, own.stderr);
    assert.match(own.stdout, /^cmdline=mode=info virtio_mmio\.device=4K@0xd0000000:5$/m);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("PATCH /drives/{id} swaps a running guest's disk for another file and sets its rate limiter (needs /dev/kvm)", async () => {
  const dir = await Deno.makeTempDir();
  const sock = `${dir}/fc.sock`;
  const serial = `${dir}/serial.txt`;
  await using child = VmkitChild.spawn(["run", "--api-sock", sock, "--serial-out", serial], {
    stdin: "piped",
  });
  const stdin = child.child.stdin.getWriter();
  try {
    await disk(`${dir}/a.img`, "this is disk A");
    await disk(`${dir}/b.img`, "and this is disk B", 2 * MIB);
    await waitFor("the API socket", () => exists(sock));
    const put = async (path: string, body: unknown) => {
      const r = await curl(sock, "PUT", path, body);
      assert.equal(r.status, 204, `${path}: ${r.body}`);
    };
    await put("/machine-config", { vcpu_count: 1, mem_size_mib: 64 });
    await put("/boot-source", { kernel_image_path: PVH, boot_args: "mode=blk blk.again" });
    await put("/drives/vda", {
      drive_id: "vda",
      path_on_host: `${dir}/a.img`,
      is_root_device: false,
      is_read_only: false,
    });
    await put("/actions", { action_type: "InstanceStart" });
    const text = () => Deno.readTextFile(serial).catch(() => "");
    await waitFor("the guest's 'blk waiting'", async () => (await text()).includes("blk waiting"));
    assert.match(await text(), /^blk sector0 this is disk A/m);
    // A rate limiter on the running drive, then the image swapped together with a new limit.
    const limit = await curl(sock, "PATCH", "/drives/vda", {
      drive_id: "vda",
      rate_limiter: { ops: { size: 1000, refill_time: 1000 } },
    });
    assert.equal(limit.status, 204, limit.body);
    const swap = await curl(sock, "PATCH", "/drives/vda", {
      drive_id: "vda",
      path_on_host: `${dir}/b.img`,
      rate_limiter: { bandwidth: { size: 1048576, refill_time: 100 } },
    });
    assert.equal(swap.status, 204, swap.body);
    const cfg = JSON.parse((await curl(sock, "GET", "/vm/config")).body);
    assert.equal(cfg.drives[0].path_on_host, `${dir}/b.img`);
    assert.deepEqual(cfg.drives[0].rate_limiter, {
      bandwidth: { size: 1048576, refill_time: 100 },
      ops: { size: 1000, refill_time: 1000 },
    });
    await stdin.write(new TextEncoder().encode("x"));
    const out = await child.exit();
    assert.equal(out.code, 0, out.stderr);
    const log = await text();
    assert.match(log, /^blk again capacity 4096$/m);
    assert.match(log, /^blk again sector0 and this is disk B/m);
    // The guest's write went to disk A, before the swap; disk B is as the host wrote it.
    assert.equal((await Deno.readFile(`${dir}/a.img`))[512 + 1], (1 * 7 + 3) & 0xff);
    assert.equal((await Deno.readFile(`${dir}/b.img`))[512 + 1], 0);
  } finally {
    await child[Symbol.asyncDispose]();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("vmkit run --net --netguard: the guest answers pings through its TAP, counted in GET /metrics, under rate limits PATCHed while it runs (root, netns, /dev/kvm)", async () => {
  const dir = await Deno.makeTempDir();
  const ns = await Netns.create("h7");
  const tap = `h7t${Deno.pid % 100000}`;
  const sock = `${dir}/vm.sock`;
  await using child = VmkitChild.spawn([
    "run",
    "--kernel",
    guest("guest-vmlinux.elf"),
    "--cmdline",
    "mode=net net.ip=10.97.0.2",
    "--mem",
    "32",
    "--net",
    `tap=${tap},netns=${ns.name},mac=06:00:00:00:97:02`,
    "--netguard",
    "--vm-id",
    "pingme",
    "--api-sock",
    sock,
    "--serial-out",
    `${dir}/serial.txt`,
  ]);
  try {
    await waitFor("the API socket", () => exists(sock));
    await ns.ip(`link set ${tap} up`);
    await ns.ip(`addr add 10.97.0.1/24 dev ${tap}`);
    await waitFor(
      "the guest's net up",
      async () => (await Deno.readTextFile(`${dir}/serial.txt`).catch(() => "")).includes("net up"),
    );
    const ping = await ns.exec(["ping", "-c", "3", "-i", "0.2", "-W", "2", "10.97.0.2"], true);
    assert.equal(ping.code, 0, ping.stdout + ping.stderr);
    const m = (await curl(sock, "GET", "/metrics")).body;
    const sample = (name: string) =>
      Number(new RegExp(`^${name}\\{iface="eth0",tap="${tap}"\\} (\\d+)$`, "m").exec(m)?.[1]);
    assert.ok(sample("vmkit_net_rx_frames_total") >= 3, m);
    assert.ok(sample("vmkit_net_tx_frames_total") >= 3, m);
    assert.ok(sample("vmkit_net_rx_bytes_total") >= 3 * 98, m);
    // netguard watched the same TAP.
    await waitFor("netguard to count the pings", async () => {
      const t = (await curl(sock, "GET", "/metrics")).body;
      return Number(/^netguard_frames_total (\d+)$/m.exec(t)?.[1]) >= 6;
    }, 5000);
    const cfg = JSON.parse((await curl(sock, "GET", "/vm/config")).body);
    assert.deepEqual(cfg["network-interfaces"], [{
      iface_id: "eth0",
      host_dev_name: tap,
      guest_mac: "06:00:00:00:97:02",
      netns: ns.name,
    }]);
    // PATCH the running NIC: one received frame a minute holds the pings back in the TAP...
    const limit = await curl(sock, "PATCH", "/network-interfaces/eth0", {
      iface_id: "eth0",
      rx_rate_limiter: { ops: { size: 1, refill_time: 60000 } },
    });
    assert.equal(limit.status, 204, limit.body);
    const held = await ns.exec(["ping", "-c", "3", "-i", "0.2", "-W", "1", "10.97.0.2"], true);
    const answered = Number(/(\d+) received/.exec(held.stdout)?.[1]);
    assert.ok(answered <= 1, `${answered} of 3 pings answered through a one-frame-a-minute limit`);
    const throttled = Number(
      new RegExp(`^vmkit_net_rx_throttled_total\\{iface="eth0",tap="${tap}"\\} (\\d+)$`, "m")
        .exec((await curl(sock, "GET", "/metrics")).body)?.[1],
    );
    assert.ok(throttled >= 1, `rx throttled ${throttled}`);
    // ...and a 0-sized bucket removes the limit again.
    const lift = await curl(sock, "PATCH", "/network-interfaces/eth0", {
      iface_id: "eth0",
      rx_rate_limiter: { ops: { size: 0, refill_time: 0 } },
    });
    assert.equal(lift.status, 204, lift.body);
    const again = await ns.exec(["ping", "-c", "3", "-i", "0.2", "-W", "2", "10.97.0.2"], true);
    assert.equal(again.code, 0, again.stdout + again.stderr);
    assert.equal(
      JSON.parse((await curl(sock, "GET", "/vm/config")).body)["network-interfaces"][0]
        .rx_rate_limiter,
      undefined,
    );
    assert.equal((await curl(sock, "PUT", "/actions", { action_type: "Shutdown" })).status, 204);
    const out = await child.exit();
    assert.equal(out.code, 0, out.stderr);
  } finally {
    await child[Symbol.asyncDispose]();
    await ns.delete();
    await run("ip", ["link", "del", tap], true);
    await Deno.remove(dir, { recursive: true });
  }
});
