import assert from "node:assert/strict";
import { vmkitCli } from "../vmkit_cli.ts";

const ROOT = new URL("../../", import.meta.url).pathname;
const PVH = `${ROOT}tests/guests/out/guest-pvh.elf`;

interface InfoModule {
  specifier: string;
  dependencies?: { code?: { specifier?: string }; isDynamic?: boolean }[];
}

/** The modules `roots` load before any dynamic import runs (value imports only, as deno runs them). */
async function staticClosure(roots: string[]): Promise<Set<string>> {
  const graph = new Map<string, InfoModule>();
  for (const root of roots) {
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["info", "--json", `${ROOT}${root}`],
      stdout: "piped",
      stderr: "piped",
    }).output();
    assert.ok(out.success, new TextDecoder().decode(out.stderr));
    const info = JSON.parse(new TextDecoder().decode(out.stdout)) as { modules: InfoModule[] };
    for (const m of info.modules) graph.set(m.specifier, m);
  }
  const seen = new Set<string>();
  const todo = roots.map((r) => `file://${ROOT}${r}`);
  for (let s = todo.pop(); s !== undefined; s = todo.pop()) {
    if (seen.has(s)) continue;
    seen.add(s);
    for (const d of graph.get(s)?.dependencies ?? []) {
      if (d.isDynamic !== true && d.code?.specifier !== undefined) todo.push(d.code.specifier);
    }
  }
  return seen;
}

Deno.test("a plain vmkit run loads no API server, snapshot, checkpoint, image, SAN or netguard code", async () => {
  // What `vmkit run --kernel K` loads: the CLI and run.ts, the machine (launch.ts imports it
  // when it boots) and the vCPU Worker; the rest loads only when a flag asks for it.
  const loaded = await staticClosure([
    "cli/main.ts",
    "cli/run.ts",
    "vmm/machine.ts",
    "vmm/vcpu_worker.ts",
  ]);
  const heavy = [...loaded].map((s) => s.slice(`file://${ROOT}`.length)).filter((p) =>
    /^(checkpoint|san|dsm)\//.test(p) ||
    (p.startsWith("cow/") && p !== "cow/errors.ts") ||
    ["vmm/api/server.ts", "vmm/snapshot_api.ts", "vmm/checkpoint.ts", "netguard/mod.ts"]
      .includes(p) ||
    p === "native/_sources.ts" || p.startsWith("npm:") || p.startsWith("node:")
  );
  assert.deepEqual(heavy, [], "statically imported by a plain vmkit run");
  assert.ok(loaded.has(`file://${ROOT}vmm/machine.ts`));
});

Deno.test("vmkit run with VMKIT_TRACE_STARTUP marks its phases in order and boots on the vCPU Worker it started at process start (needs /dev/kvm)", async () => {
  const args = ["run", "--kernel", PVH, "--debug-exit", "0xf4", "--cmdline", "mode=exit:0"];
  const r = await vmkitCli(args, { env: { VMKIT_TRACE_STARTUP: "1" } });
  assert.equal(r.code, 1, r.stderr); // debug-exit 0: status (0 << 1) | 1
  const marks = new Map<string, { thread: string; ms: number }>();
  for (const line of r.stderr.split("\n")) {
    const m = /^vmkit-startup (\S+) ([\d.]+) (.+)$/.exec(line);
    if (m === null) continue;
    assert.ok(!marks.has(m[3] ?? ""), `phase '${m[3]}' marked twice`);
    marks.set(m[3] ?? "", { thread: m[1] ?? "", ms: Number(m[2]) });
  }
  const order = [
    "cli: main module evaluated",
    "cli: run module loaded",
    "run: launch",
    "standby: vm, memory, vcpus created",
    "machine: start",
    "worker: first KVM_RUN",
    "run: guest stopped",
    "cli: exit",
  ];
  let last = -1;
  for (const phase of order) {
    const m = marks.get(phase);
    assert.ok(m !== undefined, `no mark '${phase}' in:\n${r.stderr}`);
    assert.ok(m.ms >= last, `'${phase}' at ${m.ms} ms comes before the phase ahead of it`);
    last = m.ms;
  }
  // The pooled Worker (named by vcpu_pool.ts) ran the guest: none was started after the VM.
  assert.equal(marks.get("worker: first KVM_RUN")?.thread, "vcpu-pool0");
  assert.equal(marks.get("worker: modules evaluated")?.thread, "vcpu-pool0");

  const quiet = await vmkitCli(args);
  assert.equal(quiet.code, 1);
  assert.equal(quiet.stderr, "vmkit run: debug-exit 0x0\n", "no marks without the variable");
});
