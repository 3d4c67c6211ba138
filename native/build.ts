/**
 * Builds the C shim (every `native/*.c`: `vmkit_shim.c` for KVM, `net.c` for
 * TAP/AF_PACKET, ...) into one shared library with `cc`, cached by a hash of
 * the sources and flags so an unchanged shim is never rebuilt.
 *
 * @module
 */

const NATIVE_DIR = new URL("./", import.meta.url).pathname;
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
  const sources: string[] = [];
  for await (const e of Deno.readDir(NATIVE_DIR)) {
    if (e.isFile && (e.name.endsWith(".c") || e.name.endsWith(".h"))) sources.push(e.name);
  }
  sources.sort();
  const parts: Uint8Array[] = [new TextEncoder().encode(CFLAGS.join(" "))];
  for (const name of sources) {
    parts.push(new TextEncoder().encode(name), await Deno.readFile(NATIVE_DIR + name));
  }
  const all = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let off = 0;
  for (const p of parts) {
    all.set(p, off);
    off += p.length;
  }
  const hash = (await sha256Hex(all)).slice(0, 16);
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
    args: [
      ...CFLAGS,
      "-o",
      tmp,
      ...sources.filter((n) => n.endsWith(".c")).map((n) => NATIVE_DIR + n),
    ],
    stdout: "inherit",
    stderr: "inherit",
  }).output();
  if (!out.success) {
    throw new Error(`native: cc failed to build the shim in ${NATIVE_DIR} (${out.code})`);
  }
  await Deno.rename(tmp, lib);
  return lib;
}

if (import.meta.main) {
  console.log(await buildShim());
}
