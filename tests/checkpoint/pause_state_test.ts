import assert from "node:assert/strict";
import { msrEntries } from "../../native/kvm.ts";
import { saveVcpuState } from "../../native/kvm_state.ts";
import { checkpointerFor, restoreMachine } from "../../vmm/checkpoint.ts";
import { guestCpuid } from "../../vmm/cpuid.ts";
import { guestMachine, sleep } from "./helpers.ts";
import { SeqPort, seqPortSpec } from "./seq_port.ts";

const DEVICE_MODULE = new URL("./seq_port.ts", import.meta.url).href;
const IN_EAX_DX = 0xed;
const MSR_IA32_TSC = 0x10;

function seqPort(d: unknown): SeqPort {
  assert.ok(d instanceof SeqPort, "the machine has no seq port");
  return d;
}

Deno.test("a vCPU paused to save its state has finished its last port read (needs /dev/kvm)", async () => {
  // mode=inseq is `in (%dx),%eax; lea 1(%ebx),%ecx; cmp; jne; mov %eax,%ebx;
  // jmp` over the test port, which answers 1, 2, 3, ... Whatever instruction
  // a pause stops at, the saved registers must agree with the port: on the
  // IN, EBX holds the last value read; past it, EAX does. KVM completes an
  // IN (the data into EAX, RIP past it) only on the KVM_RUN after the I/O
  // exit, so a vCPU parked in between shows RIP on the IN with EBX one
  // value behind the port; restored, it would read again and skip a value.
  await using m = await guestMachine(32, "mode=inseq", {
    devices: [seqPortSpec()],
    deviceModule: DEVICE_MODULE,
  });
  await sleep(200);
  const port = seqPort(m.device("seq"));
  let onIn = 0;
  for (let i = 0; i < 300; i++) {
    await m.pause({ saveCpuState: i % 2 === 0 });
    const regs = m.saveCpuState().vcpus[0]?.regs;
    assert.ok(regs !== undefined);
    const rip = Number(regs.rip);
    const reads = port.reads;
    if (m.memory.read(rip, 1)[0] === IN_EAX_DX) {
      onIn++;
      assert.equal(Number(regs.rbx & 0xffff_ffffn), reads, `pause ${i}: on the IN, EBX behind`);
    } else {
      assert.equal(Number(regs.rax & 0xffff_ffffn), reads, `pause ${i}: past the IN, EAX behind`);
    }
    await m.resume();
    await sleep(1 + (i % 3)); // let it run into the loop again
  }
  assert.equal(m.state, "Running", "the guest saw a skipped value");
  assert.ok(port.reads > 300, `the guest read only ${port.reads} values`);
  console.log(`${onIn} of 300 pauses stopped on the IN`);
});

Deno.test("checkpoints of a guest busy with port writes and reads restore with each done exactly once (needs /dev/kvm)", async () => {
  const dir = await Deno.makeTempDir({ prefix: "vmkit-ioseq-" });
  for (const mode of ["outseq", "inseq"]) {
    await using m = await guestMachine(32, `mode=${mode}`, {
      devices: [seqPortSpec()],
      deviceModule: DEVICE_MODULE,
    });
    await sleep(200);
    const cp = await checkpointerFor(m);
    const paths: string[] = [];
    for (let i = 0; i < 2; i++) {
      const path = `${dir}/${mode}${i}.ckpt`;
      await (await cp.checkpoint({ path })).done;
      paths.push(path);
      await sleep(50);
    }
    for (const path of paths) {
      await using r = await restoreMachine(path);
      const restored = seqPort(r.machine.device("seq"));
      const from = restored.last + restored.reads;
      await r.machine.start();
      await sleep(200);
      await r.machine.pause();
      assert.equal(r.machine.state, "Paused", `${path}: the restored guest saw a skipped value`);
      assert.ok(restored.last + restored.reads > from, `${path}: the restored guest did not run`);
      assert.equal(restored.bad, 0, `${path}: the restored guest repeated a write`);
    }
  }
  await Deno.remove(dir, { recursive: true });
});

Deno.test("the state each vCPU thread saves as it parks equals what the main thread reads (needs /dev/kvm)", async () => {
  await using m = await guestMachine(32, "mode=seq:64", { vcpus: 2 });
  await sleep(200);
  for (let round = 0; round < 3; round++) {
    await m.pause({ saveCpuState: true });
    const slots = m.saveCpuState();
    const direct = m.vcpus.map((v) => saveVcpuState(v, m.kvm.msrIndexList()));
    assert.equal(slots.vcpus.length, 2);
    slots.vcpus.forEach((s, i) => {
      const d = direct[i];
      assert.ok(d !== undefined);
      assert.deepEqual(s.regs, d.regs);
      assert.deepEqual(s.sregs, d.sregs);
      // CPUID is what the machine set, not KVM_GET_CPUID2's answer (see cpu_state_saver.ts).
      assert.deepEqual(s.cpuid, guestCpuid(m.kvm.supportedCpuid(), i, 2));
      for (const k of ["xsave", "xcrs", "lapic", "events", "mpState", "debugRegs"] as const) {
        assert.deepEqual(s[k], d[k], `vCPU ${i}: ${k}`);
      }
      // The guest's TSC runs on while paused; every other MSR must match.
      const tsc = (e: { index: number }) => e.index !== MSR_IA32_TSC;
      assert.deepEqual(msrEntries(s.msrs).filter(tsc), msrEntries(d.msrs).filter(tsc));
    });
    await m.resume();
    await sleep(50);
  }
});
