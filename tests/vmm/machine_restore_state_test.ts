/**
 * A machine's vCPUs are set by their own threads before the first start
 * (`Machine.restoreState`, the restore path): what KVM refuses is reported
 * by name, nothing runs, and the same machine then takes a good state and
 * runs the guest on from it.
 */
import assert from "node:assert/strict";
import { KvmError } from "../../native/kvm.ts";
import { MSR_ENTRY_SIZE, MSRS_HEADER } from "../../native/kvm_codec.ts";
import type { MachineCpuState } from "../../native/kvm_state.ts";
import { Machine } from "../../vmm/machine.ts";
import { counterMachineConfig, readCounter } from "./machine_guest.ts";

/** An MSR index KVM does not know: a host write of a non-zero value to it is refused. */
const MSR_UNKNOWN = 0xbad;

const config = counterMachineConfig;
const counter = readCounter;

/** `state` with its last saved MSR replaced by `index` = `value` (same count: it fits the slot). */
function withMsr(state: MachineCpuState, index: number, value: bigint): MachineCpuState {
  const v = state.vcpus[0];
  assert.ok(v !== undefined);
  const msrs = v.msrs.slice();
  const dv = new DataView(msrs.buffer);
  const n = dv.getUint32(0, true);
  assert.ok(n > 0, "no MSRs saved");
  const off = MSRS_HEADER + (n - 1) * MSR_ENTRY_SIZE;
  dv.setUint32(off, index, true);
  dv.setBigUint64(off + 8, value, true);
  return { ...state, vcpus: [{ ...v, msrs }] };
}

Deno.test("a vCPU state KVM refuses is named by the vCPU thread that set it, nothing runs, and a good state then runs on (needs /dev/kvm)", async () => {
  await using a = await Machine.create(config());
  await a.start();
  const deadline = Date.now() + 3000;
  while (counter(a) < 100 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 5));
  await a.pause();
  const good = a.saveCpuState();
  const devices = a.saveDevices();
  const at = counter(a);
  assert.ok(at >= 100, "the source guest did not run");

  await using b = await Machine.create(config());
  assert.throws(
    () => b.restoreState(withMsr(good, MSR_UNKNOWN, 1n), { devices }),
    (err: unknown) =>
      err instanceof KvmError && /restore vcpu 0 failed.*KVM refused MSR 0xbad$/.test(err.message),
  );
  const v = good.vcpus[0];
  assert.ok(v !== undefined);
  const badSregs = { ...good, vcpus: [{ ...v, sregs: { ...v.sregs, apic_base: 1n << 63n } }] };
  assert.throws(
    () => b.restoreState(badSregs, { devices }),
    (err: unknown) =>
      err instanceof KvmError && /restore vcpu 0 failed.*KVM_SET_SREGS failed$/.test(err.message),
  );
  assert.equal(counter(b), 0, "a vCPU ran");
  assert.equal(b.state, "Created");

  // The guest's RAM (its counter and code) travels with the state.
  b.memory.write(0, a.memory.read(0, 16 << 20));
  let meanwhile = false;
  const times = b.restoreState(good, { devices, meanwhile: () => meanwhile = true });
  assert.ok(meanwhile, "meanwhile was not called");
  assert.ok(times.vcpusMs >= 0 && times.slotsMs >= 0);
  const before = performance.timeOrigin + performance.now();
  await b.start();
  assert.ok(b.waitEntered(5000), "the vCPU did not enter KVM_RUN");
  const entered = b.enteredAt(0);
  assert.ok(entered !== undefined && entered <= performance.timeOrigin + performance.now());
  assert.ok(entered >= before, "the vCPU's clock is not comparable with this thread's");
  const until = Date.now() + 3000;
  while (counter(b) <= at + 100 && Date.now() < until) {
    await new Promise((r) => setTimeout(r, 5));
  }
  assert.ok(counter(b) > at + 100, `the guest did not carry on from ${at}: ${counter(b)}`);
});
