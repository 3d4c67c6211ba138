import assert from "node:assert/strict";
import { SHIM_SOURCES } from "../../native/_sources.ts";
import { SHIM_HASH } from "../../native/_shim_hash.ts";
import {
  buildShim,
  builtShimPath,
  ShimBuildError,
  shimCacheDir,
  shimHash,
} from "../../native/build.ts";
import { hashModule, sourcesModule } from "../../native/gen_sources.ts";
import { dsmNodeCommand } from "../../cli/dsm.ts";

const ROOT = new URL("../../", import.meta.url).pathname;
const DEMO = `${ROOT}tests/guests/out/demo.elf`;

interface Out {
  code: number;
  stdout: string;
  stderr: string;
}

async function run(cmd: string, args: string[], env: Record<string, string> = {}): Promise<Out> {
  const o = await new Deno.Command(cmd, {
    args,
    env,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  })
    .output();
  const dec = new TextDecoder();
  return { code: o.code, stdout: dec.decode(o.stdout), stderr: dec.decode(o.stderr) };
}

/** Serves the repository read-only over HTTP on loopback, as a static host of the module would. */
function serveRepo(): { url: string } & AsyncDisposable {
  const types: Record<string, string> = {
    ts: "application/typescript",
    json: "application/json",
    js: "text/javascript",
  };
  const server = Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen: () => {} },
    async (req) => {
      const path = decodeURIComponent(new URL(req.url).pathname);
      if (path.includes("..")) return new Response("bad path", { status: 400 });
      try {
        const body = await Deno.readFile(`${ROOT}${path.slice(1)}`);
        const ext = path.split(".").pop() ?? "";
        return new Response(body, {
          headers: { "content-type": types[ext] ?? "application/octet-stream" },
        });
      } catch (err) {
        if (err instanceof Deno.errors.NotFound || err instanceof Deno.errors.IsADirectory) {
          return new Response("not found", { status: 404 });
        }
        throw err;
      }
    },
  );
  return {
    url: `http://127.0.0.1:${server.addr.port}/`,
    [Symbol.asyncDispose]: () => server.shutdown(),
  };
}

async function listTree(dir: string): Promise<string[]> {
  const out: string[] = [];
  for await (const e of Deno.readDir(dir)) {
    out.push(e.name);
    if (e.isDirectory) {
      out.push(...(await listTree(`${dir}/${e.name}`)).map((n) => `${e.name}/${n}`));
    }
  }
  return out.sort();
}

Deno.test("the generated C sources module is current and holds every native/*.c and *.h", async () => {
  assert.equal(
    await Deno.readTextFile(`${ROOT}native/_sources.ts`),
    await sourcesModule(),
    "run `deno task gen`",
  );
  for await (const e of Deno.readDir(`${ROOT}native`)) {
    if (!/\.[ch]$/.test(e.name)) continue;
    assert.equal(SHIM_SOURCES[e.name], await Deno.readTextFile(`${ROOT}native/${e.name}`));
  }
  assert.ok("vmkit_shim.c" in SHIM_SOURCES);
  assert.equal(await Deno.readTextFile(`${ROOT}native/_shim_hash.ts`), await hashModule());
  assert.equal(SHIM_HASH, await shimHash(SHIM_SOURCES));
  assert.match(await buildShim(), new RegExp(`/vmkit_shim-${SHIM_HASH}\\.so$`));
  assert.equal(
    builtShimPath(),
    await buildShim(),
    "the synchronous look-up finds the same library",
  );
});

Deno.test("the shim cache is $VMKIT_CACHE, else $XDG_CACHE_HOME/vmkit, else ~/.cache/vmkit", () => {
  const env = (vars: Record<string, string>) => (k: string) => vars[k];
  assert.equal(shimCacheDir(env({ VMKIT_CACHE: "/c", XDG_CACHE_HOME: "/x", HOME: "/h" })), "/c");
  assert.equal(shimCacheDir(env({ XDG_CACHE_HOME: "/x", HOME: "/h" })), "/x/vmkit");
  assert.equal(shimCacheDir(env({ HOME: "/h" })), "/h/.cache/vmkit");
  assert.match(shimCacheDir(env({})), /^\/tmp\/vmkit-cache-/);
});

Deno.test("VMKIT_SHIM names a prebuilt shim; a missing one is a clear error", async () => {
  const lib = await buildShim();
  const dir = await Deno.makeTempDir({ prefix: "vmkit-shim-" });
  const saved = Deno.env.get("VMKIT_SHIM");
  try {
    Deno.env.set("VMKIT_SHIM", lib);
    assert.equal(await buildShim({ cacheDir: `${dir}/cache` }), lib);
    assert.deepEqual(await listTree(dir), [], "a prebuilt shim builds nothing");
    Deno.env.set("VMKIT_SHIM", `${dir}/nope.so`);
    await assert.rejects(buildShim(), (err: unknown) => {
      assert.ok(err instanceof ShimBuildError);
      assert.match(err.message, /VMKIT_SHIM names '.*nope\.so', which does not exist/);
      return true;
    });
  } finally {
    if (saved === undefined) Deno.env.delete("VMKIT_SHIM");
    else Deno.env.set("VMKIT_SHIM", saved);
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a compiled vmkit starts dsm nodes as itself ('vmkit dsm node'), a deno run one as 'deno run'", () => {
  assert.deepEqual(dsmNodeCommand(true, "/usr/local/bin/vmkit"), [
    "/usr/local/bin/vmkit",
    "dsm",
    "node",
  ]);
  assert.equal(dsmNodeCommand(false, "/usr/bin/deno"), undefined);
});

Deno.test("dsm run's nodes work when started through the CLI as a compiled binary starts them", async () => {
  const dir = await Deno.makeTempDir({ prefix: "vmkit-dsmcmd-" });
  try {
    // Stands in for the compiled executable: a program that is the vmkit CLI.
    const exe = `${dir}/vmkit`;
    await Deno.writeTextFile(
      exe,
      `#!/bin/sh\nexec '${Deno.execPath()}' run -A --no-prompt '${ROOT}cli/main.ts' "$@"\n`,
    );
    await Deno.chmod(exe, 0o755);
    const { runLocalCluster } = await import("../../dsm/cluster.ts");
    const r = await runLocalCluster({
      program: "histogram",
      nodes: 2,
      nodeCommand: [exe, ...(dsmNodeCommand(true, exe) ?? []).slice(1)],
    });
    assert.equal(r.stats.length, 2);
    assert.notEqual(r.result, undefined);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("the shim builds from the embedded sources in a read-only folder with no C files, writing only to the cache, and is found again by its generated hash without them", async () => {
  const dir = await Deno.makeTempDir({ prefix: "vmkit-embed-" });
  try {
    // Like a compiled binary: build.ts and its generated sources, nothing else, not writable.
    await Deno.mkdir(`${dir}/app`);
    for (const f of ["build.ts", "_sources.ts", "_shim_hash.ts"]) {
      await Deno.copyFile(`${ROOT}native/${f}`, `${dir}/app/${f}`);
    }
    await Deno.chmod(`${dir}/app`, 0o555);
    const r = await run(Deno.execPath(), ["run", "-A", `${dir}/app/build.ts`], {
      XDG_CACHE_HOME: `${dir}/xdg`,
      VMKIT_CACHE: "",
      VMKIT_SHIM: "",
    });
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, new RegExp(`^${dir}/xdg/vmkit/vmkit_shim-[0-9a-f]{16}\\.so\\n$`));
    assert.deepEqual(await listTree(`${dir}/app`), ["_shim_hash.ts", "_sources.ts", "build.ts"]);
    const cached = await listTree(`${dir}/xdg/vmkit`);
    assert.equal(cached.length, 1, `only the library is left in the cache: ${cached}`);
    // A cached shim needs no cc, and not even the sources: it is found by the generated hash.
    await Deno.chmod(`${dir}/app`, 0o755);
    await Deno.remove(`${dir}/app/_sources.ts`);
    await Deno.chmod(`${dir}/app`, 0o555);
    const again = await run(Deno.execPath(), ["run", "-A", `${dir}/app/build.ts`], {
      XDG_CACHE_HOME: `${dir}/xdg`,
      PATH: "/nonexistent",
    });
    assert.equal(again.stdout, r.stdout, again.stderr);
  } finally {
    await Deno.chmod(`${dir}/app`, 0o755);
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a script importing vmkit only by HTTP URL boots the demo guest, and deno install of the URL gives a working vmkit (needs /dev/kvm)", async () => {
  const dir = await Deno.makeTempDir({ prefix: "vmkit-http-" });
  await using repo = serveRepo();
  try {
    await Deno.writeTextFile(
      `${dir}/boot.ts`,
      `import { defaultDeviceSpecs, Machine } from "${repo.url}vmm/mod.ts";
const kernel = await Deno.readFile(${JSON.stringify(DEMO)});
await using vm = await Machine.create({
  memMiB: 64,
  vcpus: 1,
  kernel,
  cmdline: "booted over http",
  devices: defaultDeviceSpecs({ memMiB: 64, serialOut: { path: ${
        JSON.stringify(`${dir}/serial.txt`)
      } } }),
});
await vm.start();
console.log(JSON.stringify(await vm.wait()));
`,
    );
    const env = {
      DENO_DIR: `${dir}/deno_dir`, // nothing of the checkout is cached for the script
      XDG_CACHE_HOME: `${dir}/xdg`,
      VMKIT_CACHE: "",
      VMKIT_SHIM: "",
    };
    const r = await run(Deno.execPath(), ["run", "-A", `${dir}/boot.ts`], env);
    assert.equal(r.code, 0, r.stderr);
    assert.equal((JSON.parse(r.stdout) as { status: number }).status, 0, r.stdout);
    const serial = await Deno.readTextFile(`${dir}/serial.txt`);
    assert.match(serial, /my command line is "booted over http"/);
    assert.match(serial, /powering off through the i8042/);
    assert.equal(
      (await listTree(`${dir}/xdg/vmkit`)).length,
      1,
      "the shim was built into the cache",
    );

    // deno install -g from the URL; the installed script runs `deno` from PATH.
    const inst = await run(Deno.execPath(), [
      "install",
      "-g",
      "-A",
      "-n",
      "vmkit",
      "--root",
      `${dir}/root`,
      `${repo.url}cli/main.ts`,
    ], env);
    assert.equal(inst.code, 0, inst.stderr);
    const path = `${Deno.execPath().replace(/\/[^/]*$/, "")}:/usr/bin:/bin`;
    const v = await run(`${dir}/root/bin/vmkit`, ["--version"], { ...env, PATH: path });
    assert.equal(v.code, 0, v.stderr);
    assert.match(v.stdout, /^vmkit \d+\.\d+\.\d+\n$/);
    const b = await run(`${dir}/root/bin/vmkit`, [
      "run",
      "--kernel",
      DEMO,
      "--cmdline",
      "installed",
      "--output",
      "json",
      "--serial-out",
      `${dir}/serial2.txt`,
    ], { ...env, PATH: path });
    assert.equal(b.code, 0, b.stderr);
    assert.match(await Deno.readTextFile(`${dir}/serial2.txt`), /my command line is "installed"/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
