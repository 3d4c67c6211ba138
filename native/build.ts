/**
 * Builds the C shim (`vmkit_shim.c`) into a shared library with `cc`, cached
 * by a hash of its source so an unchanged shim is never rebuilt.
 *
 * @module
 */

const SOURCE = new URL("./vmkit_shim.c", import.meta.url);
const CFLAGS = ["-O2", "-Wall", "-Wextra", "-Werror", "-fPIC", "-shared", "-pthread"];

/** Where built shims go: `$VMKIT_CACHE`, else `native/out/` beside the source. */
function outDir(): string {
  const env = Deno.env.get("VMKIT_CACHE");
  if (env) return env;
  return new URL("./out/", import.meta.url).pathname;
}

async function sha256Hex(data: Uint8Array<ArrayBuffer>): Promise<string> {
  const digest = await crypto.subtle.digest("SHA-256", data);
  return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, "0")).join("");
}

/**
 * Builds the shim if no library for the current source exists.
 *
 * @returns the path of the shared library.
 */
export async function buildShim(): Promise<string> {
  const src = await Deno.readFile(SOURCE);
  const hash =
    (await sha256Hex(new Uint8Array([...src, ...new TextEncoder().encode(CFLAGS.join(" "))])))
      .slice(0, 16);
  const dir = outDir();
  const lib = `${dir}/vmkit_shim-${hash}.so`;
  try {
    await Deno.stat(lib);
    return lib;
  } catch (err) {
    if (!(err instanceof Deno.errors.NotFound)) throw err;
  }
  await Deno.mkdir(dir, { recursive: true });
  const tmp = `${lib}.${Deno.pid}.tmp`;
  const out = await new Deno.Command("cc", {
    args: [...CFLAGS, "-o", tmp, SOURCE.pathname],
    stdout: "inherit",
    stderr: "inherit",
  }).output();
  if (!out.success) throw new Error(`native: cc failed to build ${SOURCE.pathname} (${out.code})`);
  await Deno.rename(tmp, lib);
  return lib;
}

if (import.meta.main) {
  console.log(await buildShim());
}
