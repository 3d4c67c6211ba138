import assert from "node:assert/strict";

const ROOT = new URL("../../", import.meta.url).pathname.replace(/\/$/, "");

async function run(cmd: string, args: string[], cwd: string, env: Record<string, string> = {}) {
  const o = await new Deno.Command(cmd, { args, cwd, env, stdout: "piped", stderr: "piped" })
    .output();
  const dec = new TextDecoder();
  return { code: o.code, stdout: dec.decode(o.stdout), stderr: dec.decode(o.stderr) };
}

Deno.test("README first steps: another project imports vmkit through deno.json links and through an import map", async () => {
  const dir = await Deno.makeTempDir({ prefix: "vmkit-user-" });
  try {
    const main = `import { VERSION } from "@vmkit/vmkit";
import { checkImage, createImage } from "@vmkit/vmkit/cow";
const dir = await Deno.makeTempDir();
createImage(\`\${dir}/a.qcow2\`, { size: 1 << 20 }).closeSync();
console.log(VERSION, checkImage(\`\${dir}/a.qcow2\`).errors.length);
await Deno.remove(dir, { recursive: true });
`;
    for (
      const [name, config] of [
        ["links", { links: [ROOT] }],
        ["imports", {
          imports: { "@vmkit/vmkit": `${ROOT}/mod.ts`, "@vmkit/vmkit/cow": `${ROOT}/cow/mod.ts` },
        }],
      ] as const
    ) {
      await Deno.mkdir(`${dir}/${name}`);
      await Deno.writeTextFile(`${dir}/${name}/deno.json`, JSON.stringify(config));
      await Deno.writeTextFile(`${dir}/${name}/main.ts`, main);
      const r = await run(Deno.execPath(), ["run", "-A", "main.ts"], `${dir}/${name}`);
      assert.equal(r.code, 0, `${name}: ${r.stderr}`);
      assert.match(r.stdout, /^\d+\.\d+\.\d+ 0\n$/, name);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("README first steps: deno install from the clone gives a vmkit command", async () => {
  const dir = await Deno.makeTempDir({ prefix: "vmkit-install-" });
  try {
    const r = await run(Deno.execPath(), [
      "install",
      "-g",
      "-A",
      "-n",
      "vmkit",
      "--root",
      dir,
      "--config",
      "deno.json",
      "cli/main.ts",
    ], ROOT);
    assert.equal(r.code, 0, r.stderr);
    const path = `${Deno.execPath().replace(/\/[^/]*$/, "")}:/usr/bin:/bin`;
    const v = await run(`${dir}/bin/vmkit`, ["disk", "create", "x.qcow2", "--size", "1M"], dir, {
      PATH: path,
    });
    assert.equal(v.code, 0, v.stderr);
    assert.match(v.stdout, /^created x\.qcow2 \(qcow2, 1048576 bytes\)\n$/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
