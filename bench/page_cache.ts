/**
 * The page cache of benchmark files: drop a file's pages before a cold run
 * (written back first, since `posix_fadvise(DONTNEED)` keeps dirty pages),
 * or read it whole before a warm one.
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
