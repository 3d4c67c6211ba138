import assert from "node:assert/strict";
import { BootError, HDR, loadKernel, ZERO_PAGE_ADDR } from "../../vmm/boot/mod.ts";
import { makeBzImage } from "../guests/build.ts";
import { FakeMemory, guest, guestPath } from "./boot_fake_memory.ts";

const MiB = 0x10_0000;
const GiB = 0x4000_0000;

/** Reads the setup-header fields an independent reader needs from a bzImage file. */
function header(image: Uint8Array) {
  const v = new DataView(image.buffer, image.byteOffset, image.byteLength);
  const sects = v.getUint8(0x1f1) || 4;
  return {
    setupSize: (sects + 1) * 512,
    headerEnd: 0x202 + v.getUint8(0x201),
    initrdAddrMax: v.getUint32(0x22c, true),
    pref: Number(v.getBigUint64(0x258, true)),
    initSize: v.getUint32(0x260, true),
  };
}

/** A bzImage around `payloadLen` bytes of a recognizable pattern, with `patch` applied. */
function synthBzImage(patch: (v: DataView) => void, payloadLen = 0x3000): Uint8Array {
  const payload = new Uint8Array(payloadLen).map((_, i) => (i * 13 + 1) & 0xff);
  const image = makeBzImage(payload, payloadLen + 0x1000);
  patch(new DataView(image.buffer));
  return image;
}

Deno.test("a bzImage's kernel is loaded at pref_address and entered at +0x200 in long mode", async () => {
  const image = await guest("guest.bzImage");
  const h = header(image);
  const mem = new FakeMemory(64 * MiB);
  const plan = loadKernel(mem, image, { cmdline: "mode=info" });
  assert.equal(plan.protocol, "bzimage64");
  assert.equal(plan.regs.rip, BigInt(h.pref + 0x200));
  assert.equal(plan.regs.rsi, BigInt(ZERO_PAGE_ADDR));
  assert.equal(plan.sregs.efer, 0x500n);
  assert.equal(plan.sregs.cs?.l, 1);
  const payload = image.subarray(h.setupSize);
  assert.deepEqual(mem.read(h.pref, payload.length), payload);
  assert.deepEqual(plan.kernel, { start: h.pref, end: h.pref + h.initSize });
});

Deno.test("the setup header is copied into the zero page and the loader fields filled in", async () => {
  const image = await guest("guest.bzImage");
  const h = header(image);
  const mem = new FakeMemory(64 * MiB);
  loadKernel(mem, image, { cmdline: "mode=echo" });
  const zp = mem.read(ZERO_PAGE_ADDR, 0x1000);
  const zv = new DataView(zp.buffer);
  const loaderFields = new Set([HDR.vidMode, HDR.typeOfLoader, HDR.loadflags, HDR.cmdLinePtr]);
  for (let off = 0x1f1; off < h.headerEnd; off++) {
    const field = [...loaderFields].some((f) => off >= f && off < f + 4);
    if (!field) assert.equal(zp[off], image[off], `header byte 0x${off.toString(16)}`);
  }
  assert.equal(zv.getUint8(HDR.typeOfLoader), 0xff);
  assert.equal(zv.getUint16(HDR.version, true), 0x020f);
  assert.equal(zv.getUint8(HDR.loadflags) & 1, 1);
  assert.equal(mem.cstring(zv.getUint32(HDR.cmdLinePtr, true)), "mode=echo");
  assert.equal(zp[0x1e8], 3, "e820 entries");
});

Deno.test("a bzImage initrd sits below initrd_addr_max, page aligned, above the kernel", () => {
  const image = synthBzImage((v) => v.setUint32(0x22c, 0x1fff_ffff, true));
  const mem = new FakeMemory(4 * GiB);
  const initrd = new Uint8Array(70_000).map((_, i) => (i ^ (i >> 8)) & 0xff);
  const plan = loadKernel(mem, image, { cmdline: "", initrd });
  const zv = mem.dv(ZERO_PAGE_ADDR, 0x1000);
  const addr = zv.getUint32(HDR.ramdiskImage, true);
  assert.equal(zv.getUint32(HDR.ramdiskSize, true), initrd.length);
  assert.equal(addr % 4096, 0);
  assert.ok(addr >= plan.kernel.end);
  assert.ok(addr + initrd.length - 1 <= 0x1fff_ffff);
  assert.ok(addr + initrd.length > 0x2000_0000 - 4096, "as high as allowed");
  assert.deepEqual(mem.read(addr, initrd.length), initrd);
});

Deno.test("setup_sects 0 means 4 setup sectors", () => {
  const payload = new Uint8Array(0x1000).map((_, i) => (i * 5) & 0xff);
  const base = makeBzImage(payload, 0x2000); // 1 setup sector + boot sector
  const image = new Uint8Array(5 * 512 + payload.length);
  image.set(base.subarray(0, 1024));
  image.set(payload, 5 * 512);
  image[0x1f1] = 0;
  const mem = new FakeMemory(64 * MiB);
  const plan = loadKernel(mem, image, { cmdline: "" });
  assert.deepEqual(mem.read(plan.kernel.start, payload.length), payload);
});

Deno.test("a relocatable bzImage whose pref_address is beyond RAM loads at the aligned 1 MiB+ spot", () => {
  const image = synthBzImage((v) => {
    v.setUint8(0x234, 1);
    v.setUint32(0x230, 0x20_0000, true);
    v.setBigUint64(0x258, 0x1000_0000n, true); // 256 MiB
  });
  const mem = new FakeMemory(64 * MiB);
  const plan = loadKernel(mem, image, { cmdline: "" });
  assert.equal(plan.kernel.start, 0x20_0000);
  assert.equal(plan.regs.rip, 0x20_0200n);
});

Deno.test("a bzImage older than boot protocol 2.12 is refused", () => {
  const image = synthBzImage((v) => v.setUint16(0x206, 0x020b, true));
  assert.throws(
    () => loadKernel(new FakeMemory(64 * MiB), image, { cmdline: "" }),
    (e: unknown) => e instanceof BootError && /protocol 2\.11 is too old/.test(e.message),
  );
});

Deno.test("a bzImage without XLF_KERNEL_64 is refused", () => {
  const image = synthBzImage((v) => v.setUint16(0x236, 0x2, true));
  assert.throws(
    () => loadKernel(new FakeMemory(64 * MiB), image, { cmdline: "" }),
    (e: unknown) => e instanceof BootError && /XLF_KERNEL_64/.test(e.message),
  );
});

Deno.test("a command line longer than the kernel's cmdline_size is refused", () => {
  const image = synthBzImage((v) => v.setUint32(0x238, 100, true));
  const mem = new FakeMemory(64 * MiB);
  assert.doesNotThrow(() => loadKernel(mem, image, { cmdline: "a".repeat(100) }));
  assert.throws(
    () => loadKernel(mem, image, { cmdline: "a".repeat(101) }),
    (e: unknown) =>
      e instanceof BootError && /101 bytes, too long for the kernel's cmdline_size/.test(e.message),
  );
});

Deno.test("a non-relocatable bzImage that does not fit says how much memory it needs", () => {
  const image = synthBzImage((v) => v.setUint32(0x260, 40 * MiB, true));
  assert.throws(
    () => loadKernel(new FakeMemory(32 * MiB), image, { cmdline: "" }),
    (e: unknown) =>
      e instanceof BootError &&
      /guest memory too small: kernel needs 41 MiB .* machine has 32 MiB/.test(e.message),
  );
});

Deno.test("file(1) recognizes the built guest.bzImage as a Linux bzImage", async () => {
  const out = await new Deno.Command("file", {
    args: ["-b", await guestPath("guest.bzImage")],
    stdout: "piped",
  }).output();
  assert.match(
    new TextDecoder().decode(out.stdout),
    /Linux kernel x86 boot executable,? bzImage, version vmkit-guest/,
  );
});
