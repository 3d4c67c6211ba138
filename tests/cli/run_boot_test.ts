import assert from "node:assert/strict";
import { vmkitCli } from "../vmkit_cli.ts";
import { apiRequest } from "../../vmm/api/mod.ts";

const MAIN = new URL("../../cli/main.ts", import.meta.url).pathname;
const GUESTS = new URL("../guests/out/", import.meta.url).pathname;
const PVH = `${GUESTS}guest-pvh.elf`;

interface Result {
  code: number;
  stdout: string;
  stderr: string;
}

function vmkitRun(args: string[], stdin?: string): Promise<Result> {
  return vmkitCli(["run", ...args], stdin === undefined ? {} : { stdin });
}

Deno.test("vmkit run boots the demo guest, which powers off through the i8042 with exit 0 (needs /dev/kvm)", async () => {
  const r = await vmkitRun(["--kernel", `${GUESTS}demo.elf`, "--cmdline", "demo from a test"]);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /my command line is "demo from a test"/);
  assert.match(r.stdout, /powering off through the i8042/);
  assert.equal(r.stderr, "");
});

Deno.test("vmkit run feeds piped stdin to the guest's serial input (needs /dev/kvm)", async () => {
  const r = await vmkitRun(
    ["--kernel", PVH, "--cmdline", "mode=echo"],
    "first line\nsecond\nquit\n",
  );
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /echo: first line\r?\n/);
  assert.match(r.stdout, /echo: second\r?\n/);
});

Deno.test("vmkit run exits with the debug-exit status and names it (needs /dev/kvm)", async () => {
  const r = await vmkitRun(["--kernel", PVH, "--cmdline", "mode=exit:21", "--debug-exit", "0xf4"]);
  assert.equal(r.code, (21 << 1) | 1);
  assert.equal(r.stderr, "vmkit run: debug-exit 0x15\n");
});

Deno.test("vmkit run writes serial output to --serial-out from every vCPU (needs /dev/kvm)", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const log = `${dir}/serial.log`;
    await Deno.writeTextFile(log, "stale content from an earlier run\n");
    const r = await vmkitRun([
      "--kernel",
      PVH,
      "--cmdline",
      "mode=smp:2",
      "--vcpus",
      "2",
      "--debug-exit",
      "0xf4",
      "--serial-out",
      log,
    ]);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, "");
    const text = await Deno.readTextFile(log);
    assert.doesNotMatch(text, /stale content/);
    assert.match(text, /cpu 0 up\n/);
    assert.match(text, /cpu 1 up\n/);
    assert.match(text, /smp ok 2\n/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("vmkit run serves the control socket: pause, resume and shutdown (needs /dev/kvm)", async () => {
  const dir = await Deno.makeTempDir();
  const sock = `${dir}/api.sock`;
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", MAIN, "run", "--kernel", PVH, "--cmdline", "mode=spin", "--api-sock", sock],
    stdin: "null",
    stdout: "null",
    stderr: "piped",
  }).spawn();
  let exited = false;
  try {
    for (let i = 0; i < 200; i++) {
      if (await Deno.lstat(sock).then(() => true, () => false)) break;
      await new Promise((r) => setTimeout(r, 25));
    }
    const vm = await apiRequest(sock, "GET", "/vm");
    assert.equal(vm.status, 200);
    assert.deepEqual(vm.body, {
      state: "Running",
      vcpus: 1,
      memory: { mib: 256, regions: [{ guest_addr: 0, size: 256 * 1024 * 1024 }] },
    });
    assert.equal((await apiRequest(sock, "PATCH", "/vm", { state: "Paused" })).status, 204);
    assert.equal(
      ((await apiRequest(sock, "GET", "/vm")).body as { state: string }).state,
      "Paused",
    );
    assert.equal((await apiRequest(sock, "PATCH", "/vm", { state: "Resumed" })).status, 204);
    const bad = await apiRequest(sock, "PATCH", "/vm", { state: "Frozen" });
    assert.equal(bad.status, 400);
    const down = await apiRequest(sock, "PUT", "/actions", { action_type: "Shutdown" });
    assert.equal(down.status, 204);
    const out = await child.output();
    exited = true;
    assert.equal(out.code, 0, new TextDecoder().decode(out.stderr));
    assert.equal(await Deno.lstat(sock).then(() => true, () => false), false);
  } finally {
    if (!exited) {
      child.kill("SIGKILL");
      await child.output();
    }
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("vmkit run stops cleanly on SIGTERM with status 143 (needs /dev/kvm)", async () => {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", MAIN, "run", "--kernel", PVH, "--cmdline", "mode=spin"],
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const reader = child.stdout.getReader();
  const first = await reader.read(); // the guest is running once it prints
  assert.match(new TextDecoder().decode(first.value), /tick/);
  reader.releaseLock();
  child.kill("SIGTERM");
  const out = await child.output();
  assert.equal(out.code, 143);
  assert.equal(new TextDecoder().decode(out.stderr), "vmkit run: stopped by SIGTERM\n");
});
