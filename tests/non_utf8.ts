/**
 * Runs the `vmkit` CLI with a file name that is not UTF-8, which Deno's own
 * process API cannot pass (its arguments are strings): a shell builds the
 * byte 0xFF into the argument.
 *
 * @module
 */

const MAIN = new URL("../cli/main.ts", import.meta.url).pathname;

/** The placeholder in `args` that becomes `prefix` + 0xFF + `suffix`. */
export const BAD_NAME = "@NON-UTF-8@";

const SCRIPT = `bad=$(printf '%s\\377%s' "$1" "$2"); shift 2
n=$#; i=0
while [ "$i" -lt "$n" ]; do a=$1; shift; [ "$a" = "${BAD_NAME}" ] && a=$bad; set -- "$@" "$a"; i=$((i+1)); done
exec "$@"`;

/** Runs `vmkit ARGS`, {@link BAD_NAME} replaced by a non-UTF-8 name; returns the exit code and stderr. */
export async function vmkitNonUtf8(
  prefix: string,
  suffix: string,
  ...args: string[]
): Promise<{ code: number; stderr: string }> {
  const out = await new Deno.Command("sh", {
    args: ["-c", SCRIPT, "sh", prefix, suffix, Deno.execPath(), "run", "-A", MAIN, ...args],
    stdout: "null",
    stderr: "piped",
  }).output();
  return { code: out.code, stderr: new TextDecoder().decode(out.stderr) };
}
