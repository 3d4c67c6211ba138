import assert from "node:assert/strict";
import { apiRequest } from "../../vmm/api/client.ts";
import { guest } from "./run_helpers.ts";

const ROOT = new URL("../../", import.meta.url).pathname;

function ticks(text: string): number {
  return [...text.matchAll(/^tick (\d+)$/gm)].length;
}

async function waitFor<T>(
  what: string,
  ms: number,
  probe: () => Promise<T | undefined>,
): Promise<T> {
  const end = performance.now() + ms;
  while (performance.now() < end) {
    const v = await probe();
    if (v !== undefined) return v;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`timed out after ${ms} ms waiting for ${what}`);
}

/** Kills `child` if it still runs and reaps it. */
async function stopChild(child: Deno.ChildProcess): Promise<void> {
  try {
    child.kill("SIGKILL");
  } catch (err) {
    if (!(err instanceof TypeError)) throw err; // TypeError: it already exited
  }
  await child.output().catch((err) => err);
}

Deno.test("a spinning guest makes no progress while paused from the control socket and resumes after (needs /dev/kvm)", async () => {
  const dir = await Deno.makeTempDir();
  const sock = `${dir}/api.sock`;
  const serial = `${dir}/serial.log`;
  const child = new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "-A",
      `${ROOT}cli/main.ts`,
      "run",
      "--kernel",
      guest("guest-pvh.elf"),
      "--vcpus",
      "2",
      "--cmdline",
      "mode=spin",
      "--api-sock",
      sock,
      "--serial-out",
      serial,
    ],
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  try {
    const read = async () => ticks(await Deno.readTextFile(serial).catch(() => ""));
    await waitFor("two ticks", 20_000, async () => (await read()) >= 2 ? true : undefined);

    const info = await apiRequest(sock, "GET", "/vm");
    assert.equal(info.status, 200);
    assert.deepEqual((info.body as { state: string; vcpus: number }).state, "Running");
    assert.equal((info.body as { vcpus: number }).vcpus, 2);

    const t0 = performance.now();
    const paused = await apiRequest(sock, "PATCH", "/vm", { state: "Paused" });
    const pauseMs = performance.now() - t0;
    assert.equal(paused.status, 204);
    assert.ok(pauseMs < 500, `pause over the socket took ${pauseMs.toFixed(1)} ms`);
    assert.equal(
      ((await apiRequest(sock, "GET", "/vm")).body as { state: string }).state,
      "Paused",
    );

    const atPause = await read();
    await new Promise((r) => setTimeout(r, 2_500)); // > 3 ticks' worth of guest time
    assert.equal(await read(), atPause, "the guest printed ticks while paused");

    assert.equal((await apiRequest(sock, "PATCH", "/vm", { state: "Resumed" })).status, 204);
    await waitFor(
      "ticks after resume",
      20_000,
      async () => (await read()) >= atPause + 2 ? true : undefined,
    );

    assert.equal(
      (await apiRequest(sock, "PUT", "/actions", { action_type: "Shutdown" })).status,
      204,
    );
    const status = await child.status;
    assert.equal(status.code, 0);
  } finally {
    await stopChild(child);
    await Deno.remove(dir, { recursive: true });
  }
});
