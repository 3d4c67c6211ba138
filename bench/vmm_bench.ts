/**
 * VMM benchmarks, each beside its peer in the same run:
 * - whole-process `vmkit run` of a guest that powers off at once (median of 10)
 *   vs the same guest under a minimal C VMM (`bench/kvm_loop.c`);
 * - port-I/O exits per second for a guest doing 100 000 `out`s: vmkit's
 *   `Machine` vs the bare C `KVM_RUN` loop (target ≥ 0.8×);
 * - VMM resident memory beyond the guest pages it touched (target ≤ 60 MiB).
 *
 * @module
 */

import { Machine } from "../vmm/machine.ts";
import { defaultDeviceSpecs } from "../vmm/devices/mod.ts";

const ROOT = new URL("../", import.meta.url).pathname;
const GUEST = `${ROOT}tests/guests/out/guest-pvh.elf`;
const PIO_N = 100_000;

async function buildPeer(): Promise<string> {
  const out = `${ROOT}native/out/kvm_loop`;
  const r = await new Deno.Command("cc", {
    args: ["-O2", "-Wall", "-Wextra", "-Werror", "-o", out, `${ROOT}bench/kvm_loop.c`],
  }).output();
  if (!r.success) {
    throw new Error(`cc bench/kvm_loop.c failed: ${new TextDecoder().decode(r.stderr)}`);
  }
  return out;
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 ? s[mid] ?? NaN : ((s[mid - 1] ?? NaN) + (s[mid] ?? NaN)) / 2;
}

async function timeProcess(cmd: string, args: string[]): Promise<number> {
  const t0 = performance.now();
  const r = await new Deno.Command(cmd, { args, stdout: "null", stderr: "piped" }).output();
  const ms = performance.now() - t0;
  if (r.code !== 0 && r.code !== 1) {
    throw new Error(
      `${cmd} ${args.join(" ")} exited ${r.code}: ${new TextDecoder().decode(r.stderr)}`,
    );
  }
  return ms;
}

async function peerExits(peer: string): Promise<{ exits: number; ns: number }> {
  const r = await new Deno.Command(peer, { args: [GUEST, `mode=pio:${PIO_N}`], stderr: "piped" })
    .output();
  if (!r.success) throw new Error(`kvm_loop failed: ${new TextDecoder().decode(r.stderr)}`);
  return JSON.parse(new TextDecoder().decode(r.stdout));
}

async function vmkitExits(): Promise<{ exits: number; ns: number }> {
  const kernel = await Deno.readFile(GUEST);
  await using m = await Machine.create({
    memMiB: 64,
    vcpus: 1,
    kernel,
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
  return { exits: PIO_N + 1, ns };
}

/**
 * Resident memory of process `pid` from its smaps, in MiB: in all, in the
 * guest-RAM mapping (the VMA of `guestBytes`), private anonymous outside it,
 * and the deno executable's text.
 */
async function residentMiB(
  pid: number,
  guestBytes: number,
): Promise<{ total: number; guest: number; anon: number; exe: number }> {
  const smaps = await Deno.readTextFile(`/proc/${pid}/smaps`);
  let total = 0;
  let guest = 0;
  let anon = 0;
  let exe = 0;
  for (const vma of smaps.split(/\n(?=[0-9a-f]+-[0-9a-f]+ )/)) {
    const range = vma.match(/^([0-9a-f]+)-([0-9a-f]+) /);
    const rss = vma.match(/^Rss:\s+(\d+) kB$/m);
    if (!range || !rss) continue;
    const size = parseInt(range[2] ?? "0", 16) - parseInt(range[1] ?? "0", 16);
    const kb = Number(rss[1]);
    total += kb;
    if (size === guestBytes) guest += kb;
    else anon += Number(vma.match(/^Anonymous:\s+(\d+) kB$/m)?.[1] ?? 0);
    if (vma.split("\n")[0]?.endsWith("/deno")) exe += kb;
  }
  return { total: total / 1024, guest: guest / 1024, anon: anon / 1024, exe: exe / 1024 };
}

/** RSS of a `vmkit run` child minus the resident pages of its guest-RAM mapping. */
async function vmkitOverheadMiB(
  memMiB: number,
): Promise<{ total: number; guest: number; anon: number; exe: number }> {
  const dir = await Deno.makeTempDir();
  const child = new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "-A",
      `${ROOT}cli/main.ts`,
      "run",
      "--kernel",
      GUEST,
      "--mem",
      String(memMiB),
      "--cmdline",
      "mode=spin",
      "--serial-out",
      `${dir}/serial`,
    ],
    stdin: "null",
    stdout: "null",
    stderr: "null",
  }).spawn();
  try {
    const end = performance.now() + 20_000;
    while (performance.now() < end) {
      const text = await Deno.readTextFile(`${dir}/serial`).catch(() => "");
      if (text.includes("tick 1\n")) break;
      await new Promise((r) => setTimeout(r, 100));
    }
    return await residentMiB(child.pid, memMiB * 2 ** 20);
  } finally {
    child.kill("SIGKILL");
    await child.status;
    await Deno.remove(dir, { recursive: true });
  }
}

/** Resident MiB of the C peer beyond its guest RAM (64 MiB), sampled as for vmkit. */
async function peerRssMiB(peer: string): Promise<number> {
  const child = new Deno.Command(peer, {
    args: [GUEST, "mode=spin"],
    stdout: "null",
    stderr: "null",
  }).spawn();
  try {
    await new Promise((r) => setTimeout(r, 1500));
    const rss = await residentMiB(child.pid, 64 * 2 ** 20);
    return rss.total - rss.guest;
  } finally {
    child.kill("SIGKILL");
    await child.status;
  }
}

const peer = await buildPeer();
const cpu = (await Deno.readTextFile("/proc/cpuinfo")).match(/model name\s*:\s*(.*)/)?.[1] ?? "?";
console.log(`machine: ${navigator.hardwareConcurrency} cpus, ${cpu}, Deno ${Deno.version.deno}`);

const runMs: number[] = [];
const peerMs: number[] = [];
for (let i = 0; i < 10; i++) {
  runMs.push(
    await timeProcess(Deno.execPath(), [
      "run",
      "-A",
      `${ROOT}cli/main.ts`,
      "run",
      "--kernel",
      GUEST,
      "--mem",
      "64",
      "--cmdline",
      "mode=reset",
    ]),
  );
  peerMs.push(await timeProcess(peer, [GUEST, "mode=exit:0"]));
}

const v = await vmkitExits();
const c = await peerExits(peer);
const vRate = v.exits / (v.ns / 1e9);
const cRate = c.exits / (c.ns / 1e9);

const rss = await vmkitOverheadMiB(256);
const overhead = rss.total - rss.guest;
const peerRss = await peerRssMiB(peer);

const rows: Array<[string, string, string, string]> = [
  ["metric", "vmkit", "peer (bench/kvm_loop.c)", "ratio"],
  [
    "whole-process run, power-off guest, median of 10 (ms; target ≤ 100)",
    median(runMs).toFixed(1),
    median(peerMs).toFixed(1),
    (median(peerMs) / median(runMs)).toFixed(3),
  ],
  [
    `port-I/O exits per second (${PIO_N} outs; target ≥ 0.8×)`,
    vRate.toFixed(0),
    cRate.toFixed(0),
    (vRate / cRate).toFixed(3),
  ],
  [
    "resident MiB beyond touched guest pages (target ≤ 60)",
    overhead.toFixed(1),
    peerRss.toFixed(1),
    (peerRss / overhead).toFixed(3),
  ],
  [
    "  of which private anonymous MiB (heaps, isolates, stacks)",
    rss.anon.toFixed(1),
    "",
    "",
  ],
  [
    "  of which the deno executable's shared text MiB",
    rss.exe.toFixed(1),
    "",
    "",
  ],
];
for (const r of rows) console.log(`| ${r.join(" | ")} |`);
console.log(
  `(vmkit total RSS ${rss.total.toFixed(1)} MiB of which guest RAM ${rss.guest.toFixed(1)} MiB)`,
);
console.log(
  `peer commands: ${peer} ${GUEST} mode=exit:0   and   ${peer} ${GUEST} mode=pio:${PIO_N}`,
);
console.log("ratio: peer/vmkit for time and memory, vmkit/peer for rates (higher is better)");
