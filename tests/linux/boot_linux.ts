/**
 * `deno task test:linux`: boots Debian's cloud kernel (`linux-image-*-cloud-amd64`)
 * through its early boot. Fetches the package with `apt-get download`, extracts the
 * lz4-compressed `vmlinux` from the bzImage payload, and runs it with `vmkit run
 * --vcpus 2` until the kernel has printed (see {@link EXPECT}) `Linux version`, its
 * e820 table, vmkit's ACPI tables (RSDP, XSDT, FACP, APIC, DSDT), the IOAPIC and
 * `Allowing 2 CPUs`, and never `Boot CPU (id 0) not listed by BIOS` or an ACPI error.
 *
 * `VMKIT_LINUX_TIMEOUT_MS` (default 90000) bounds the run. Linux loads the DSDT's AML
 * only in `acpi_init` (a subsys initcall), well after this host's emulator stops the
 * kernel (Debian's 6.1.0-57: at its FPU init, an XRSTOR the emulator cannot execute,
 * with or without ACPI, after `ACPI: Core revision`),
 * so the DSDT is checked by ACPICA's own tools instead (tests/vmm/acpi_iasl_test.ts).
 *
 * Opt-in and slow (the host's /dev/kvm is an instruction emulator).
 *
 * @module
 */

import { lz4LegacyDecompress } from "./lz4_legacy.ts";

const ROOT = new URL("../../", import.meta.url).pathname;
const CACHE = `${ROOT}.cache/linux`;
const TIMEOUT_MS = Number(Deno.env.get("VMKIT_LINUX_TIMEOUT_MS") ?? 90_000);
const VCPUS = 2;

/** Lines the kernel must print, in the order it prints them. */
export const EXPECT: ReadonlyArray<{ readonly what: string; readonly re: RegExp }> = [
  { what: "the banner", re: /Linux version/ },
  { what: "the e820 table", re: /BIOS-e820: \[mem .*\] usable/ },
  { what: "the RSDP", re: /ACPI: RSDP 0x0*E0000 000024 \(v02 VMKIT \)/ },
  { what: "the XSDT", re: /ACPI: XSDT 0x[0-9A-F]+ 000034 \(v01 VMKIT {2}VMKTXSDT/ },
  { what: "the FADT", re: /ACPI: FACP 0x[0-9A-F]+ 000114 \(v06 VMKIT {2}VMKTFACP/ },
  { what: "the MADT", re: /ACPI: APIC 0x[0-9A-F]+ [0-9A-F]+ \(v05 VMKIT {2}VMKTAPIC/ },
  { what: "the DSDT", re: /ACPI: DSDT 0x[0-9A-F]+ [0-9A-F]+ \(v02 VMKIT {2}VMKTDSDT/ },
  { what: "the IOAPIC", re: /IOAPIC\[0\]: apic_id 0, version \d+, address 0xfec00000, GSI 0-23/ },
  { what: `${VCPUS} CPUs`, re: new RegExp(`smpboot: Allowing ${VCPUS} CPUs, 0 hotplug CPUs`) },
];
/** Lines that must not appear. */
export const REFUSE: readonly RegExp[] = [
  /Boot CPU \(id 0\) not listed by BIOS/,
  /ACPI (Error|BIOS Error|Warning)/,
];

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
  // The serial sink appends: start from an empty log so no earlier run's lines count.
  await Deno.writeTextFile(serial, "");
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
      "--vcpus",
      String(VCPUS),
      "--cmdline",
      cmdline,
      "--serial-out",
      serial,
    ],
    stdout: "inherit",
    stderr: "inherit",
    stdin: "null",
  }).spawn();
  const seen = new Map<string, number>();
  let text = "";
  while (performance.now() - started < TIMEOUT_MS && seen.size < EXPECT.length) {
    await new Promise((r) => setTimeout(r, 250));
    text = (await exists(serial)) ? await Deno.readTextFile(serial) : "";
    for (const e of EXPECT) {
      if (!seen.has(e.what) && e.re.test(text)) seen.set(e.what, performance.now() - started);
    }
  }
  child.kill("SIGTERM");
  await child.status;
  const shown = [...EXPECT.map((e) => e.re), ...REFUSE, /ACPI|smpboot|e820/];
  console.log(text.split("\n").filter((l) => shown.some((re) => re.test(l))).join("\n"));
  const missing = EXPECT.filter((e) => !seen.has(e.what)).map((e) => e.what);
  const refused = REFUSE.filter((re) => re.test(text)).map((re) => re.source);
  if (missing.length > 0 || refused.length > 0) {
    console.error(
      `test:linux: FAILED after ${TIMEOUT_MS / 1000} s: ` +
        (missing.length > 0 ? `missing ${missing.join(", ")}` : "") +
        (refused.length > 0
          ? `${missing.length > 0 ? "; " : ""}printed ${refused.join(", ")}`
          : "") +
        `; serial log in ${serial}`,
    );
    Deno.exit(1);
  }
  const at = [...seen].map(([what, ms]) => `${what} ${(ms / 1000).toFixed(1)} s`).join(", ");
  console.log(`test:linux: ok: ${at}`);
}
