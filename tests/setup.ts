/**
 * Shared setup for `deno task test`, `start` and `bench`: installs the Debian
 * packages the tests drive (when missing and running as root), builds the C
 * shim and the test guests. Idempotent and cached; safe to run every time.
 *
 * Usage: `deno run -A tests/setup.ts [--only-build]`
 *
 * @module
 */

import { buildShim } from "../native/build.ts";
import { buildGuests } from "./guests/build.ts";

/**
 * Debian packages the suite needs, keyed by a file that proves the package is
 * installed. Add a line here when a test starts to drive a new tool.
 */
export const PACKAGES: ReadonlyArray<{ probe: string; pkg: string }> = [
  { probe: "/usr/bin/gcc", pkg: "gcc" },
  // The shim includes <linux/kvm.h> and libc headers; gcc only recommends them.
  { probe: "/usr/include/stdio.h", pkg: "libc6-dev" },
  { probe: "/usr/include/linux/kvm.h", pkg: "linux-libc-dev" },
  { probe: "/usr/bin/qemu-img", pkg: "qemu-utils" },
  // qemu-io's iscsi:// driver (the libiscsi interop test); only recommended by qemu-utils.
  { probe: "/usr/lib/x86_64-linux-gnu/qemu/block-iscsi.so", pkg: "qemu-block-extra" },
  { probe: "/usr/sbin/tgtd", pkg: "tgt" },
  // The virtio-blk benchmark's peer.
  { probe: "/usr/bin/fio", pkg: "fio" },
  { probe: "/usr/bin/iscsi-inq", pkg: "libiscsi-bin" },
  { probe: "/usr/bin/etcd", pkg: "etcd-server" },
  { probe: "/usr/sbin/hping3", pkg: "hping3" },
  { probe: "/usr/bin/tcpdump", pkg: "tcpdump" },
  // libpcap's headers: the netguard bench's C peer (bpf_filter, pcap_open_offline).
  { probe: "/usr/include/pcap/pcap.h", pkg: "libpcap-dev" },
  { probe: "/usr/bin/iperf3", pkg: "iperf3" },
  { probe: "/bin/busybox", pkg: "busybox-static" },
  { probe: "/usr/bin/ip", pkg: "iproute2" },
  // The CLI's completion scripts are tested in the shells they are for.
  { probe: "/usr/bin/zsh", pkg: "zsh" },
  { probe: "/usr/share/bash-completion/bash_completion", pkg: "bash-completion" },
  { probe: "/usr/bin/node", pkg: "nodejs" },
  { probe: "/usr/bin/ping", pkg: "iputils-ping" },
  // QEMU's virtio-net (microvm, TCG) checks the suite's guest net driver against a real device.
  { probe: "/usr/bin/qemu-system-x86_64", pkg: "qemu-system-x86" },
  // editcap, mergecap, text2pcap: captures written by Wireshark's tools (netguard's interop test).
  { probe: "/usr/bin/mergecap", pkg: "wireshark-common" },
  // iasl, acpixtract, acpidump, acpiexec: the ACPI tables' reference checker.
  { probe: "/usr/bin/iasl", pkg: "acpica-tools" },
];

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.stat(path);
    return true;
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) return false;
    throw err;
  }
}

async function run(cmd: string, args: string[]): Promise<void> {
  const env = { DEBIAN_FRONTEND: "noninteractive" };
  const out = await new Deno.Command(cmd, { args, env, stdout: "inherit", stderr: "inherit" })
    .output();
  if (!out.success) throw new Error(`setup: '${cmd} ${args.join(" ")}' failed (${out.code})`);
}

/**
 * Installs every missing package of `packages` (default {@link PACKAGES})
 * with apt-get (root only). A benchmark installs its own peer this way.
 */
export async function ensurePackages(
  packages: ReadonlyArray<{ probe: string; pkg: string }> = PACKAGES,
): Promise<void> {
  const missing: string[] = [];
  for (const { probe, pkg } of packages) {
    if (!(await exists(probe))) missing.push(pkg);
  }
  if (missing.length === 0) return;
  if (Deno.uid() !== 0) {
    throw new Error(
      `setup: missing Debian packages ${missing.join(", ")}; run as root or 'apt-get install' them`,
    );
  }
  console.error(`setup: installing ${missing.join(" ")}`);
  await run("apt-get", ["update", "-qq"]);
  await run("apt-get", ["install", "-y", "-qq", "--no-install-recommends", ...missing]);
}

if (import.meta.main) {
  const onlyBuild = Deno.args.includes("--only-build");
  if (!onlyBuild) await ensurePackages();
  else if (!(await exists("/usr/bin/gcc"))) await ensurePackages();
  await buildShim();
  await buildGuests();
}
