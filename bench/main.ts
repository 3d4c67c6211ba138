/**
 * Runs every benchmark (`bench/*_bench.ts`) in turn, each in its own process.
 *
 * Usage: `deno task bench [NAME-SUBSTRING...]`
 *
 * @module
 */

const dir = new URL(".", import.meta.url).pathname;
const filters = Deno.args;
const files: string[] = [];
for await (const entry of Deno.readDir(dir)) {
  if (!entry.isFile || !entry.name.endsWith("_bench.ts")) continue;
  if (filters.length > 0 && !filters.some((f) => entry.name.includes(f))) continue;
  files.push(entry.name);
}
files.sort();
let failed = 0;
for (const name of files) {
  console.log(`\n=== ${name} ===`);
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", `${dir}${name}`],
    stdout: "inherit",
    stderr: "inherit",
  }).output();
  if (!out.success) {
    failed++;
    console.error(`bench ${name} failed (exit ${out.code})`);
  }
}
console.log(`\n${files.length - failed} benchmarks ran, ${failed} failed`);
Deno.exit(failed === 0 ? 0 : 1);
