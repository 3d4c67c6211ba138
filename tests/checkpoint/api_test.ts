import assert from "node:assert/strict";
import { apiRequest, startApiServer, VmController } from "../../vmm/api/mod.ts";
import { machineApiVm } from "../../vmm/api/launch.ts";
import { vmkit } from "../vmm/run_helpers.ts";
import { guestMachine, SEQ_BASE, seqMachine, sleep } from "./helpers.ts";

interface Snap {
  state: string;
  bytes_written: number;
  bytes_total: number;
  snapshot_type: string;
  pause_us: number;
}

async function untilDone(sock: string): Promise<Snap> {
  for (;;) {
    const r = await apiRequest(sock, "GET", "/snapshot");
    assert.equal(r.status, 200, JSON.stringify(r.body));
    const s = r.body as Snap;
    if (s.state !== "saving") return s;
    await sleep(50);
  }
}

Deno.test("PUT /snapshot/create answers with the pause once the VM runs, GET /snapshot follows the save, one at a time, and /snapshot/load restores on a fresh VMM (needs /dev/kvm)", async () => {
  const dir = await Deno.makeTempDir({ prefix: "vmkit-snapapi-" });
  const sock = `${dir}/api.sock`;
  const path = `${dir}/vm.ckpt`;
  {
    await using m = await seqMachine(256, 4096);
    // 192 MiB of data: the background save takes long enough to meet a second request.
    m.memory.write(48 << 20, new Uint8Array(192 << 20).fill(0x5a));
    await sleep(300);
    const server = await startApiServer(sock, new VmController({ vm: machineApiVm(m) }));
    try {
      assert.equal((await apiRequest(sock, "GET", "/snapshot")).status, 404);
      const bad = await apiRequest(sock, "PUT", "/snapshot/create", {
        snapshot_path: path,
        snapshot_type: "Bogus",
      });
      assert.equal(bad.status, 400);
      assert.match(JSON.stringify(bad.body), /snapshot_type/);
      assert.equal((await apiRequest(sock, "PUT", "/snapshot/create", {})).status, 400);

      const r = await apiRequest(sock, "PUT", "/snapshot/create", { snapshot_path: path });
      assert.equal(r.status, 200, JSON.stringify(r.body));
      const pauseUs = (r.body as { pause_us: number }).pause_us;
      assert.ok(Number.isInteger(pauseUs) && pauseUs > 0, `pause_us ${pauseUs}`);
      assert.equal(m.state, "Running", "the VM runs again when create answers");
      const second = await apiRequest(sock, "PUT", "/snapshot/create", {
        snapshot_path: `${dir}/other.ckpt`,
      });
      assert.equal(second.status, 409, JSON.stringify(second.body));
      const done = await untilDone(sock);
      assert.equal(done.state, "done");
      assert.equal(done.bytes_written, done.bytes_total);
      assert.equal(done.pause_us, pauseUs);
      const metrics = m.metrics.registry.text();
      assert.match(metrics, new RegExp(`vmkit_checkpoint_bytes_written ${done.bytes_written}\\b`));
      assert.match(metrics, /vmkit_checkpoint_in_progress 0/);

      // A paused VM stays paused and, as in Firecracker, gets 204 once the file is complete;
      // a diff follows the full one.
      await apiRequest(sock, "PATCH", "/vm", { state: "Paused" });
      const d = await apiRequest(sock, "PUT", "/snapshot/create", {
        snapshot_path: `${dir}/d.ckpt`,
        snapshot_type: "Diff",
      });
      assert.equal(d.status, 204, JSON.stringify(d.body));
      assert.equal(m.state, "Paused");
      const dd = (await apiRequest(sock, "GET", "/snapshot")).body as Snap;
      assert.equal(dd.state, "done", "complete when create answered");
      assert.equal(dd.snapshot_type, "Diff");
      assert.ok(dd.bytes_total < 128 << 20, "a diff is smaller than the RAM");
      await apiRequest(sock, "PATCH", "/vm", { state: "Resumed" });

      const load = await apiRequest(sock, "PUT", "/snapshot/load", { snapshot_path: path });
      assert.equal(load.status, 400, "load on a started VMM");
    } finally {
      await server.close();
    }
  }

  // A fresh VMM loads it paused; PATCH /vm Resumed lets the guest go on.
  const ctl = new VmController();
  const server = await startApiServer(sock, ctl);
  try {
    const missing = await apiRequest(sock, "PUT", "/snapshot/load", {
      snapshot_path: `${dir}/nope.ckpt`,
    });
    assert.equal(missing.status, 400);
    const load = await apiRequest(sock, "PUT", "/snapshot/load", {
      snapshot_path: path,
      resume_vm: false,
    });
    assert.equal(load.status, 204, JSON.stringify(load.body));
    assert.equal(
      ((await apiRequest(sock, "GET", "/vm")).body as { state: string }).state,
      "Paused",
    );
    const machine = ctl.vm?.machine;
    assert.ok(machine !== undefined);
    const before = machine.memory.read(SEQ_BASE, 4096 * 16);
    assert.equal((await apiRequest(sock, "PATCH", "/vm", { state: "Resumed" })).status, 204);
    // Wait (bounded) for the guest's next write rather than a fixed time: on a busy host the
    // emulated guest may take seconds to reach it.
    const deadline = Date.now() + 30_000;
    const changed = () => machine.memory.view(SEQ_BASE, 4096 * 16).some((b, i) => b !== before[i]);
    while (!changed() && Date.now() < deadline) await sleep(50);
    await machine.pause();
    const after = machine.memory.read(SEQ_BASE, 4096 * 16);
    assert.ok(after.some((b, i) => b !== before[i]), "the loaded guest did not run");
  } finally {
    await server.close();
    await ctl.vm?.machine?.[Symbol.asyncDispose]();
  }
  await Deno.remove(dir, { recursive: true });
});

Deno.test("vmkit checkpoint create --wait takes a checkpoint through the socket and vmkit run --restore runs it on this console (needs /dev/kvm)", async () => {
  const dir = await Deno.makeTempDir({ prefix: "vmkit-snapcli-" });
  const sock = `${dir}/api.sock`;
  const path = `${dir}/echo.ckpt`;
  {
    await using m = await guestMachine(32, "mode=echo");
    await sleep(300);
    const server = await startApiServer(sock, new VmController({ vm: machineApiVm(m) }));
    try {
      const usage = await vmkit(["checkpoint", "create", path]);
      assert.equal(usage.code, 64, "no --api-sock is a usage error");
      const r = await vmkit([
        "checkpoint",
        "create",
        "--api-sock",
        sock,
        path,
        "--wait",
        "--output",
        "json",
      ]);
      assert.equal(r.code, 0, r.stderr);
      const j = JSON.parse(r.stdout);
      assert.equal(j.state, "done");
      assert.ok(j["pause-us"] > 0);
      // A paused VM: create returns with the file complete, --wait or not (the 204 reply).
      await m.pause();
      const p = await vmkit([
        "checkpoint",
        "create",
        "--api-sock",
        sock,
        `${dir}/p.ckpt`,
        "--output",
        "json",
      ]);
      assert.equal(p.code, 0, p.stderr);
      const pj = JSON.parse(p.stdout);
      assert.equal(pj.state, "done");
      assert.ok(pj["pause-us"] > 0);
      assert.equal(m.state, "Paused");
      await m.resume();
    } finally {
      await server.close();
    }
  }
  const run = await vmkit(["run", "--restore", path], { stdin: "hello\nquit\n" });
  assert.equal(run.code, 0, run.stderr);
  assert.match(run.stdout, /echo: hello/);
  assert.match(run.stdout, /bye/);
  const clash = await vmkit(["run", "--restore", path, "--mem", "64"]);
  assert.equal(clash.code, 64);
  await Deno.remove(dir, { recursive: true });
});
