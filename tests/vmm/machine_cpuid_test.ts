import assert from "node:assert/strict";
import { loadShim } from "../../native/ffi.ts";
import { Kvm, KVM_MP_STATE_RUNNABLE } from "../../native/kvm.ts";
import { CPUID_1_ECX_CX16, guestCpuid } from "../../vmm/cpuid.ts";
import { defaultDeviceSpecs } from "../../vmm/devices/mod.ts";
import { Machine, mergeSregs } from "../../vmm/machine.ts";
import { CODE_ADDR, realModeLoader, realModeSregs } from "./machine_guest.ts";
import { probeSpec } from "./machine_probe_devices.ts";

await loadShim();

/** Real mode: CPUID leaf 1, OUT (ECX.CX16 bit as 0x20) | initial APIC id to 0x500, halt. */
const CPUID_PROBE = new Uint8Array([
  0x66,
  0xb8,
  0x01,
  0x00,
  0x00,
  0x00, // mov eax, 1
  0x0f,
  0xa2, // cpuid
  0x80,
  0xe5,
  0x20, // and ch, 0x20
  0x66,
  0xc1,
  0xeb,
  0x18, // shr ebx, 24
  0x08,
  0xeb, // or bl, ch
  0x88,
  0xd8, // mov al, bl
  0xba,
  0x00,
  0x05, // mov dx, 0x500
  0xee, // out dx, al
  0xf4, // hlt
  0xeb,
  0xfd, // jmp hlt
]); // deno-fmt-ignore

Deno.test("the machine's CPUID on /dev/kvm masks CX16 and numbers APIC ids in leaf 1 and leaf 0xB", async () => {
  using kvm = Kvm.open();
  const supported = kvm.supportedCpuid();
  const leaf1 = supported.find((e) => e.function === 1);
  assert.ok(leaf1 !== undefined);
  await using m = await Machine.create({
    memMiB: 16,
    vcpus: 3,
    kernel: new Uint8Array(0),
    devices: [...defaultDeviceSpecs({ serialOut: "none", memMiB: 16 }), probeSpec()],
    deviceModule: new URL("./machine_probe_devices.ts", import.meta.url).href,
    loader: realModeLoader(new Uint8Array([0xf4])),
  });
  for (const vcpu of m.vcpus) {
    const cpuid = vcpu.getCpuid();
    const l1 = cpuid.find((e) => e.function === 1);
    assert.ok(l1 !== undefined);
    assert.equal(l1.ecx & CPUID_1_ECX_CX16, 0, `vcpu ${vcpu.id}: CX16 masked`);
    assert.equal(l1.ebx >>> 24, vcpu.id, "leaf 1 EBX[31:24] = APIC id");
    assert.ok(((l1.ebx >> 16) & 0xff) >= 3, "leaf 1 EBX[23:16] counts the logical processors");
    const maxLeaf = cpuid.find((e) => e.function === 0)?.eax ?? 0;
    if (maxLeaf >= 0xb) {
      const core = cpuid.find((e) => e.function === 0xb && e.index === 1);
      assert.ok(core !== undefined);
      assert.equal(core.ebx, 3, "leaf 0xB core level counts 3 vCPUs");
      assert.equal(core.edx, vcpu.id, "leaf 0xB EDX = x2APIC id");
    }
  }
});

Deno.test("guests on /dev/kvm read CPUID without CX16 and with their own APIC id on each vCPU", async () => {
  const probe = probeSpec();
  await using m = await Machine.create({
    memMiB: 16,
    vcpus: 2,
    kernel: new Uint8Array(0),
    devices: [...defaultDeviceSpecs({ serialOut: "none", memMiB: 16 }), probe],
    deviceModule: new URL("./machine_probe_devices.ts", import.meta.url).href,
    loader: realModeLoader(CPUID_PROBE),
  });
  const ap = m.vcpus[1];
  assert.ok(ap !== undefined);
  const mp = new Uint8Array(4);
  new DataView(mp.buffer).setUint32(0, KVM_MP_STATE_RUNNABLE, true);
  ap.setMpState(mp);
  ap.setSregs(mergeSregs(ap.getSregs(), realModeSregs()));
  ap.setRegs({ ...ap.getRegs(), rip: BigInt(CODE_ADDR), rflags: 2n });
  await m.start();
  const words = new Uint32Array(probe.state);
  const deadline = Date.now() + 5000;
  while (Atomics.load(words, 0) < 2 && Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 5));
  }
  await m.stop();
  assert.deepEqual(Array.from(words.subarray(1, 3)).sort(), [0, 1]);
});

Deno.test("guestCpuid leaves KVM's supported list untouched and rejects bad vCPU numbers", () => {
  const supported = [
    { function: 0, index: 0, flags: 0, eax: 0xd, ebx: 0, ecx: 0, edx: 0 },
    { function: 1, index: 0, flags: 0, eax: 0xa10f11, ebx: 0x800, ecx: 0xffff_ffff, edx: 0 },
  ];
  const copy = structuredClone(supported);
  const out = guestCpuid(supported, 1, 4);
  assert.deepEqual(supported, copy);
  const l1 = out.find((e) => e.function === 1);
  assert.equal((l1?.ecx ?? 0) & CPUID_1_ECX_CX16, 0);
  assert.equal((l1?.ebx ?? 0) >>> 24, 1);
  assert.equal(out.filter((e) => e.function === 0xb).length, 3);
  assert.throws(() => guestCpuid(supported, 4, 4), RangeError);
  assert.throws(() => guestCpuid(supported, 0, 0), RangeError);
});
