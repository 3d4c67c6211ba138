/**
 * Builds the test and demo guests from their C/asm sources with gcc into
 * `tests/guests/out/`, cached by a hash of the sources and this script:
 *
 * - `guest-pvh.elf`: 32-bit ELF with a Xen PVH entry note (reads `hvm_start_info`).
 * - `guest-vmlinux.elf`: ELF64 without a PVH note, entered by the Linux 64-bit protocol.
 * - `guest.bzImage`: the same 64-bit guest as a bzImage (boot protocol 2.15, XLF_KERNEL_64).
 * - `demo.elf`: the PVH guest whose default mode is the demo tour.
 *
 * Usage: `deno run -A tests/guests/build.ts`
 *
 * @module
 */

const SRC = new URL(".", import.meta.url).pathname;
const OUT = new URL("./out/", import.meta.url).pathname;

/** Output files, all in `tests/guests/out/`. */
export const GUEST_FILES: readonly string[] = [
  "guest-pvh.elf",
  "guest-vmlinux.elf",
  "guest.bzImage",
  "demo.elf",
];

const SOURCES = [
  "guest.h",
  "core.c",
  "acpi.c",
  "virtio_mmio.h",
  "virtio_mmio.c",
  "irq.c",
  "virtio_net.c",
  "virtio_blk.c",
  "ckpt.c",
  "boot_pvh.c",
  "boot_linux.c",
  "entry_pvh.S",
  "entry_64.S",
  "trampoline.S",
  "pvh.ld",
  "linux64.ld",
  "build.ts",
];

const CFLAGS = [
  "-ffreestanding",
  "-nostdlib",
  "-fno-pic",
  "-fno-pie",
  "-static",
  "-O2",
  "-fno-stack-protector",
  "-fno-asynchronous-unwind-tables",
  "-mgeneral-regs-only",
  "-fno-builtin",
  "-Wall",
  "-Wextra",
  "-Werror",
  `-I${SRC}`,
];
const LDFLAGS = [
  "-nostdlib",
  "--build-id=none",
  "-z",
  "noexecstack",
  "-z",
  "max-page-size=0x1000",
  "--no-warn-rwx-segments",
];

/** Raised when a compiler or linker step fails. */
export class GuestBuildError extends Error {
  /** Creates the error for the failed command and its output. */
  constructor(cmd: string, output: string) {
    super(`guest build: '${cmd}' failed:\n${output}\nis gcc installed (deno task setup)?`);
    this.name = "GuestBuildError";
  }
}

async function run(cmd: string, args: string[]): Promise<void> {
  const out = await new Deno.Command(cmd, { args, stdout: "piped", stderr: "piped" }).output();
  if (!out.success) {
    const text = new TextDecoder().decode(out.stderr) + new TextDecoder().decode(out.stdout);
    throw new GuestBuildError(`${cmd} ${args.join(" ")}`, text);
  }
}

async function sourceHash(): Promise<string> {
  const parts: Uint8Array[] = [];
  for (const name of SOURCES) {
    parts.push(new TextEncoder().encode(`\0${name}\0`), await Deno.readFile(SRC + name));
  }
  const all = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let off = 0;
  for (const p of parts) {
    all.set(p, off);
    off += p.length;
  }
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", all));
  return Array.from(digest.slice(0, 12), (b) => b.toString(16).padStart(2, "0")).join("");
}

async function upToDate(hash: string): Promise<boolean> {
  try {
    const stamp = await Deno.readTextFile(OUT + ".hash");
    if (stamp.trim() !== hash) return false;
    for (const f of GUEST_FILES) await Deno.stat(OUT + f);
    return true;
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) return false;
    throw err;
  }
}

/** Setup header fields of the bzImage written by {@link makeBzImage} (offsets as in boot.rst). */
const BZ = {
  setupSects: 0x1f1,
  syssize: 0x1f4,
  bootFlag: 0x1fe,
  jump: 0x200,
  header: 0x202,
  version: 0x206,
  kernelVersion: 0x20e,
  loadflags: 0x211,
  code32Start: 0x214,
  initrdAddrMax: 0x22c,
  kernelAlignment: 0x230,
  relocatable: 0x234,
  xloadflags: 0x236,
  cmdlineSize: 0x238,
  prefAddress: 0x258,
  initSize: 0x260,
  end: 0x268,
} as const;
const SETUP_SECTS = 1;
/** Where the kernel version string goes in the setup sector (`kernel_version` + 0x200). */
const VERSION_STRING_AT = 0x300;
/** The version string `file(1)` and boot loaders show. */
export const GUEST_KERNEL_VERSION = "vmkit-guest";
const LOAD_ADDR = 0x10_0000;

/**
 * Wraps a flat 64-bit kernel (linked at 1 MiB, 64-bit entry at +0x200) into a
 * bzImage: one setup sector holding a protocol 2.15 header, then the kernel
 * padded to 16 bytes. `memSize` is the kernel's size in memory (with bss).
 */
export function makeBzImage(payload: Uint8Array, memSize: number): Uint8Array {
  const setup = (SETUP_SECTS + 1) * 512;
  const padded = Math.ceil(payload.length / 16) * 16;
  const image = new Uint8Array(setup + padded);
  const v = new DataView(image.buffer);
  v.setUint8(BZ.setupSects, SETUP_SECTS);
  v.setUint32(BZ.syssize, padded / 16, true);
  v.setUint16(BZ.bootFlag, 0xaa55, true);
  v.setUint8(BZ.jump, 0xeb); // jmp short over the header
  v.setUint8(BZ.jump + 1, BZ.end - (BZ.jump + 2));
  v.setUint32(BZ.header, 0x5372_6448, true); // "HdrS"
  v.setUint16(BZ.version, 0x020f, true);
  v.setUint16(BZ.kernelVersion, VERSION_STRING_AT - 0x200, true);
  image.set(new TextEncoder().encode(GUEST_KERNEL_VERSION), VERSION_STRING_AT);
  v.setUint8(BZ.loadflags, 0x01); // LOADED_HIGH
  v.setUint32(BZ.code32Start, LOAD_ADDR, true);
  v.setUint32(BZ.initrdAddrMax, 0x7fff_ffff, true);
  v.setUint32(BZ.kernelAlignment, 0x20_0000, true);
  v.setUint8(BZ.relocatable, 0); // linked at 1 MiB
  v.setUint16(BZ.xloadflags, 0x1, true); // XLF_KERNEL_64
  v.setUint32(BZ.cmdlineSize, 2047, true);
  v.setBigUint64(BZ.prefAddress, BigInt(LOAD_ADDR), true);
  v.setUint32(BZ.initSize, Math.ceil(memSize / 4096) * 4096, true);
  image.set(payload, setup);
  return image;
}

/** Memory size (end of the highest PT_LOAD minus 1 MiB) of a small ELF64 built here. */
function elf64MemSize(elf: Uint8Array): number {
  const v = new DataView(elf.buffer, elf.byteOffset, elf.byteLength);
  const phoff = Number(v.getBigUint64(32, true));
  const phnum = v.getUint16(56, true);
  let end = 0;
  for (let i = 0; i < phnum; i++) {
    const base = phoff + i * 56;
    if (v.getUint32(base, true) !== 1) continue;
    end = Math.max(end, Number(v.getBigUint64(base + 24, true) + v.getBigUint64(base + 40, true)));
  }
  return end - LOAD_ADDR;
}

async function build(dir: string): Promise<void> {
  const o = (n: string) => `${dir}/${n}`;
  const cc32 = ["-m32", ...CFLAGS];
  const cc64 = ["-m64", "-mno-red-zone", ...CFLAGS];
  const drivers = ["virtio_mmio", "irq", "virtio_net", "acpi", "virtio_blk", "ckpt"];
  const core32 = ["core", "boot_pvh", ...drivers].map((f) => ({ src: `${f}.c`, obj: `${f}32.o` }));
  const asm32 = ["entry_pvh", "trampoline"].map((f) => ({ src: `${f}.S`, obj: `${f}32.o` }));
  const core64 = ["core", "boot_linux", "entry_64", "trampoline", ...drivers].map((f) => ({
    src: `${f}.${f.startsWith("entry") || f === "trampoline" ? "S" : "c"}`,
    obj: `${f}64.o`,
  }));
  await Promise.all([
    ...[...core32, ...asm32].map((u) => run("gcc", [...cc32, "-c", SRC + u.src, "-o", o(u.obj)])),
    run("gcc", [...cc32, '-DDEFAULT_MODE="demo"', "-c", `${SRC}core.c`, "-o", o("demo32.o")]),
    ...core64.map((u) => run("gcc", [...cc64, "-c", SRC + u.src, "-o", o(u.obj)])),
  ]);
  const pvhRest = [
    "boot_pvh32.o",
    "entry_pvh32.o",
    "trampoline32.o",
    ...drivers.map((d) => `${d}32.o`),
  ]
    .map(o);
  const ld32 = ["-m", "elf_i386", "-T", `${SRC}pvh.ld`, ...LDFLAGS];
  await run("ld", [...ld32, "-o", o("guest-pvh.elf"), o("core32.o"), ...pvhRest]);
  await run("ld", [...ld32, "-o", o("demo.elf"), o("demo32.o"), ...pvhRest]);
  const ld64 = ["-m", "elf_x86_64", "-T", `${SRC}linux64.ld`, ...LDFLAGS];
  await run("ld", [...ld64, "-o", o("guest-vmlinux.elf"), ...core64.map((u) => o(u.obj))]);
  await run("objcopy", ["-O", "binary", o("guest-vmlinux.elf"), o("guest-vmlinux.bin")]);
  const elf = await Deno.readFile(o("guest-vmlinux.elf"));
  const payload = await Deno.readFile(o("guest-vmlinux.bin"));
  await Deno.writeFile(o("guest.bzImage"), makeBzImage(payload, elf64MemSize(elf)));
}

/**
 * Builds every guest unless the cached outputs match the sources; returns
 * the output directory (with a trailing slash). Safe to call concurrently:
 * each build happens in a private temporary directory and outputs are
 * renamed into place.
 */
export async function buildGuests(): Promise<string> {
  const hash = await sourceHash();
  if (await upToDate(hash)) return OUT;
  await Deno.mkdir(OUT, { recursive: true });
  const tmp = await Deno.makeTempDir({ dir: OUT, prefix: ".build-" });
  try {
    await build(tmp);
    for (const f of GUEST_FILES) await Deno.rename(`${tmp}/${f}`, OUT + f);
    await Deno.writeTextFile(`${tmp}/hash`, hash);
    await Deno.rename(`${tmp}/hash`, OUT + ".hash");
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
  return OUT;
}

if (import.meta.main) {
  console.error(`guests built in ${await buildGuests()}`);
}
