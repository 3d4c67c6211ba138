/**
 * `deno task build:npm`: writes `dist/npm/`, the Node build of vmkit: one
 * ESM bundle per entry (esbuild), `.d.ts` files (TypeScript's
 * `transpileDeclaration`, which needs no type check because every export
 * carries an explicit type, as `deno doc --lint` requires) and a
 * `package.json` with `exports` per primitive. See `npm/README.md`.
 *
 * @module
 */

import * as esbuild from "esbuild";
import ts from "typescript";
import { VERSION } from "../version.ts";

const ROOT = new URL("../", import.meta.url).pathname;
/** The entries: the package's subpaths and the module each bundles. */
export const ENTRIES: Readonly<Record<string, string>> = {
  index: "npm/mod.ts",
  cow: "npm/cow.ts",
  san: "npm/san.ts",
  netguard: "npm/netguard.ts",
  dsm: "npm/dsm.ts",
};

/**
 * Prepended to every bundle: under Node, any use of the `Deno` namespace
 * (the file and socket parts the Node build does not cover) throws an error
 * that says so, instead of a bare `ReferenceError`.
 */
const DENO_GUARD = `const Deno = globalThis.Deno ?? new Proxy({}, { get(_t, key) {
  throw new Error("vmkit: Deno." + String(key) + " requires Deno: this part of vmkit is not in the Node build (use the Deno module @vmkit/vmkit)");
} });`;

function rewriteSpecifiers(dts: string): string {
  return dts.replace(/(from\s+|import\()(["'])(\.{1,2}\/[^"']+)\.ts\2/g, "$1$2$3.js$2");
}

/** Builds `dist/npm/` under `root` (default: the repository); returns the output folder. */
export async function buildNpm(out = `${ROOT}dist/npm`): Promise<string> {
  await Deno.remove(out, { recursive: true }).catch((err: unknown) => {
    if (!(err instanceof Deno.errors.NotFound)) throw err;
  });
  const result = await esbuild.build({
    absWorkingDir: ROOT,
    entryPoints: Object.fromEntries(Object.entries(ENTRIES).map(([k, v]) => [k, `${ROOT}${v}`])),
    outdir: out,
    bundle: true,
    splitting: true,
    format: "esm",
    platform: "node",
    target: "node18",
    metafile: true,
    banner: { js: DENO_GUARD },
    logLevel: "warning",
  });
  await esbuild.stop();
  const inputs = Object.keys(result.metafile.inputs).filter((p) => p.endsWith(".ts"));
  const problems: string[] = [];
  for (const rel of inputs) {
    const source = await Deno.readTextFile(`${ROOT}${rel}`);
    const { outputText, diagnostics } = ts.transpileDeclaration(source, {
      fileName: rel,
      compilerOptions: {
        strict: true,
        allowImportingTsExtensions: true,
        target: ts.ScriptTarget.ES2022,
      },
      reportDiagnostics: true,
    });
    for (const d of diagnostics ?? []) {
      const at = d.file === undefined || d.start === undefined
        ? ""
        : `:${d.file.getLineAndCharacterOfPosition(d.start).line + 1}`;
      problems.push(`${rel}${at}: ${ts.flattenDiagnosticMessageText(d.messageText, " ")}`);
    }
    const dest = `${out}/types/${rel.replace(/\.ts$/, ".d.ts")}`;
    await Deno.mkdir(dest.replace(/\/[^/]*$/, ""), { recursive: true });
    await Deno.writeTextFile(dest, rewriteSpecifiers(outputText));
  }
  if (problems.length > 0) {
    throw new Error(
      `build:npm: cannot emit declarations without a type check (give these exports ` +
        `explicit types):\n  ${problems.join("\n  ")}`,
    );
  }
  const exports: Record<string, { types: string; import: string }> = {};
  for (const [name, src] of Object.entries(ENTRIES)) {
    exports[name === "index" ? "." : `./${name}`] = {
      types: `./types/${src.replace(/\.ts$/, ".d.ts")}`,
      import: `./${name}.js`,
    };
  }
  const manifest = {
    name: "@vmkit/vmkit",
    version: VERSION,
    description:
      "vmkit's Deno-free parts for Node: qcow2 checking, SAN identities and iSCSI/SCSI " +
      "codecs, pcap parsing and netguard's detectors, dsm's protocol codecs",
    license: "MIT",
    type: "module",
    engines: { node: ">=18" },
    exports,
    types: exports["."]?.types,
    sideEffects: false,
  };
  await Deno.writeTextFile(`${out}/package.json`, JSON.stringify(manifest, null, 2) + "\n");
  await Deno.copyFile(`${ROOT}npm/README.md`, `${out}/README.md`);
  await Deno.copyFile(`${ROOT}LICENSE`, `${out}/LICENSE`);
  return out;
}

if (import.meta.main) {
  if (Deno.args[0] === "--check") {
    // `deno task check`: the build must succeed (declarations emit without a type check).
    const tmp = await Deno.makeTempDir({ prefix: "vmkit-npm-check-" });
    try {
      await buildNpm(`${tmp}/npm`);
    } finally {
      await Deno.remove(tmp, { recursive: true });
    }
  } else {
    const out = await buildNpm(Deno.args[0]);
    console.error(`build:npm: wrote ${out}`);
  }
}
