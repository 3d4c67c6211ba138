/**
 * Child process for the registry concurrency tests: allocates `count` SUIs for
 * VMs `<tag>-0 … <tag>-<count-1>` one at a time and prints "vm sui" to stdout
 * after each allocation returns (i.e. once it is durable).
 *
 * Usage: deno run -A registry_worker.ts SPEC TAG COUNT TYPE
 *
 * @module
 */

import { openRegistry, parseSuiType } from "../../san/mod.ts";

const [spec, tag, countText, typeText] = Deno.args;
if (spec === undefined || tag === undefined || countText === undefined) {
  console.error("usage: registry_worker.ts SPEC TAG COUNT [TYPE]");
  Deno.exit(2);
}
const type = parseSuiType(typeText ?? "iqn");
const reg = await openRegistry(spec);
const enc = new TextEncoder();
for (let i = 0; i < Number(countText); i++) {
  const r = await reg.alloc(`${tag}-${i}`, type);
  await Deno.stdout.write(enc.encode(`${r.vmId} ${r.sui}\n`));
}
await reg.close();
