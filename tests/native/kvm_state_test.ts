import assert from "node:assert/strict";
import { loadShim } from "../../native/ffi.ts";
import {
  IrqChip,
  Kvm,
  KvmError,
  msrEntries,
  msrsBlob,
  type Vcpu,
  type Vm,
} from "../../native/kvm.ts";
import type { Regs } from "../../native/kvm_types.ts";

await loadShim();

const MSR_IA32_TSC = 0x10;
const MSR_IA32_SYSENTER_CS = 0x174;
const MSR_IA32_SYSENTER_ESP = 0x175;

/** A VM with irqchip and PIT and one vCPU with KVM's supported CPUID. */
function withVm(fn: (kvm: Kvm, vm: Vm, vcpu: Vcpu) => void): void {
  using kvm = Kvm.open();
  using vm = kvm.createVm();
  vm.setTssAddr(0xfffbd000);
  vm.setIdentityMapAddr(0xfffbc000);
  vm.createIrqchip();
  vm.createPit2();
  using vcpu = vm.createVcpu(0);
  vcpu.setCpuid(kvm.supportedCpuid());
  fn(kvm, vm, vcpu);
}

/** Sets `modified`, reads back, sets that again and reads again: both reads equal `modified`. */
function assertRoundTrip(
  what: string,
  get: () => Uint8Array,
  set: (b: Uint8Array) => void,
  modify: (b: Uint8Array) => void,
): void {
  const original = get();
  const modified = original.slice();
  modify(modified);
  assert.notDeepEqual(modified, original, `${what}: the test must change something`);
  set(modified);
  const first = get();
  assert.deepEqual(first, modified, `${what}: get after set differs`);
  set(first);
  assert.deepEqual(get(), first, `${what}: second round trip differs`);
}

function u64(bytes: Uint8Array, off: number, value: bigint): void {
  new DataView(bytes.buffer, bytes.byteOffset).setBigUint64(off, value, true);
}
function u32(bytes: Uint8Array, off: number, value: number): void {
  new DataView(bytes.buffer, bytes.byteOffset).setUint32(off, value, true);
}

Deno.test("vcpu regs and sregs round-trip through /dev/kvm as equal objects", () => {
  withVm((_kvm, _vm, vcpu) => {
    const regs: Regs = { ...vcpu.getRegs(), rax: 0x1122334455667788n, r15: 0xffff_ffff_ffff_fff0n };
    regs.rip = 0x1000n;
    vcpu.setRegs(regs);
    assert.deepEqual(vcpu.getRegs(), regs);
    const sregs = vcpu.getSregs();
    sregs.cs = { ...sregs.cs, base: 0x10000n, selector: 0x1000 };
    sregs.gdt = { base: 0x5000n, limit: 0x27 };
    sregs.cr2 = 0xdead000n;
    vcpu.setSregs(sregs);
    assert.deepEqual(vcpu.getSregs(), sregs);
  });
});

Deno.test("vcpu fpu, lapic, xsave, xcrs, events, mp state and debug registers round-trip as bytes on /dev/kvm", () => {
  withVm((_kvm, _vm, vcpu) => {
    assertRoundTrip("fpu", () => vcpu.getFpu(), (b) => vcpu.setFpu(b), (b) => {
      b[129] = 0x02; // fcw: 53-bit precision
      b[152] = 0x55; // xmm0 low byte
    });
    assertRoundTrip("lapic", () => vcpu.getLapic(), (b) => vcpu.setLapic(b), (b) => {
      u32(b, 0xd0, 0x0100_0000); // LDR: logical id 1 (TPR would also move the derived PPR)
    });
    assertRoundTrip("xsave", () => vcpu.getXsave(), (b) => vcpu.setXsave(b), (b) => {
      b[512] = (b[512] ?? 0) | 3; // XSTATE_BV: x87 and SSE state present
      u32(b, 24, 0x1f80 | 0x2000); // MXCSR in the legacy area
      b[160] = 0x55; // xmm0 low byte
    });
    assertRoundTrip("xcrs", () => vcpu.getXcrs(), (b) => vcpu.setXcrs(b), (b) => {
      u32(b, 0, 1); // one XCR
      u32(b, 8, 0); // XCR0
      u64(b, 16, 3n); // x87 | SSE
    });
    assertRoundTrip(
      "vcpu events",
      () => vcpu.getVcpuEvents(),
      (b) => vcpu.setVcpuEvents(b),
      (b) => {
        b[14] = 1; // nmi.masked
      },
    );
    assertRoundTrip("mp state", () => vcpu.getMpState(), (b) => vcpu.setMpState(b), (b) => {
      u32(b, 0, 3); // KVM_MP_STATE_HALTED
    });
    assertRoundTrip(
      "debug registers",
      () => vcpu.getDebugRegs(),
      (b) => vcpu.setDebugRegs(b),
      (b) => {
        u64(b, 0, 0x401000n); // db[0]
      },
    );
  });
});

Deno.test("vcpu MSRs from KVM's index list round-trip as bytes on /dev/kvm, except the running TSC", () => {
  withVm((kvm, _vm, vcpu) => {
    const list = kvm.msrIndexList();
    assert.ok(list.length > 10, `KVM lists ${list.length} MSRs`);
    const blob = vcpu.getMsrs(list);
    const entries = msrEntries(blob);
    assert.ok(entries.length > 10);
    const changed = entries.map((e) =>
      e.index === MSR_IA32_SYSENTER_CS
        ? { ...e, value: 0x10n }
        : e.index === MSR_IA32_SYSENTER_ESP
        ? { ...e, value: 0xffff_8000_0000_1000n }
        : e
    );
    vcpu.setMsrs(msrsBlob(changed));
    const back = msrEntries(vcpu.getMsrs(list));
    const noTsc = (l: typeof entries) => l.filter((e) => e.index !== MSR_IA32_TSC);
    assert.deepEqual(noTsc(back), noTsc(changed));
    const tsc = back.find((e) => e.index === MSR_IA32_TSC);
    assert.ok(tsc !== undefined && tsc.value > 0n, "the TSC is readable and running");
  });
});

Deno.test("irqchip PIC master, PIC slave and IOAPIC state round-trip as bytes on /dev/kvm", () => {
  withVm((_kvm, vm) => {
    assertRoundTrip(
      "PIC master",
      () => vm.getIrqchip(IrqChip.PIC_MASTER),
      (b) => vm.setIrqchip(b),
      (b) => {
        b[8 + 2] = 0xfb; // imr
        b[8 + 5] = 0x20; // irq_base
      },
    );
    assertRoundTrip(
      "PIC slave",
      () => vm.getIrqchip(IrqChip.PIC_SLAVE),
      (b) => vm.setIrqchip(b),
      (b) => {
        b[8 + 2] = 0xef;
        b[8 + 5] = 0x28;
      },
    );
    assertRoundTrip("IOAPIC", () => vm.getIrqchip(IrqChip.IOAPIC), (b) => vm.setIrqchip(b), (b) => {
      u64(b, 8 + 24 + 4 * 8, 0x1_0030n); // redirection entry 4: masked, vector 0x30
    });
  });
});

Deno.test("PIT state round-trips on /dev/kvm except the kernel's count-load timestamps", () => {
  withVm((_kvm, vm) => {
    const CHANNEL = 24;
    const LOAD_TIME = 16;
    const mask = (b: Uint8Array) => {
      const c = b.slice();
      for (let ch = 0; ch < 3; ch++) u64(c, ch * CHANNEL + LOAD_TIME, 0n);
      return c;
    };
    const before = vm.getPit2();
    const modified = before.slice();
    u32(modified, 2 * CHANNEL, 0x1234); // channel 2 count
    modified[2 * CHANNEL + 13] = 2; // channel 2 mode: rate generator
    vm.setPit2(modified);
    const first = vm.getPit2();
    assert.deepEqual(mask(first), mask(modified));
    vm.setPit2(first);
    assert.deepEqual(mask(vm.getPit2()), mask(first));
  });
});

Deno.test("kvmclock set on /dev/kvm reads back at the value set plus the time elapsed", () => {
  withVm((_kvm, vm) => {
    const data = vm.getClock();
    const dv = new DataView(data.buffer);
    const target = dv.getBigUint64(0, true) + 1_000_000_000_000n; // +1000 s
    dv.setBigUint64(0, target, true);
    const t0 = performance.now();
    vm.setClock(data);
    const back = new DataView(vm.getClock().buffer).getBigUint64(0, true);
    const elapsedNs = BigInt(Math.ceil((performance.now() - t0) * 1e6)) + 1_000_000n;
    assert.ok(back >= target, `clock ${back} went back from ${target}`);
    assert.ok(back - target <= elapsedNs, `clock ran ${back - target} ns ahead`);
  });
});

Deno.test("KVM's supported CPUID on /dev/kvm contains leaf 1 with a family signature", () => {
  using kvm = Kvm.open();
  const entries = kvm.supportedCpuid();
  const leaf1 = entries.find((e) => e.function === 1);
  assert.ok(leaf1 !== undefined, "leaf 1 present");
  assert.notEqual(leaf1.eax, 0, "leaf 1 EAX holds the family/model signature");
  assert.ok(entries.some((e) => e.function === 0 && e.eax >= 1), "leaf 0 reports max leaf ≥ 1");
});

Deno.test("a state blob of the wrong size is rejected with a KvmError naming the call", () => {
  withVm((_kvm, vm, vcpu) => {
    assert.throws(
      () => vcpu.setLapic(new Uint8Array(10)),
      (e: unknown) =>
        e instanceof KvmError && e.call === "KVM_SET_LAPIC" && /expected 1024/.test(e.message),
    );
    assert.throws(() => vm.setPit2(new Uint8Array(3)), KvmError);
  });
});
