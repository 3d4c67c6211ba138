import assert from "node:assert/strict";
import { defaultDeviceSpecs } from "../../vmm/devices/mod.ts";
import { Machine } from "../../vmm/machine.ts";
import { MetricsRegistry, renderPrometheus } from "../../vmm/metrics/prometheus.ts";
import { SharedCounters } from "../../vmm/metrics/shared_counters.ts";
import { MetricsFile } from "../../vmm/metrics/metrics_file.ts";
import { REAL_MODE_COUNTER, realModeLoader, realModeOutLoop } from "./machine_guest.ts";
import { PROBE_PORT, PROBE_STOP_PORT, probeSpec } from "./machine_probe_devices.ts";

Deno.test("prometheus text escapes label values and renders special values", () => {
  const text = renderPrometheus([
    {
      name: "t_total",
      help: "A help\nline.",
      type: "counter",
      samples: [
        { labels: { path: 'a"b\\c\nd' }, value: 3 },
        { value: Infinity },
        { labels: { x: "1", y: "2" }, value: 0.5 },
      ],
    },
  ]);
  assert.equal(
    text,
    "# HELP t_total A help\\nline.\n# TYPE t_total counter\n" +
      't_total{path="a\\"b\\\\c\\nd"} 3\nt_total +Inf\nt_total{x="1",y="2"} 0.5\n',
  );
  assert.throws(
    () => renderPrometheus([{ name: "bad-name", help: "", type: "gauge", samples: [] }]),
    /bad metric name/,
  );
  assert.throws(
    () =>
      renderPrometheus([{
        name: "ok",
        help: "",
        type: "gauge",
        samples: [{ labels: { "1x": "" }, value: 1 }],
      }]),
    /bad label name/,
  );
});

Deno.test("a metrics registry merges same-named families from many collectors", () => {
  const reg = new MetricsRegistry();
  const a = SharedCounters.create(["requests"]);
  const b = SharedCounters.create(["requests"]);
  for (const [dev, c] of [["vda", a], ["vdb", b]] as const) {
    reg.add(() => [{
      name: "blk_requests_total",
      help: "Requests.",
      type: "counter",
      samples: [{ labels: { device: dev }, value: c.get("requests") }],
    }]);
  }
  SharedCounters.over(a.buffer, a.names).add(0, 2);
  b.add(0, 5);
  assert.equal(
    reg.text(),
    "# HELP blk_requests_total Requests.\n# TYPE blk_requests_total counter\n" +
      'blk_requests_total{device="vda"} 2\nblk_requests_total{device="vdb"} 5\n',
  );
  const remove = reg.add(
    () => [{ name: "blk_requests_total", help: "", type: "gauge", samples: [] }],
  );
  assert.throws(() => reg.text(), /both a counter and a gauge/);
  remove();
  assert.match(reg.text(), /vdb"} 5/);
});

Deno.test("the machine counts each vCPU's exits by reason (needs /dev/kvm)", async () => {
  const probe = probeSpec();
  await using m = await Machine.create({
    memMiB: 16,
    vcpus: 1,
    kernel: new Uint8Array(0),
    devices: [...defaultDeviceSpecs({ serialOut: "none", memMiB: 16 }), probe],
    deviceModule: new URL("./machine_probe_devices.ts", import.meta.url).href,
    loader: realModeLoader(realModeOutLoop(PROBE_PORT, PROBE_STOP_PORT, 3, 1000)),
  });
  await m.start();
  assert.deepEqual(await m.wait(), { status: 0, reason: "probe stop 0" });
  // 3000 OUTs to the probe port and one to its stop port, nothing else.
  assert.equal(m.metrics.exitCount(0, "io_out"), 3001);
  assert.equal(m.metrics.exitCount(0, "io_in"), 0);
  assert.equal(m.metrics.exitCount(0, "mmio_write"), 0);
  assert.match(
    m.metrics.registry.text(),
    /^vmkit_vcpu_exits_total\{vcpu="0",reason="io_out"\} 3001$/m,
  );
});

Deno.test("the machine counts pauses and the time each took (needs /dev/kvm)", async () => {
  await using m = await Machine.create({
    memMiB: 16,
    vcpus: 2,
    kernel: new Uint8Array(0),
    devices: defaultDeviceSpecs({ serialOut: "none", memMiB: 16 }),
    loader: realModeLoader(REAL_MODE_COUNTER),
  });
  await m.start();
  // Let both vCPUs enter KVM_RUN (the BSP counting, the AP waiting for SIPI), so pausing kicks them.
  await new Promise((r) => setTimeout(r, 200));
  for (let i = 0; i < 3; i++) {
    await m.pause();
    await m.resume();
  }
  assert.equal(m.metrics.pauses, 3);
  const text = m.metrics.registry.text();
  assert.match(text, /^vmkit_pauses_total 3$/m);
  const total = Number(/^vmkit_pause_seconds_total (\S+)$/m.exec(text)?.[1]);
  const max = Number(/^vmkit_pause_max_seconds (\S+)$/m.exec(text)?.[1]);
  assert.ok(total > 0 && max > 0 && max <= total && total < 10, `total ${total} max ${max}`);
  // Kicks out of KVM_RUN show up as intr exits.
  assert.ok(m.metrics.exitCount(0, "intr") + m.metrics.exitCount(1, "intr") >= 1);
});

Deno.test("the metrics file is replaced whole at each flush and never left half-written", async () => {
  const dir = await Deno.makeTempDir();
  try {
    let n = 0;
    const f = new MetricsFile(`${dir}/vm.prom`, () => `# TYPE t_total counter\nt_total ${++n}\n`);
    await f.check();
    assert.equal(await Deno.readTextFile(`${dir}/vm.prom`), "# TYPE t_total counter\nt_total 1\n");
    await Promise.all([f.flush(), f.flush()]); // the second joins the first
    await f.close();
    assert.equal(await Deno.readTextFile(`${dir}/vm.prom`), "# TYPE t_total counter\nt_total 3\n");
    assert.equal(f.flushes, 3);
    const names: string[] = [];
    for await (const e of Deno.readDir(dir)) names.push(e.name);
    assert.deepEqual(names, ["vm.prom"]);
    await assert.rejects(
      new MetricsFile(dir, () => "").check(),
      /not a regular file or a named pipe/,
    );
    await assert.rejects(
      new MetricsFile(`${dir}/no/such/x`, () => "").check(),
      /cannot write metrics/,
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
