/**
 * Helpers of the checkpoint tests: a machine running the sequence-writing
 * guest, a target that copies all guest RAM inside the pause (the reference
 * the restored RAM must equal), and RAM comparison.
 *
 * @module
 */

import { buildGuests } from "../guests/build.ts";
import { defaultDeviceSpecs } from "../../vmm/devices/mod.ts";
import { Machine } from "../../vmm/machine.ts";
import { MachineTarget } from "../../vmm/checkpoint.ts";
import type { MachineCpuState } from "../../checkpoint/target.ts";
import type { DeviceSpec } from "../../vmm/devices/spec.ts";
import type { DriveConfig } from "../../vmm/io_config.ts";

/** Guest-physical base of the sequence writer's pages. */
export const SEQ_BASE = 0x100_0000;

/** A machine running `mode=seq:<pages>` (started). */
export function seqMachine(memMiB: number, pages: number): Promise<Machine> {
  return guestMachine(memMiB, `mode=seq:${pages}`);
}

/** Options of {@link guestMachine}. */
export interface GuestMachineOptions {
  /** vCPUs (default 1). */
  vcpus?: number;
  /** Devices besides the defaults (their module in `deviceModule`). */
  devices?: DeviceSpec[];
  /** Module of the device factory. */
  deviceModule?: string;
  /** virtio-blk drives. */
  drives?: DriveConfig[];
}

/** A started machine running the PVH test guest with `cmdline`; debug-exit on port 0xf4. */
export async function guestMachine(
  memMiB: number,
  cmdline: string,
  opts: GuestMachineOptions = {},
): Promise<Machine> {
  const dir = await buildGuests();
  const kernel = await Deno.readFile(`${dir}guest-pvh.elf`);
  const m = await Machine.create({
    memMiB,
    vcpus: opts.vcpus ?? 1,
    kernel,
    cmdline,
    devices: [
      ...defaultDeviceSpecs({ memMiB, serialOut: "none", debugExitPort: DEBUG_EXIT_PORT }),
      ...opts.devices ?? [],
    ],
    ...(opts.deviceModule === undefined ? {} : { deviceModule: opts.deviceModule }),
    ...(opts.drives === undefined ? {} : { drives: opts.drives }),
  });
  await m.start();
  return m;
}

/** The debug-exit port of {@link guestMachine}. */
export const DEBUG_EXIT_PORT = 0xf4;

/** A copy of every RAM region, in order. */
export function copyRam(m: Machine): Uint8Array[] {
  return m.memory.regions.map((r) => m.memory.read(r.guestAddr, r.size));
}

/** A target that copies RAM (and remembers CPU state) inside each pause. */
export class ReferenceTarget extends MachineTarget {
  /** RAM at the last pause. */
  ram: Uint8Array[] = [];
  /** CPU state at the last pause. */
  cpu: MachineCpuState | undefined;

  override saveCpuState(): MachineCpuState {
    this.cpu = super.saveCpuState();
    this.ram = copyRam(this.machine);
    return this.cpu;
  }
}

/** The first differing offset of two RAM copies, or -1 (they are equal). */
export function firstDifference(a: Uint8Array[], b: Uint8Array[]): number {
  if (a.length !== b.length) return 0;
  let base = 0;
  for (let i = 0; i < a.length; i++) {
    const x = a[i];
    const y = b[i];
    if (x === undefined || y === undefined || x.length !== y.length) return base;
    const xw = new BigUint64Array(x.buffer, x.byteOffset, x.length / 8);
    const yw = new BigUint64Array(y.buffer, y.byteOffset, y.length / 8);
    for (let w = 0; w < xw.length; w++) if (xw[w] !== yw[w]) return base + w * 8;
    base += x.length;
  }
  return -1;
}

/** Sleeps `ms`. */
export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** Waits until the text file at `path` matches `re`; returns the text (throws after `ms`). */
export async function waitForText(path: string, re: RegExp, ms = 30_000): Promise<string> {
  const deadline = Date.now() + ms;
  for (;;) {
    const text = await Deno.readTextFile(path);
    if (re.test(text)) return text;
    if (Date.now() > deadline) throw new Error(`no ${re} within ${ms} ms in:\n${text}`);
    await sleep(20);
  }
}
