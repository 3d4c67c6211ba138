/**
 * Tiny hand-assembled guests for the machine tests: real-mode loops and a
 * 64-bit long-mode reader with identity-mapped page tables, plus loaders that
 * place them instead of a kernel.
 *
 * @module
 */

import type { Regs, Sregs } from "../../native/kvm_types.ts";
import type { BootPlan } from "../../vmm/boot/types.ts";
import type { GuestMemory } from "../../vmm/guest_memory.ts";
import { defaultDeviceSpecs } from "../../vmm/devices/mod.ts";
import {
  type KernelLoader,
  Machine,
  type MachineConfig,
  type MachineExit,
} from "../../vmm/machine.ts";

/** Where test code is placed. */
export const CODE_ADDR = 0x1000;
/** Where the long-mode reader finds its list of addresses (u64, 0-terminated). */
export const TABLE_ADDR = 0x3000;
/** Page-table area: PML4, PDPT, then one PD per GiB. */
const PML4_ADDR = 0x10000;
const PDPT_ADDR = 0x11000;
const PD0_ADDR = 0x12000;
/** GiBs the long-mode page tables map. */
const MAPPED_GIB = 32;

/** `inc dword [0x2000]; jmp $-5`: real-mode counter loop. */
export const REAL_MODE_COUNTER = new Uint8Array([0x66, 0xff, 0x06, 0x00, 0x20, 0xeb, 0xf9]);

/** Where {@link REAL_MODE_COUNTER} counts. */
export const COUNTER_ADDR = 0x2000;

/** A 16 MiB, one-vCPU machine running {@link REAL_MODE_COUNTER}, default devices, no serial. */
export function counterMachineConfig(): MachineConfig {
  return {
    memMiB: 16,
    vcpus: 1,
    kernel: new Uint8Array(0),
    devices: defaultDeviceSpecs({ serialOut: "none", memMiB: 16 }),
    loader: realModeLoader(REAL_MODE_COUNTER),
  };
}

/** The counter {@link REAL_MODE_COUNTER} increments, read from guest memory. */
export function readCounter(m: Machine): number {
  const v = m.memory.view(COUNTER_ADDR, 4);
  return new DataView(v.buffer, v.byteOffset, 4).getUint32(0, true);
}

/** Real-mode: `inc dword [addr]` then loop. */
export function realModeCounter(addr: number): Uint8Array {
  return new Uint8Array([0x66, 0xff, 0x06, addr & 0xff, (addr >> 8) & 0xff, 0xeb, 0xf9]);
}

/** Concatenates instructions (one byte array each). */
function asm(...instructions: number[][]): Uint8Array {
  return new Uint8Array(instructions.flat());
}

/**
 * Real-mode: `outer` × `inner` OUTs of `al` to `port` (nested `loop`s), then
 * a write of 0 to `stopPort`.
 */
export function realModeOutLoop(
  port: number,
  stopPort: number,
  outer: number,
  inner: number,
): Uint8Array {
  return asm(
    [0xba, port & 0xff, port >> 8], // mov dx, port
    [0xbb, outer & 0xff, outer >> 8], // mov bx, outer
    [0xb9, inner & 0xff, inner >> 8], // l1: mov cx, inner
    [0xee], // l2: out dx, al
    [0xe2, 0xfd], // loop l2
    [0x4b], // dec bx
    [0x75, 0xf7], // jnz l1
    [0xba, stopPort & 0xff, stopPort >> 8], // mov dx, stopPort
    [0x30, 0xc0], // xor al, al
    [0xee], // out dx, al
    [0xf4], // hlt
    [0xeb, 0xfe], // jmp $
  );
}

/**
 * 64-bit: for each u64 address in the 0-terminated table at {@link TABLE_ADDR},
 * read a byte and OUT it to `port`; then OUT 0 to `stopPort`.
 */
export function longModeReader(port: number, stopPort: number): Uint8Array {
  return asm(
    [0x48, 0xc7, 0xc6, TABLE_ADDR & 0xff, TABLE_ADDR >> 8, 0, 0], // mov rsi, TABLE_ADDR
    [0x48, 0x8b, 0x06], // loop: mov rax, [rsi]
    [0x48, 0x85, 0xc0], // test rax, rax
    [0x74, 0x0d], // jz done
    [0x8a, 0x00], // mov al, [rax]
    [0x66, 0xba, port & 0xff, port >> 8], // mov dx, port
    [0xee], // out dx, al
    [0x48, 0x83, 0xc6, 0x08], // add rsi, 8
    [0xeb, 0xeb], // jmp loop
    [0x66, 0xba, stopPort & 0xff, stopPort >> 8], // done: mov dx, stopPort
    [0x31, 0xc0], // xor eax, eax
    [0xee], // out dx, al
    [0xf4], // hlt
    [0xeb, 0xfe], // jmp $
  );
}

/** Regs for a guest starting at {@link CODE_ADDR}. */
export function startRegs(): Partial<Regs> {
  return { rip: BigInt(CODE_ADDR), rflags: 2n, rsp: 0x8000n };
}

/** Real-mode sregs with every segment based at 0. */
export function realModeSregs(): Partial<Sregs> {
  const seg = (type: number) => ({
    base: 0n,
    limit: 0xffff,
    selector: 0,
    type,
    present: 1,
    dpl: 0,
    db: 0,
    s: 1,
    l: 0,
    g: 0,
    avl: 0,
    unusable: 0,
  });
  return { cs: seg(11), ds: seg(3), es: seg(3), ss: seg(3), fs: seg(3), gs: seg(3) };
}

/** Long-mode sregs (flat segments, paging with the tables {@link writePageTables} builds). */
export function longModeSregs(): Partial<Sregs> {
  const seg = (type: number, selector: number, l: number, db: number) => ({
    base: 0n,
    limit: 0xffff_ffff,
    selector,
    type,
    present: 1,
    dpl: 0,
    db,
    s: 1,
    l,
    g: 1,
    avl: 0,
    unusable: 0,
  });
  const data = seg(3, 0x10, 0, 1);
  return {
    cs: seg(11, 0x8, 1, 0),
    ds: data,
    es: data,
    ss: data,
    fs: data,
    gs: data,
    cr0: 0x8000_0011n, // PG | ET | PE
    cr3: BigInt(PML4_ADDR),
    cr4: 0x20n, // PAE
    efer: 0x500n, // LMA | LME
  };
}

/** Identity-maps the first {@link MAPPED_GIB} GiB with 2 MiB pages. */
export function writePageTables(memory: GuestMemory): void {
  const pml4 = new DataView(
    memory.view(PML4_ADDR, 4096).buffer,
    memory.view(PML4_ADDR, 4096).byteOffset,
    4096,
  );
  pml4.setBigUint64(0, BigInt(PDPT_ADDR) | 3n, true);
  const pdptView = memory.view(PDPT_ADDR, 4096);
  const pdpt = new DataView(pdptView.buffer, pdptView.byteOffset, 4096);
  for (let g = 0; g < MAPPED_GIB; g++) {
    const pdAddr = PD0_ADDR + g * 4096;
    pdpt.setBigUint64(g * 8, BigInt(pdAddr) | 3n, true);
    const pdView = memory.view(pdAddr, 4096);
    const pd = new DataView(pdView.buffer, pdView.byteOffset, 4096);
    for (let i = 0; i < 512; i++) {
      const phys = BigInt(g) * (1n << 30n) + BigInt(i) * (1n << 21n);
      pd.setBigUint64(i * 8, phys | 0x83n, true); // present, writable, 2 MiB
    }
  }
}

/** A loader that ignores the image and places `code` as a real-mode guest. */
export function realModeLoader(code: Uint8Array): KernelLoader {
  return (memory: GuestMemory): BootPlan => {
    memory.write(CODE_ADDR, code);
    return {
      protocol: "pvh",
      regs: startRegs(),
      sregs: realModeSregs(),
      kernel: { start: CODE_ADDR, end: CODE_ADDR + code.length },
    };
  };
}

/** A loader that places `code` as a 64-bit guest with identity paging. */
export function longModeLoader(code: Uint8Array): KernelLoader {
  return (memory: GuestMemory): BootPlan => {
    memory.write(CODE_ADDR, code);
    writePageTables(memory);
    return {
      protocol: "linux64",
      regs: startRegs(),
      sregs: longModeSregs(),
      kernel: { start: CODE_ADDR, end: CODE_ADDR + code.length },
    };
  };
}

/**
 * Boots `code` as a real-mode guest with 16 MiB and the default devices, COM1
 * writing to `serialPath`, and returns how the run ended.
 */
export async function runRealModeGuest(code: Uint8Array, serialPath: string): Promise<MachineExit> {
  await using m = await Machine.create({
    memMiB: 16,
    vcpus: 1,
    kernel: new Uint8Array(1),
    loader: realModeLoader(code),
    devices: defaultDeviceSpecs({ serialOut: { path: serialPath }, serialIn: false, memMiB: 16 }),
  });
  await m.start();
  return await m.wait();
}
