import assert from "node:assert/strict";
import { apiRequest, ApiServerError, startApiServer } from "../../vmm/api/mod.ts";
import { FakeMachine, withServer } from "./api_fake.ts";

const MIB = 1024 * 1024;

Deno.test("api GET /vm describes state, vCPUs and memory regions", async () => {
  await withServer(async (sock) => {
    const r = await apiRequest(sock, "GET", "/vm");
    assert.equal(r.status, 200);
    assert.deepEqual(r.body, {
      state: "Running",
      vcpus: 2,
      memory: {
        mib: 4096,
        regions: [
          { guest_addr: 0, size: 3072 * MIB },
          { guest_addr: 0x1_0000_0000, size: 1024 * MIB },
        ],
      },
    });
  });
});

Deno.test("api PATCH /vm pauses and resumes the machine", async () => {
  await withServer(async (sock, vm) => {
    assert.equal((await apiRequest(sock, "PATCH", "/vm", { state: "Paused" })).status, 204);
    assert.equal(vm.state, "Paused");
    assert.equal((await apiRequest(sock, "PATCH", "/vm", { state: "Paused" })).status, 204);
    assert.deepEqual((await apiRequest(sock, "GET", "/vm")).body, {
      state: "Paused",
      vcpus: 2,
      memory: (await apiRequest(sock, "GET", "/vm") as { body: { memory: unknown } }).body.memory,
    });
    assert.equal((await apiRequest(sock, "PATCH", "/vm", { state: "Resumed" })).status, 204);
    assert.equal(vm.state, "Running");
    assert.deepEqual(vm.calls, ["pause", "resume"]);
  });
});

Deno.test("api PUT /actions Shutdown stops the machine before replying 204", async () => {
  await withServer(async (sock, vm) => {
    const r = await apiRequest(sock, "PUT", "/actions", { action_type: "Shutdown" });
    assert.equal(r.status, 204);
    assert.equal(r.body, undefined);
    assert.equal(vm.state, "Stopped");
    const again = await apiRequest(sock, "PATCH", "/vm", { state: "Resumed" });
    assert.equal(again.status, 400);
    assert.deepEqual(again.body, { fault_message: "cannot resume a VM that is Stopped" });
  });
});

Deno.test("api rejects bad JSON, unknown fields and bad states with 400 and a fault message", async () => {
  await withServer(async (sock, vm) => {
    const cases: Array<[string, string, unknown, RegExp]> = [
      ["PATCH", "/vm", "{not json", /not valid JSON/],
      ["PATCH", "/vm", "[1,2]", /must be a JSON object/],
      ["PATCH", "/vm", { state: "Paused", extra: 1 }, /unknown field 'extra'/],
      ["PATCH", "/vm", { state: "Sleeping" }, /'state' must be "Paused" or "Resumed"/],
      ["PATCH", "/vm", {}, /got undefined/],
      ["PUT", "/actions", { action_type: "Reboot" }, /'action_type' must be one of .*Shutdown/],
      ["PUT", "/actions", { action_type: "Shutdown", now: true }, /unknown field 'now'/],
      ["PUT", "/actions", "x".repeat(70 * 1024), /exceeds 65536/],
    ];
    for (const [method, path, body, re] of cases) {
      const r = await apiRequest(sock, method, path, body);
      assert.equal(r.status, 400, `${method} ${path} ${JSON.stringify(body).slice(0, 40)}`);
      const msg = (r.body as { fault_message: string }).fault_message;
      assert.match(msg, re);
    }
    vm.state = "Created";
    const r = await apiRequest(sock, "PATCH", "/vm", { state: "Paused" });
    assert.deepEqual(r, {
      status: 400,
      body: { fault_message: "cannot pause a VM that is Created" },
    });
    assert.deepEqual(vm.calls, []);
  });
});

Deno.test("api answers 404 for unknown paths, 405 for wrong methods, 500 when the machine fails", async () => {
  await withServer(async (sock, vm) => {
    const nf = await apiRequest(sock, "GET", "/no/such/resource");
    assert.equal(nf.status, 404);
    assert.match((nf.body as { fault_message: string }).fault_message, /no such resource/);
    for (const [method, path] of [["DELETE", "/vm"], ["GET", "/actions"], ["POST", "/vm"]]) {
      const r = await apiRequest(sock, method ?? "", path ?? "");
      assert.equal(r.status, 405, `${method} ${path}`);
      assert.match((r.body as { fault_message: string }).fault_message, /is not allowed/);
    }
    vm.failPause = true;
    const r = await apiRequest(sock, "PATCH", "/vm", { state: "Paused" });
    assert.equal(r.status, 500);
    assert.match((r.body as { fault_message: string }).fault_message, /KVM said no/);
  });
});

Deno.test("api server replaces a stale socket file, refuses a live one, removes it on close", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const sock = `${dir}/api.sock`;
    // A stale socket: its listener was killed, so nothing removed the file.
    const child = new Deno.Command(Deno.execPath(), {
      args: [
        "eval",
        `Deno.listen({ transport: "unix", path: ${JSON.stringify(sock)} });` +
        `console.log("ready"); setInterval(() => {}, 1000);`,
      ],
      stdout: "piped",
      stderr: "null",
    }).spawn();
    const reader = child.stdout.getReader();
    await reader.read();
    child.kill("SIGKILL");
    await child.status;
    reader.releaseLock();
    await child.stdout.cancel();
    const exists = async () => await Deno.lstat(sock).then(() => true, () => false);
    assert.equal(await exists(), true);
    const vm = new FakeMachine();
    const server = await startApiServer(sock, vm);
    try {
      assert.equal((await apiRequest(sock, "GET", "/vm")).status, 200);
      await assert.rejects(startApiServer(sock, vm), ApiServerError);
    } finally {
      await server.close();
    }
    assert.equal(await exists(), false);
    await Deno.writeTextFile(sock, "not a socket");
    await assert.rejects(startApiServer(sock, vm), /is not a socket/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
