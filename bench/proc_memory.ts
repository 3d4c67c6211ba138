/**
 * A process's resident memory from `/proc/PID/smaps_rollup` and
 * `/proc/PID/smaps`, split the way the VMM bench reports it: the private
 * pages (Private_Clean + Private_Dirty of the rollup) minus the guest RAM
 * mapping's, the guest RAM's own, the pages shared with other processes
 * (Shared_Clean + Shared_Dirty: mostly the deno executable's text, which
 * every deno process maps), and the deno executable's mappings on their own.
 *
 * @module
 */

/** Resident MiB of one process. */
export interface ProcessMemory {
  /** Private pages outside guest RAM (the rollup's private minus the guest mapping's). */
  readonly private: number;
  /** Private pages of the guest RAM mapping (the VMA exactly `guestBytes` long). */
  readonly guest: number;
  /** Shared_Clean + Shared_Dirty (shared with other processes: the deno text, libc). */
  readonly shared: number;
  /** Resident pages of the deno executable's own mappings (text, data), shared or not. */
  readonly denoExe: number;
  /** Of {@link private}: the deno executable's private pages (its data segment, unshared text). */
  readonly denoExePrivate: number;
  /** Rss of the rollup. */
  readonly rss: number;
}

function kb(text: string, field: string): number {
  const m = new RegExp(`^${field}:\\s+(\\d+) kB$`, "m").exec(text);
  return m === null ? 0 : Number(m[1]);
}

/**
 * The memory of `pid`: `guestBytes` names the guest RAM mapping (0: none),
 * `exeSuffix` the executable whose mappings are counted apart.
 */
export async function processMemory(
  pid: number,
  guestBytes: number,
  exeSuffix = "/deno",
): Promise<ProcessMemory> {
  const rollup = await Deno.readTextFile(`/proc/${pid}/smaps_rollup`);
  const smaps = await Deno.readTextFile(`/proc/${pid}/smaps`);
  let guest = 0;
  let denoExe = 0;
  let denoExePrivate = 0;
  for (const vma of smaps.split(/\n(?=[0-9a-f]+-[0-9a-f]+ )/)) {
    const range = /^([0-9a-f]+)-([0-9a-f]+) /.exec(vma);
    if (range === null) continue;
    const size = parseInt(range[2] ?? "0", 16) - parseInt(range[1] ?? "0", 16);
    const priv = kb(vma, "Private_Clean") + kb(vma, "Private_Dirty");
    const name = vma.split("\n")[0] ?? "";
    if (guestBytes > 0 && size === guestBytes && !name.includes("/")) guest += priv;
    if (name.endsWith(exeSuffix)) {
      denoExe += kb(vma, "Rss");
      denoExePrivate += priv;
    }
  }
  const mib = (k: number) => k / 1024;
  return {
    private: mib(kb(rollup, "Private_Clean") + kb(rollup, "Private_Dirty") - guest),
    guest: mib(guest),
    shared: mib(kb(rollup, "Shared_Clean") + kb(rollup, "Shared_Dirty")),
    denoExe: mib(denoExe),
    denoExePrivate: mib(denoExePrivate),
    rss: mib(kb(rollup, "Rss")),
  };
}
