/**
 * What both sides of the checkpoint bench share: its options, the guest's
 * serial protocol (TSC gap answers), the per-size result record and small
 * helpers. See `checkpoint_bench.ts` for what is measured.
 *
 * @module
 */

import { buildGuests } from "../tests/guests/build.ts";
import type { PausePhases } from "../checkpoint/mod.ts";
import type { RestorePhases } from "../vmm/checkpoint.ts";

export const MiB = 1 << 20;
export const HOT_PAGES = 256;

export function arg(name: string, fallback: string): string {
  const i = Deno.args.indexOf(`--${name}`);
  return i >= 0 ? Deno.args[i + 1] ?? fallback : fallback;
}
export const SIZES = arg("sizes", "128,1024").split(",").map(Number);
export const RUNS = Number(arg("runs", "20"));
export const CLONES = Number(arg("clones", "10"));
export const QEMU_CLONES = Number(arg("qemu-clones", String(CLONES)));
export const QEMU = !Deno.args.includes("--no-qemu");
export const ROOT = arg("dir", "/var/tmp");
export const RESTORE_ONLY = Deno.args.includes("--restore-only");
export const RESTORE_RUNS = Number(arg("restore-runs", "5"));

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export function p99(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.ceil(s.length * 0.99) - 1)] ?? NaN;
}

/** Reads the guest's "gap G tsc T loops L" answer to 'g'. */
export function parseGap(line: string): { gap: number; tsc: number } {
  const m = /gap 0x([0-9a-f]+) tsc 0x([0-9a-f]+)/.exec(line);
  if (m === null) throw new Error(`bad gap line '${line}'`);
  return { gap: parseInt(m[1] ?? "0", 16), tsc: parseInt(m[2] ?? "0", 16) };
}

/** A guest's serial port: send bytes, wait for a line. */
export interface GuestPort {
  send(text: string): Promise<void>;
  line(pred: (l: string) => boolean, ms: number): Promise<string>;
}

/** TSC ticks per µs, from two answers 2 s apart (host clock). */
export async function calibrate(port: GuestPort): Promise<number> {
  await port.send("g");
  const a = parseGap(await port.line((l) => l.startsWith("gap "), 10_000));
  const ta = performance.now();
  await sleep(2000);
  await port.send("g");
  const b = parseGap(await port.line((l) => l.startsWith("gap "), 10_000));
  const tb = performance.now();
  return (b.tsc - a.tsc) / ((tb - ta) * 1000);
}

/** The largest gap (µs) since the last 'r'. */
export async function gapUs(port: GuestPort, ticksPerUs: number): Promise<number> {
  await port.send("g");
  return parseGap(await port.line((l) => l.startsWith("gap "), 30_000)).gap / ticksPerUs;
}

export interface SizeResult {
  mib: number;
  side: "vmkit" | "qemu";
  hostPauseUs: number[];
  guestGapUs: number[];
  note: string;
  /** vmkit: where each pause went. */
  phases: PausePhases[];
  /** 1 GiB only: request to a complete, durable checkpoint, every full run (ms). */
  totalsMs: number[];
  stopCopyMs?: number;
  stopCopyPauseUs?: number;
  /** Restore to running, every run (ms). */
  restoreMs: number[];
  /** vmkit: where each restore went. */
  restorePhases: RestorePhases[];
  writeMBs?: number;
  diff?: { ms: number; bytes: number; fullMs: number; fullBytes: number };
  faultUs?: { mean: number; max: number; count: number };
  clones?: { n: number; ms: number; rssMb: number; pssMb: number };
}

/** A size's result with no runs yet. */
export function emptyResult(mib: number, side: "vmkit" | "qemu"): SizeResult {
  return {
    mib,
    side,
    hostPauseUs: [],
    guestGapUs: [],
    note: "",
    phases: [],
    restoreMs: [],
    totalsMs: [],
    restorePhases: [],
  };
}

export async function kernelPath(): Promise<string> {
  return `${await buildGuests()}guest-pvh.elf`;
}

/** SIGTERM, unless it exited already; waits for it. */
export async function stopChild(k: Deno.ChildProcess): Promise<void> {
  try {
    k.kill("SIGTERM");
  } catch (err) {
    if (!(err instanceof TypeError)) throw err;
  }
  await k.status;
}
