/**
 * The CPUID a vmkit guest sees: KVM's supported set, with features this
 * host's KVM advertises but cannot deliver masked, and a topology of N
 * single-threaded cores in one package (APIC id = vCPU id).
 *
 * @example
 * ```ts
 * import { loadShim } from "../native/ffi.ts";
 * import { Kvm } from "../native/kvm.ts";
 * import { guestCpuid } from "./cpuid.ts";
 * await loadShim();
 * using kvm = Kvm.open();
 * const entries = guestCpuid(kvm.supportedCpuid(), 0, 2);
 * ```
 *
 * @module
 */

import type { CpuidEntry } from "../native/kvm_types.ts";

/** Leaf 1 ECX bit 13: CMPXCHG16B. This host's KVM offers it but `LOCK CMPXCHG16B` fails. */
export const CPUID_1_ECX_CX16 = 1 << 13;
/** Leaf 1 EDX bit 28: HTT (EBX[23:16] holds the logical processor count). */
export const CPUID_1_EDX_HTT = 1 << 28;
/** Leaf 1 ECX bit 31: running under a hypervisor. */
export const CPUID_1_ECX_HYPERVISOR = 1 << 31;
/** `KVM_CPUID_FLAG_SIGNIFCANT_INDEX`. */
const FLAG_SIGNIFICANT_INDEX = 1;

/** Bits needed to number `n` things (`ceil(log2 n)`, 0 for 1). */
function bitsFor(n: number): number {
  let b = 0;
  while ((1 << b) < n) b++;
  return b;
}

/**
 * Per-vCPU CPUID entries for vCPU `id` of `count`, derived from `supported`
 * (KVM_GET_SUPPORTED_CPUID). Does not modify `supported`.
 */
export function guestCpuid(
  supported: readonly CpuidEntry[],
  id: number,
  count: number,
): CpuidEntry[] {
  if (!Number.isInteger(count) || count < 1 || count > 255) {
    throw new RangeError(`cpuid: vCPU count ${count} must be 1..255`);
  }
  if (!Number.isInteger(id) || id < 0 || id >= count) {
    throw new RangeError(`cpuid: vCPU id ${id} must be 0..${count - 1}`);
  }
  const shift = bitsFor(count);
  const out = supported.map((e) => ({ ...e }));
  const maxBasic = out.find((e) => e.function === 0)?.eax ?? 0;
  for (const e of out) {
    switch (e.function) {
      case 1:
        e.ecx = (e.ecx & ~CPUID_1_ECX_CX16) | CPUID_1_ECX_HYPERVISOR;
        // EBX: [31:24] initial APIC id, [23:16] logical processors per package.
        e.ebx = ((e.ebx & 0xffff) | ((1 << shift) & 0xff) << 16 | (id & 0xff) << 24) >>> 0;
        e.edx = count > 1 ? e.edx | CPUID_1_EDX_HTT : e.edx & ~CPUID_1_EDX_HTT;
        break;
      case 4:
        // Deterministic cache parameters (Intel): EAX[31:26] = cores per package - 1,
        // EAX[25:14] = threads sharing the cache - 1. Only for real cache entries.
        if ((e.eax & 0x1f) !== 0) {
          e.eax = ((e.eax & 0x3fff) | ((1 << shift) - 1) << 26) >>> 0;
        }
        break;
      case 0x80000008:
        // AMD: ECX[7:0] = cores - 1, ECX[15:12] = APIC id bits for cores.
        e.ecx = ((e.ecx & ~0xf0ff) | (count - 1) | shift << 12) >>> 0;
        break;
    }
    e.ebx >>>= 0;
    e.ecx >>>= 0;
    e.edx >>>= 0;
    e.eax >>>= 0;
  }
  // Extended topology: level 0 = SMT (1 thread), level 1 = core (count cores).
  for (const leaf of [0xb, 0x1f]) {
    if (leaf > maxBasic) continue;
    const rest = out.filter((e) => e.function !== leaf);
    out.length = 0;
    out.push(...rest);
    const flags = FLAG_SIGNIFICANT_INDEX;
    out.push(
      { function: leaf, index: 0, flags, eax: 0, ebx: 1, ecx: 1 << 8, edx: id },
      { function: leaf, index: 1, flags, eax: shift, ebx: count, ecx: 2 << 8 | 1, edx: id },
      { function: leaf, index: 2, flags, eax: 0, ebx: 0, ecx: 2, edx: id },
    );
  }
  return out;
}
