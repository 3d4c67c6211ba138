import assert from "node:assert/strict";
import { JsonLogger, MAX_PENDING_BYTES } from "../../vmm/log.ts";

Deno.test("JSON logs: one object per line with the base fields, filtered by level and module", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const path = `${dir}/vm.log`;
    const log = new JsonLogger({ vm: "web" });
    log.info("run", "dropped: not configured yet");
    await log.configure({ path, level: "Info" });
    log.info("run", "vm started", { vcpus: 2 });
    log.debug("api", "request", { path: "/vm" });
    log.warn("api", "slow", { ms: 12 });
    await log.configure({ path, level: "Debug", module: "api" });
    log.info("run", "not api");
    log.debug("api", "request", { path: "/" });
    await log.close();
    const lines = (await Deno.readTextFile(path)).trimEnd().split("\n").map((l) => JSON.parse(l));
    assert.deepEqual(lines.map((l) => [l.level, l.module, l.msg]), [
      ["info", "run", "vm started"],
      ["warning", "api", "slow"],
      ["debug", "api", "request"],
    ]);
    assert.ok(lines.every((l) => l.vm === "web" && !Number.isNaN(Date.parse(l.ts))));
    assert.equal(lines[0].vcpus, 2);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("JSON logs to a pipe whose reader stalls never block the caller and drop past 1 MiB", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const fifo = `${dir}/log.fifo`;
    const mk = await new Deno.Command("mkfifo", { args: [fifo] }).output();
    assert.ok(mk.success);
    const log = new JsonLogger();
    // The reader opens the pipe and then reads nothing until the end.
    const [reader] = await Promise.all([
      Deno.open(fifo, { read: true }),
      log.configure({ path: fifo, level: "Info" }),
    ]);
    const line = "x".repeat(1000);
    const t0 = performance.now();
    for (let i = 0; i < 5000; i++) log.info("run", line, { i }); // ~5 MB offered
    const ms = performance.now() - t0;
    assert.ok(ms < 2000, `logging took ${ms.toFixed(0)} ms with a stalled reader`);
    assert.ok(log.dropped > 3000, `dropped ${log.dropped}`);
    // Drain: every line that was kept arrives whole, then the writer closes.
    const closing = log.close();
    let text = "";
    const buf = new Uint8Array(65536);
    for (;;) {
      const n = await reader.read(buf);
      if (n === null) break;
      text += new TextDecoder().decode(buf.subarray(0, n));
    }
    reader.close();
    await closing;
    const kept = text.trimEnd().split("\n").map((l) => JSON.parse(l));
    assert.equal(kept.length + log.dropped, 5000);
    assert.ok(text.length <= MAX_PENDING_BYTES + 128 * 1024, `${text.length} bytes kept`);
    assert.deepEqual(kept.slice(0, 3).map((l) => l.i), [0, 1, 2]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
