/**
 * The page cache of benchmark files: drop a file's pages before a cold run
 * (written back first, since `posix_fadvise(DONTNEED)` keeps dirty pages),
 * read it whole before a warm one, and check with mincore(2) which it is.
 *
 * @module
 */

const POSIX_FADV_DONTNEED = 4;
const O_RDONLY = 0;

let libc:
  | Deno.DynamicLibrary<{
    open: { parameters: ["buffer", "i32"]; result: "i32" };
    close: { parameters: ["i32"]; result: "i32" };
    fdatasync: { parameters: ["i32"]; result: "i32" };
    posix_fadvise: { parameters: ["i32", "i64", "i64", "i32"]; result: "i32" };
  }>
  | undefined;

function symbols() {
  libc ??= Deno.dlopen("libc.so.6", {
    open: { parameters: ["buffer", "i32"], result: "i32" },
    close: { parameters: ["i32"], result: "i32" },
    fdatasync: { parameters: ["i32"], result: "i32" },
    posix_fadvise: { parameters: ["i32", "i64", "i64", "i32"], result: "i32" },
  });
  return libc.symbols;
}

/** Writes `path`'s dirty pages back, then drops all its pages from the page cache. */
export function dropPageCache(path: string): void {
  const c = symbols();
  const fd = c.open(new TextEncoder().encode(path + "\0"), O_RDONLY);
  if (fd < 0) throw new Error(`cannot open ${path} to drop its page cache`);
  const synced = c.fdatasync(fd);
  const advised = c.posix_fadvise(fd, 0n, 0n, POSIX_FADV_DONTNEED);
  c.close(fd);
  if (synced !== 0) throw new Error(`fdatasync(${path}) failed`);
  if (advised !== 0) throw new Error(`posix_fadvise(${path}, DONTNEED) failed: error ${advised}`);
}

/** Reads `path` whole, so its pages are in the page cache. */
export async function warmPageCache(path: string): Promise<void> {
  using f = await Deno.open(path);
  const buf = new Uint8Array(1 << 20);
  while ((await f.read(buf)) !== null) { /* the read itself is the point */ }
}

/** Bytes of `path` in the page cache now (util-linux `fincore`, i.e. mincore(2)). */
export async function residentBytes(path: string): Promise<number> {
  const out = await new Deno.Command("fincore", {
    args: ["--bytes", "--noheadings", "--output", "RES", path],
    stdout: "piped",
    stderr: "piped",
  }).output();
  if (!out.success) throw new Error(`fincore ${path}: ${new TextDecoder().decode(out.stderr)}`);
  return Number(new TextDecoder().decode(out.stdout).trim());
}

/**
 * Puts `paths` in one known state before a run, the same for both sides:
 * dirty pages written back, the cache dropped, and for `warm` every page
 * read back in sequentially (so the page cache holds the same folios before
 * every warm run, and no run inherits another's dirty pages). Checks the
 * result with mincore: warm ≥ 99% resident, cold ≤ 1%. Returns the resident
 * fraction of the first path.
 */
export async function prepareCache(paths: readonly string[], warm: boolean): Promise<number> {
  let first = -1;
  for (const path of paths) {
    dropPageCache(path);
    if (warm) await warmPageCache(path);
    const size = (await Deno.stat(path)).size;
    const frac = size === 0 ? 1 : (await residentBytes(path)) / size;
    if (warm ? frac < 0.99 : frac > 0.01) {
      throw new Error(
        `${path}: ${(frac * 100).toFixed(1)}% in the page cache, wanted ${warm ? "all" : "none"}`,
      );
    }
    if (first < 0) first = frac;
  }
  return first;
}
