/**
 * Boots the suite's guests with `mode=blk` over virtio-blk drives, for the
 * virtio-blk guest tests.
 *
 * @module
 */

import { defaultDeviceSpecs } from "../../vmm/devices/mod.ts";
import { Machine } from "../../vmm/machine.ts";
import type { DriveConfig } from "../../vmm/io_config.ts";
import { buildGuests } from "../guests/build.ts";

const GUESTS = await buildGuests();

/** Boots `guest` with `mode=blk` over `drives`; returns the serial output and the exit. */
export async function bootBlkGuest(
  guest: string,
  drives: DriveConfig[],
  extra: Partial<Parameters<typeof Machine.create>[0]> = {},
): Promise<{ out: string; status: number; reason: string }> {
  const dir = await Deno.makeTempDir({ prefix: "vmkit-blk-guest-" });
  const serial = `${dir}/serial.txt`;
  try {
    await using m = await Machine.create({
      memMiB: 64,
      vcpus: 1,
      kernel: await Deno.readFile(`${GUESTS}${guest}`),
      cmdline: "mode=blk",
      devices: defaultDeviceSpecs({ memMiB: 64, serialOut: { path: serial }, serialIn: false }),
      drives,
      ...extra,
    });
    await m.start();
    const timer = setTimeout(() => void m.stop(), 60_000);
    const exit = await m.wait();
    clearTimeout(timer);
    return { out: await Deno.readTextFile(serial), ...exit };
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}
