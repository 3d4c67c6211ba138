/**
 * `deno task test:linux`: boots Debian's cloud kernel (`linux-image-*-cloud-amd64`)
 * as far as its early boot banner. Fetches the package with `apt-get download`,
 * extracts the lz4-compressed `vmlinux` from the bzImage payload, and runs it with
 * `vmkit run` for at most 60 s, requiring `Linux version` and the kernel's e820 table
 * on the serial console.
 *
 * Opt-in and slow (the host's /dev/kvm is an instruction emulator).
 *
 * @module
 */

import { lz4LegacyDecompress } from "./lz4_legacy.ts";

const ROOT = new URL("../../", import.meta.url).pathname;
const CACHE = `${ROOT}.cache/linux`;
const TIMEOUT_MS = 60_000;

async function sh(cmd: string, args: string[], cwd = CACHE): Promise<string> {
  const out = await new Deno.Command(cmd, { args, cwd, stdout: "piped", stderr: "piped" }).output();
  if (!out.success) {
    throw new Error(
      `${cmd} ${args.join(" ")} failed (${out.code}): ${new TextDecoder().decode(out.stderr)}`,
    );
  }
  return new TextDecoder().decode(out.stdout);
}

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.stat(path);
    return true;
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) return false;
    throw err;
  }
}

/** Downloads and extracts the kernel once; returns the vmlinux path. */
async function fetchVmlinux(): Promise<string> {
  await Deno.mkdir(CACHE, { recursive: true });
  const vmlinux = `${CACHE}/vmlinux`;
  if (await exists(vmlinux)) return vmlinux;
  // The meta-package names the current ABI's image package.
  const deps = await sh("apt-cache", ["depends", "linux-image-cloud-amd64"]);
  const match = deps.match(/Depends: (linux-image-[0-9.]+-[0-9]+-cloud-amd64)\b/);
  if (!match?.[1]) throw new Error(`cannot find the cloud kernel package in:\n${deps}`);
  const pkg = match[1];
  console.error(`test:linux: downloading ${pkg}`);
  await sh("apt-get", ["download", pkg]);
  const deb = [...Deno.readDirSync(CACHE)].find((e) =>
    e.name.startsWith(pkg) && e.name.endsWith(".deb")
  );
  if (!deb) throw new Error(`apt-get download left no ${pkg}*.deb in ${CACHE}`);
  await sh("sh", [
    "-c",
    `dpkg-deb --fsys-tarfile '${deb.name}' | tar -x --wildcards './boot/vmlinuz-*'`,
  ]);
  const boot = [...Deno.readDirSync(`${CACHE}/boot`)].find((e) => e.name.startsWith("vmlinuz-"));
  if (!boot) throw new Error("the package holds no /boot/vmlinuz-*");
  const bz = await Deno.readFile(`${CACHE}/boot/${boot.name}`);
  const dv = new DataView(bz.buffer, bz.byteOffset, bz.byteLength);
  if (dv.getUint32(0x202, true) !== 0x53726448) throw new Error(`${boot.name} is not a bzImage`);
  const setupSects = bz[0x1f1] || 4;
  const payloadOffset = dv.getUint32(0x248, true);
  const payloadLength = dv.getUint32(0x24c, true);
  const start = (setupSects + 1) * 512 + payloadOffset;
  const payload = bz.subarray(start, start + payloadLength);
  if (dv.getUint32(start, true) !== 0x184c2102) {
    throw new Error(`${boot.name}: payload is not lz4 (legacy) compressed`);
  }
  await Deno.writeFile(`${vmlinux}.tmp`, lz4LegacyDecompress(payload));
  await Deno.rename(`${vmlinux}.tmp`, vmlinux);
  return vmlinux;
}

if (import.meta.main) {
  const vmlinux = await fetchVmlinux();
  const serial = `${CACHE}/serial.log`;
  const cmdline = "console=ttyS0 earlyprintk=serial,ttyS0 panic=-1";
  console.error(`test:linux: booting ${vmlinux} (timeout ${TIMEOUT_MS / 1000} s)`);
  const started = performance.now();
  const child = new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "-A",
      `${ROOT}cli/main.ts`,
      "run",
      "--kernel",
      vmlinux,
      "--mem",
      "512",
      "--cmdline",
      cmdline,
      "--serial-out",
      serial,
    ],
    stdout: "inherit",
    stderr: "inherit",
    stdin: "null",
  }).spawn();
  let banner = -1;
  let e820 = -1;
  let text = "";
  while (performance.now() - started < TIMEOUT_MS) {
    await new Promise((r) => setTimeout(r, 250));
    text = (await exists(serial)) ? await Deno.readTextFile(serial) : "";
    if (banner < 0 && text.includes("Linux version")) banner = performance.now() - started;
    if (e820 < 0 && /BIOS-e820: \[mem .*\] usable/.test(text)) e820 = performance.now() - started;
    if (banner >= 0 && e820 >= 0) break;
  }
  child.kill("SIGTERM");
  await child.status;
  const lines = text.split("\n").filter((l) => /Linux version|e820/.test(l));
  console.log(lines.join("\n"));
  if (banner < 0 || e820 < 0) {
    console.error(
      `test:linux: FAILED: banner ${banner < 0 ? "missing" : "seen"}, e820 ${
        e820 < 0 ? "missing" : "seen"
      } after ${TIMEOUT_MS / 1000} s; serial log in ${serial}`,
    );
    Deno.exit(1);
  }
  console.log(
    `test:linux: ok: 'Linux version' after ${(banner / 1000).toFixed(1)} s, e820 table after ${
      (e820 / 1000).toFixed(1)
    } s`,
  );
}
