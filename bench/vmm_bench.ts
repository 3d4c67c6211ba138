/**
 * VMM benchmarks, each beside its peer, alternating, median [range] of
 * several runs with the machine load printed:
 * - whole-process `vmkit run` of a guest that writes the debug-exit port at
 *   once (`mode=exit:0`) vs the same guest under a minimal C VMM
 *   (`bench/kvm_loop.c`), both timed from spawn to exit by this process; the
 *   peer is built `-O2` and `-O2 -static` and the faster (by median) is its
 *   best; plain `deno run` of an empty script is printed as the floor;
 * - where `vmkit run`'s time goes: the `VMKIT_TRACE_STARTUP` marks of
 *   further runs (ms from spawn, median of the runs);
 * - port-I/O exits per second for a guest doing 100 000 `out`s: vmkit's
 *   `Machine` vs the bare C `KVM_RUN` loop, both timed in-process around
 *   their run loop (target ≥ 0.8×);
 * - resident memory: vmkit's private pages outside guest RAM (target
 *   ≤ 25 MiB), apart from the guest RAM and the pages shared with other
 *   processes (the deno executable's text), vs the C peer and an idle
 *   `deno run`.
 *
 * Usage: `deno run -A bench/vmm_bench.ts [--runs N]` (default 10 startup
 * runs, 5 of the others).
 *
 * @module
 */

import { Machine } from "../vmm/machine.ts";
import { defaultDeviceSpecs } from "../vmm/devices/mod.ts";
import { type ProcessMemory, processMemory } from "./proc_memory.ts";
import { loadAverage, machineLine, median, medianRange } from "./stats.ts";

const ROOT = new URL("../", import.meta.url).pathname;
const GUEST = `${ROOT}tests/guests/out/guest-pvh.elf`;
const PIO_N = 100_000;
const runsArg = Deno.args.indexOf("--runs");
const RUNS = runsArg >= 0 ? Number(Deno.args[runsArg + 1]) : 10;
const SMALL_RUNS = Math.max(5, Math.ceil(RUNS / 2));
const dec = new TextDecoder();

/** The peer's build settings tried for the whole-process run. */
const PEER_BUILDS: Record<string, string[]> = {
  "-O2": ["-O2"],
  "-O2 -static": ["-O2", "-static"],
};

async function buildPeer(name: string, flags: string[]): Promise<string> {
  const out = `${ROOT}native/out/kvm_loop${name.replaceAll(/[ -]+/g, "_")}`;
  await Deno.mkdir(`${ROOT}native/out`, { recursive: true });
  const r = await new Deno.Command("cc", {
    args: [...flags, "-Wall", "-Wextra", "-Werror", "-o", out, `${ROOT}bench/kvm_loop.c`],
  }).output();
  if (!r.success) {
    throw new Error(`cc ${flags.join(" ")} bench/kvm_loop.c: ${dec.decode(r.stderr)}`);
  }
  return out;
}

/** Wall ms from spawn to exit (and stderr) of `cmd args`; exit 0 or 1 is a finished run. */
async function timeProcess(
  cmd: string,
  args: string[],
  env: Record<string, string> = {},
): Promise<{ ms: number; stderr: string }> {
  const t0 = performance.now();
  const r = await new Deno.Command(cmd, {
    args,
    env,
    stdin: "null",
    stdout: "null",
    stderr: "piped",
  })
    .output();
  const ms = performance.now() - t0;
  const stderr = dec.decode(r.stderr);
  if (r.code !== 0 && r.code !== 1) {
    throw new Error(`${cmd} ${args.join(" ")} exited ${r.code}: ${stderr}`);
  }
  return { ms, stderr };
}

/** `deno` arguments of a whole-process `vmkit run` of the bench guest. */
function vmkitRun(mib: number, ...rest: string[]): string[] {
  return [
    "run",
    "-A",
    `${ROOT}cli/main.ts`,
    "run",
    "--kernel",
    GUEST,
    "--mem",
    String(mib),
    ...rest,
  ];
}

const VMKIT_RUN = vmkitRun(64, "--debug-exit", "0xf4", "--cmdline", "mode=exit:0");

// ---- whole-process start to exit, alternating ----

const peers: Record<string, string> = {};
for (const [name, flags] of Object.entries(PEER_BUILDS)) peers[name] = await buildPeer(name, flags);
const empty = await Deno.makeTempFile({ suffix: ".ts" });
console.log(`machine: ${machineLine()}, Deno ${Deno.version.deno}`);

const runMs: number[] = [];
const floorMs: number[] = [];
const peerMs: Record<string, number[]> = Object.fromEntries(Object.keys(peers).map((k) => [k, []]));
for (let i = 0; i < RUNS; i++) {
  const steps: (() => Promise<void>)[] = [
    async () => void runMs.push((await timeProcess(Deno.execPath(), VMKIT_RUN)).ms),
    ...Object.entries(peers).map(([name, exe]) => async () =>
      void peerMs[name]?.push((await timeProcess(exe, [GUEST, "mode=exit:0"])).ms)
    ),
    async () => void floorMs.push((await timeProcess(Deno.execPath(), ["run", "-A", empty])).ms),
  ];
  if (i % 2 === 1) steps.reverse();
  for (const s of steps) await s();
}
const startLoad = loadAverage();
const [bestPeer = "-O2"] = Object.keys(peers).sort((a, b) =>
  median(peerMs[a] ?? []) - median(peerMs[b] ?? [])
);
const peerBestMs = peerMs[bestPeer] ?? [];

// ---- where the time goes: traced runs ----

const marks = new Map<string, number[]>();
const traced: number[] = [];
for (let i = 0; i < SMALL_RUNS; i++) {
  const origin = performance.timeOrigin + performance.now();
  const r = await timeProcess(Deno.execPath(), VMKIT_RUN, { VMKIT_TRACE_STARTUP: String(origin) });
  traced.push(r.ms);
  for (const line of r.stderr.split("\n")) {
    const m = /^vmkit-startup (\S+) ([\d.]+) (.*)$/.exec(line);
    if (m === null) continue;
    const key = m[3] ?? "";
    marks.set(key, [...(marks.get(key) ?? []), Number(m[2])]);
  }
}

// ---- port-I/O exit rate, in-process on both sides, alternating ----

async function peerExits(peer: string): Promise<number> {
  const r = await new Deno.Command(peer, { args: [GUEST, `mode=pio:${PIO_N}`], stderr: "piped" })
    .output();
  if (!r.success) throw new Error(`kvm_loop failed: ${dec.decode(r.stderr)}`);
  const { exits, ns } = JSON.parse(dec.decode(r.stdout)) as { exits: number; ns: number };
  return exits / (ns / 1e9);
}

async function vmkitExits(): Promise<number> {
  await using m = await Machine.create({
    memMiB: 64,
    vcpus: 1,
    kernel: await Deno.readFile(GUEST),
    cmdline: `mode=pio:${PIO_N}`,
    devices: defaultDeviceSpecs({
      serialOut: "none",
      serialIn: false,
      debugExitPort: 0xf4,
      memMiB: 64,
    }),
  });
  const t0 = performance.now();
  await m.start();
  const exit = await m.wait();
  const ns = (performance.now() - t0) * 1e6;
  if (exit.status !== 1) throw new Error(`pio guest ended with ${exit.status}: ${exit.reason}`);
  return (PIO_N + 1) / (ns / 1e9);
}

const vRates: number[] = [];
const cRates: number[] = [];
const pioPeer = peers["-O2"] ?? "";
for (let i = 0; i < SMALL_RUNS; i++) {
  if (i % 2 === 0) {
    vRates.push(await vmkitExits());
    cRates.push(await peerExits(pioPeer));
  } else {
    cRates.push(await peerExits(pioPeer));
    vRates.push(await vmkitExits());
  }
}
const pioLoad = loadAverage();

// ---- resident memory, alternating ----

/** Samples `cmd` once `ready()` (or after `settleMs`), then kills it. */
async function sampleMemory(
  cmd: string,
  args: string[],
  guestBytes: number,
  exeSuffix: string,
  ready: () => Promise<boolean>,
): Promise<ProcessMemory> {
  const child = new Deno.Command(cmd, { args, stdin: "null", stdout: "null", stderr: "null" })
    .spawn();
  try {
    const end = performance.now() + 20_000;
    while (performance.now() < end && !(await ready())) {
      await new Promise((r) => setTimeout(r, 100));
    }
    return await processMemory(child.pid, guestBytes, exeSuffix);
  } finally {
    child.kill("SIGKILL");
    await child.status;
  }
}

const GUEST_MIB = 256;
const dir = await Deno.makeTempDir();
const serial = `${dir}/serial`;
const sleeper = `${dir}/idle.ts`;
await Deno.writeTextFile(sleeper, "setTimeout(() => {}, 60_000);\n");
const settle = (ms: number) => {
  const until = performance.now() + ms;
  return () => Promise.resolve(performance.now() >= until);
};
const vMem: ProcessMemory[] = [];
const cMem: ProcessMemory[] = [];
const dMem: ProcessMemory[] = [];
const peerExe = peers[bestPeer] ?? "";
for (let i = 0; i < SMALL_RUNS; i++) {
  const steps: (() => Promise<void>)[] = [
    async () => {
      await Deno.writeTextFile(serial, "");
      vMem.push(
        await sampleMemory(
          Deno.execPath(),
          vmkitRun(GUEST_MIB, "--cmdline", "mode=spin", "--serial-out", serial),
          GUEST_MIB * 2 ** 20,
          "/deno",
          async () => (await Deno.readTextFile(serial)).includes("tick 1\n"),
        ),
      );
    },
    // kvm_loop's guest RAM is 64 MiB whatever the guest; it prints nothing, so: a fixed wait.
    async () =>
      void cMem.push(
        await sampleMemory(peerExe, [GUEST, "mode=spin"], 64 * 2 ** 20, "kvm_loop", settle(1500)),
      ),
    async () =>
      void dMem.push(
        await sampleMemory(Deno.execPath(), ["run", "-A", sleeper], 0, "/deno", settle(1500)),
      ),
  ];
  if (i % 2 === 1) steps.reverse();
  for (const s of steps) await s();
}
await Deno.remove(dir, { recursive: true });
await Deno.remove(empty);
const memLoad = loadAverage();

// ---- report ----

const f1 = (x: number) => x.toFixed(1);
const f0 = (x: number) => x.toFixed(0);
const mr = (xs: ProcessMemory[], k: keyof ProcessMemory) => medianRange(xs.map((m) => m[k]), f1);
const rows: string[][] = [
  ["metric", "vmkit", `peer (bench/kvm_loop.c ${bestPeer})`, "ratio", "load"],
  [
    `whole-process run, exit:0 guest, median [range] of ${RUNS} (ms; target ≤ 60)`,
    medianRange(runMs, f1),
    medianRange(peerBestMs, f1),
    (median(peerBestMs) / median(runMs)).toFixed(3),
    startLoad,
  ],
  ...Object.keys(peers).filter((k) => k !== bestPeer).map((k) => [
    `  peer built ${k} (not its best)`,
    "",
    medianRange(peerMs[k] ?? [], f1),
    "",
    "",
  ]),
  ["  floor: deno run of an empty script (ms)", medianRange(floorMs, f1), "", "", ""],
  [
    `port-I/O exits per second (${PIO_N} outs, in-process; target ≥ 0.8×)`,
    medianRange(vRates, f0),
    medianRange(cRates, f0),
    (median(vRates) / median(cRates)).toFixed(3),
    pioLoad,
  ],
  [
    "private resident MiB outside guest RAM (target ≤ 25)",
    mr(vMem, "private"),
    mr(cMem, "private"),
    (median(cMem.map((m) => m.private)) / median(vMem.map((m) => m.private))).toFixed(3),
    memLoad,
  ],
  [
    "  of it outside the deno executable's own mappings (its data segment, unshared text)",
    medianRange(vMem.map((m) => m.private - m.denoExePrivate), f1),
    "",
    "",
    "",
  ],
  [
    "  floor: idle deno run, private MiB (outside the deno executable's)",
    `${mr(dMem, "private")} (${medianRange(dMem.map((m) => m.private - m.denoExePrivate), f1)})`,
    "",
    "",
    "",
  ],
  [
    "  shared MiB (deno text, libc: shared with other processes)",
    mr(vMem, "shared"),
    mr(cMem, "shared"),
    "",
    "",
  ],
  [
    "  deno executable resident MiB (of which private)",
    `${mr(vMem, "denoExe")} (${mr(vMem, "denoExePrivate")})`,
    "",
    "",
    "",
  ],
  [
    `  guest RAM private MiB (${GUEST_MIB} MiB guest; peer 64)`,
    mr(vMem, "guest"),
    mr(cMem, "guest"),
    "",
    "",
  ],
];
for (const r of rows) console.log(`| ${r.join(" | ")} |`);

console.log(`\nvmkit run phases (VMKIT_TRACE_STARTUP), ms from spawn, median of ${SMALL_RUNS}:`);
const phases = [...marks].map(([phase, ts]) => ({ phase, med: median(ts), n: ts.length }));
phases.sort((a, b) => a.med - b.med);
let prev = 0;
for (const p of phases) {
  console.log(
    `  ${f1(p.med).padStart(7)}  (+${f1(p.med - prev).padStart(5)})  ${p.phase}${
      p.n < SMALL_RUNS ? ` (${p.n} runs)` : ""
    }`,
  );
  prev = p.med;
}
console.log(
  `  ${f1(median(traced)).padStart(7)}  (+${
    f1(median(traced) - prev).padStart(5)
  })  process exited (seen by this process)`,
);
console.log(`\nvmkit command: ${Deno.execPath()} ${VMKIT_RUN.join(" ")}`);
console.log(
  `peer commands: ${peerExe} ${GUEST} mode=exit:0   and   ${pioPeer} ${GUEST} mode=pio:${PIO_N}`,
);
console.log("ratio: peer/vmkit for time and memory, vmkit/peer for rates (higher is better)");
