/**
 * Binary encodings of the `cpu state` and `device state` sections: length-
 * prefixed kernel structs per vCPU (regs and sregs in KVM's own layout) and
 * name/bytes pairs per device. Decoders check every length against the
 * section, so a hostile file cannot make them read past it.
 *
 * @module
 */

import {
  CPUID2_HEADER,
  CPUID_ENTRY_SIZE,
  decodeCpuid,
  decodeRegs,
  decodeSregs,
  encodeCpuid,
  encodeRegs,
  encodeSregs,
  REGS_SIZE,
  SREGS_SIZE,
} from "../native/kvm_codec.ts";
import type { MachineCpuState, VcpuState } from "../native/kvm_state.ts";
import { CheckpointError } from "./errors.ts";

class Out {
  parts: Uint8Array[] = [];
  u32(v: number): void {
    const b = new Uint8Array(4);
    new DataView(b.buffer).setUint32(0, v, true);
    this.parts.push(b);
  }
  blob(b: Uint8Array): void {
    this.u32(b.length);
    this.parts.push(b);
  }
  bytes(): Uint8Array<ArrayBuffer> {
    const out = new Uint8Array(this.parts.reduce((n, p) => n + p.length, 0));
    let o = 0;
    for (const p of this.parts) {
      out.set(p, o);
      o += p.length;
    }
    return out;
  }
}

class In {
  o = 0;
  readonly v: DataView;
  constructor(readonly b: Uint8Array, readonly fail: (m: string) => never) {
    this.v = new DataView(b.buffer, b.byteOffset, b.byteLength);
  }
  u32(): number {
    if (this.o + 4 > this.b.length) this.fail("truncated");
    const x = this.v.getUint32(this.o, true);
    this.o += 4;
    return x;
  }
  blob(max = 1 << 20): Uint8Array {
    const n = this.u32();
    if (n > max || this.o + n > this.b.length) this.fail(`a field of ${n} bytes runs past the end`);
    const out = this.b.slice(this.o, this.o + n);
    this.o += n;
    return out;
  }
  end(): void {
    if (this.o !== this.b.length) this.fail(`${this.b.length - this.o} bytes after the last field`);
  }
}

const VCPU_BLOBS = ["xsave", "xcrs", "msrs", "lapic", "events", "mpState", "debugRegs"] as const;
const VM_BLOBS = ["picMaster", "picSlave", "ioapic", "pit", "clock"] as const;

/** Encodes every vCPU's and the VM's state. */
export function encodeCpuState(s: MachineCpuState): Uint8Array<ArrayBuffer> {
  const o = new Out();
  o.u32(s.vcpus.length);
  for (const v of s.vcpus) {
    o.u32(v.id);
    o.blob(encodeCpuid(v.cpuid));
    o.blob(encodeRegs(v.regs));
    o.blob(encodeSregs(v.sregs));
    for (const k of VCPU_BLOBS) o.blob(v[k]);
  }
  for (const k of VM_BLOBS) o.blob(s.vm[k]);
  return o.bytes();
}

/** Decodes {@link encodeCpuState}'s bytes; errors name the `cpu state` section of `path`. */
export function decodeCpuState(b: Uint8Array, path: string): MachineCpuState {
  const fail = (m: string): never => {
    throw new CheckpointError(m, { path, section: "cpu state" });
  };
  const i = new In(b, fail);
  const n = i.u32();
  if (n < 1 || n > 256) fail(`${n} vCPUs`);
  const vcpus: VcpuState[] = [];
  for (let k = 0; k < n; k++) {
    const id = i.u32();
    const cpuid = i.blob();
    if (cpuid.length < CPUID2_HEADER || (cpuid.length - CPUID2_HEADER) % CPUID_ENTRY_SIZE !== 0) {
      fail(`vCPU ${id}: CPUID of ${cpuid.length} bytes`);
    }
    const regs = i.blob();
    const sregs = i.blob();
    if (regs.length !== REGS_SIZE || sregs.length !== SREGS_SIZE) {
      fail(`vCPU ${id}: register sizes`);
    }
    const blobs = VCPU_BLOBS.map(() => i.blob());
    const [xsave, xcrs, msrs, lapic, events, mpState, debugRegs] = blobs;
    if (
      xsave === undefined || xcrs === undefined || msrs === undefined || lapic === undefined ||
      events === undefined || mpState === undefined || debugRegs === undefined
    ) return fail("truncated");
    vcpus.push({
      id,
      cpuid: decodeCpuid(cpuid, (cpuid.length - CPUID2_HEADER) / CPUID_ENTRY_SIZE),
      regs: decodeRegs(regs),
      sregs: decodeSregs(sregs),
      xsave,
      xcrs,
      msrs,
      lapic,
      events,
      mpState,
      debugRegs,
    });
  }
  const [picMaster, picSlave, ioapic, pit, clock] = VM_BLOBS.map(() => i.blob());
  i.end();
  if (
    picMaster === undefined || picSlave === undefined || ioapic === undefined ||
    pit === undefined || clock === undefined
  ) return fail("truncated");
  return { vcpus, vm: { picMaster, picSlave, ioapic, pit, clock } };
}

/** Encodes device states (name → bytes), sorted by name. */
export function encodeDevices(devices: Record<string, Uint8Array>): Uint8Array<ArrayBuffer> {
  const o = new Out();
  const names = Object.keys(devices).sort();
  o.u32(names.length);
  for (const name of names) {
    o.blob(new TextEncoder().encode(name));
    o.blob(devices[name] ?? new Uint8Array());
  }
  return o.bytes();
}

/** Decodes {@link encodeDevices}'s bytes; errors name the `device state` section. */
export function decodeDevices(b: Uint8Array, path: string): Record<string, Uint8Array> {
  const fail = (m: string): never => {
    throw new CheckpointError(m, { path, section: "device state" });
  };
  const i = new In(b, fail);
  const n = i.u32();
  if (n > 4096) fail(`${n} devices`);
  const out: Record<string, Uint8Array> = {};
  for (let k = 0; k < n; k++) {
    const name = new TextDecoder("utf-8", { fatal: true }).decode(i.blob(256));
    if (name in out) fail(`device '${name}' twice`);
    out[name] = i.blob(16 << 20);
  }
  i.end();
  return out;
}
