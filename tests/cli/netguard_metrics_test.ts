/** Issue 12.5: `netguard watch --metrics-listen HOST:PORT` serves netguard's Prometheus metrics. */

import assert from "node:assert/strict";
import { vmkit } from "../vmm/run_helpers.ts";

const MAIN = new URL("../../cli/main.ts", import.meta.url).pathname;

Deno.test("netguard watch --metrics-listen serves the guard's counters while it watches (root)", async () => {
  const child = new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "-A",
      MAIN,
      "netguard",
      "watch",
      "--iface",
      "lo",
      "--metrics-listen",
      "127.0.0.1:0",
      "--duration",
      "8000",
      "--stats-interval",
      "0",
    ],
    stdin: "null",
    stdout: "null",
    stderr: "piped",
  }).spawn();
  const reader = child.stderr.pipeThrough(new TextDecoderStream()).getReader();
  try {
    let err = "";
    let url: string | undefined;
    while (url === undefined) {
      const { done, value } = await reader.read();
      if (done) throw new Error(`watch ended early: ${err}`);
      err += value;
      url = /metrics at (http:\/\/127\.0\.0\.1:\d+\/metrics)/.exec(err)?.[1];
    }
    const endpoint: string = url;
    // Each scrape is loopback traffic the guard itself sees.
    let frames = 0;
    let text = "";
    for (let i = 0; i < 50 && frames === 0; i++) {
      const res: Response = await fetch(endpoint);
      assert.equal(res.status, 200);
      assert.match(res.headers.get("content-type") ?? "", /^text\/plain; version=0\.0\.4/);
      text = await res.text();
      frames = Number(/^netguard_frames_total (\d+)$/m.exec(text)?.[1]);
      await new Promise((r) => setTimeout(r, 100));
    }
    assert.ok(frames > 0, text);
    assert.match(text, /^# TYPE netguard_decisions_total counter$/m);
    const other = await fetch(endpoint.replace(/\/metrics$/, "/other"));
    assert.equal(other.status, 404);
    await other.body?.cancel();
  } finally {
    child.kill("SIGTERM");
    await child.status;
    reader.releaseLock();
    await child.stderr.cancel().catch(() => {});
  }
});

Deno.test("netguard watch --metrics-listen refuses an address that is not HOST:PORT (exit 64)", async () => {
  for (const bad of ["9464", "localhost", "127.0.0.1:70000", "[::1]9464"]) {
    const r = await vmkit(["netguard", "watch", "--iface", "lo", "--metrics-listen", bad]);
    assert.equal(r.code, 64, `${bad}: ${r.stderr}`);
    assert.match(r.stderr, /--metrics-listen: listen address .* is not HOST:PORT/);
  }
});
