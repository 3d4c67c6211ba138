/**
 * vCPU exit throughput and machine start-up: vmkit's `Machine` (a Worker per
 * vCPU calling KVM_RUN through FFI, exits dispatched on the device bus)
 * against a minimal C program running the same real-mode guest with a bare
 * KVM_RUN loop (its source is below; compiled with `cc -O2` at run time).
 *
 * The guest does 100 000 `OUT dx, al` then writes the stop port 0x501.
 * Ratios: vmkit/peer for rates, peer/vmkit for times (higher is better).
 * Each figure is the median of 7 runs with the range, the two sides
 * alternating which goes first; the load is printed before and after.
 *
 * @module
 */

import { defaultDeviceSpecs } from "../vmm/devices/mod.ts";
import { Machine } from "../vmm/machine.ts";
import { realModeLoader } from "../tests/vmm/machine_guest.ts";
import { machineLine, median, medianRange } from "./stats.ts";

const OUTER = 10;
const INNER = 10_000;
const STOP_PORT = 0x501;

/** Real mode: OUTER × INNER writes of al to `port`, then a write to STOP_PORT. */
function guest(port: number): Uint8Array {
  return new Uint8Array([
    0xba,
    port & 0xff,
    port >> 8, // mov dx, port
    0xbb,
    OUTER & 0xff,
    OUTER >> 8, // mov bx, OUTER
    0xb9,
    INNER & 0xff,
    INNER >> 8, // l1: mov cx, INNER
    0xee, // l2: out dx, al
    0xe2,
    0xfd, // loop l2
    0x4b, // dec bx
    0x75,
    0xf7, // jnz l1
    0xba,
    STOP_PORT & 0xff,
    STOP_PORT >> 8, // mov dx, STOP_PORT
    0x30,
    0xc0, // xor al, al
    0xee, // out dx, al
    0xf4, // hlt
    0xeb,
    0xfe, // jmp $
  ]); // deno-fmt-ignore
}

const PEER_C = String.raw`
#include <fcntl.h>
#include <linux/kvm.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
static uint64_t now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec * 1000000000ull + t.tv_nsec; }
static void die(const char *s) { perror(s); exit(1); }
int main(int argc, char **argv) {
  if (argc != 2) return 2;
  unsigned port = strtoul(argv[1], 0, 0);
  uint8_t code[] = {0xba, port & 0xff, port >> 8, 0xbb, 10, 0, 0xb9, 0x10, 0x27, 0xee, 0xe2, 0xfd,
                    0x4b, 0x75, 0xf7, 0xba, 0x01, 0x05, 0x30, 0xc0, 0xee, 0xf4, 0xeb, 0xfe};
  int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
  int vm = ioctl(kvm, KVM_CREATE_VM, 0);
  if (vm < 0) die("KVM_CREATE_VM");
  ioctl(vm, KVM_SET_TSS_ADDR, 0xfffbd000ul);
  if (ioctl(vm, KVM_CREATE_IRQCHIP, 0) < 0) die("KVM_CREATE_IRQCHIP");
  size_t size = 16 << 20;
  uint8_t *mem = mmap(0, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  memcpy(mem + 0x1000, code, sizeof code);
  struct kvm_userspace_memory_region r = {.slot = 0, .memory_size = size, .userspace_addr = (uint64_t)mem};
  if (ioctl(vm, KVM_SET_USER_MEMORY_REGION, &r) < 0) die("SET_USER_MEMORY_REGION");
  int vcpu = ioctl(vm, KVM_CREATE_VCPU, 0);
  struct kvm_run *run = mmap(0, ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0), PROT_READ | PROT_WRITE, MAP_SHARED, vcpu, 0);
  struct kvm_sregs s;
  ioctl(vcpu, KVM_GET_SREGS, &s);
  s.cs.base = 0; s.cs.selector = 0;
  ioctl(vcpu, KVM_SET_SREGS, &s);
  struct kvm_regs g = {.rip = 0x1000, .rflags = 2};
  ioctl(vcpu, KVM_SET_REGS, &g);
  uint64_t exits = 0, t0 = now();
  for (;;) {
    if (ioctl(vcpu, KVM_RUN, 0) < 0) die("KVM_RUN");
    if (run->exit_reason != KVM_EXIT_IO) { fprintf(stderr, "exit %u\n", run->exit_reason); return 1; }
    if (run->io.port == 0x501) break;
    exits++;
  }
  printf("{\"exits\":%llu,\"ns\":%llu}\n", (unsigned long long)exits, (unsigned long long)(now() - t0));
  return 0;
}
`;

async function buildPeer(): Promise<string> {
  const dir = await Deno.makeTempDir({ prefix: "vmkit_bench_" });
  await Deno.writeTextFile(`${dir}/peer.c`, PEER_C);
  const out = await new Deno.Command("cc", {
    args: ["-O2", "-o", `${dir}/peer`, `${dir}/peer.c`],
    stderr: "inherit",
  }).output();
  if (!out.success) throw new Error("bench: cc failed to build the C peer");
  return dir;
}

async function runPeer(bin: string, port: number): Promise<{ exits: number; ns: number }> {
  const out = await new Deno.Command(bin, { args: [String(port)], stderr: "inherit" }).output();
  if (!out.success) throw new Error(`bench: peer failed (${out.code})`);
  return JSON.parse(new TextDecoder().decode(out.stdout));
}

async function runVmkit(port: number): Promise<{ exitsPerSec: number; startupMs: number }> {
  const t0 = performance.now();
  await using m = await Machine.create({
    memMiB: 16,
    vcpus: 1,
    kernel: new Uint8Array(0),
    devices: defaultDeviceSpecs({ serialOut: "none", memMiB: 16, debugExitPort: STOP_PORT }),
    loader: realModeLoader(guest(port)),
  });
  const t1 = performance.now();
  await m.start();
  await m.wait();
  const secs = (performance.now() - t1) / 1000;
  return { exitsPerSec: OUTER * INNER / secs, startupMs: t1 - t0 };
}

const RUNS = 7;
console.log(`machine: ${machineLine()}`);
const dir = await buildPeer();
try {
  const rows: [string, number[], number[]][] = [];
  for (
    const [label, port] of [["unclaimed port 0x80", 0x80], ["COM1 scratch 0x3ff", 0x3ff]] as const
  ) {
    const v: number[] = [];
    const p: number[] = [];
    const peer = async () => {
      const r = await runPeer(`${dir}/peer`, port);
      p.push(r.exits / (r.ns / 1e9));
    };
    for (let i = 0; i < RUNS; i++) {
      if (i % 2 === 1) await peer();
      v.push((await runVmkit(port)).exitsPerSec);
      if (i % 2 === 0) await peer();
    }
    rows.push([`exits/s, 100k OUT to ${label}`, v, p]);
  }
  const startups: number[] = [];
  for (let i = 0; i < RUNS; i++) startups.push((await runVmkit(0x80)).startupMs);
  const int = (x: number) => x.toFixed(0);
  console.log("\n| metric | vmkit | peer | ratio |\n| --- | --- | --- | --- |");
  for (const [m, v, p] of rows) {
    const ratio = (median(v) / median(p)).toFixed(2);
    console.log(`| ${m} | ${medianRange(v, int)} | ${medianRange(p, int)} | ${ratio} |`);
  }
  console.log(
    `| Machine.create in-process (VM, 16 MiB, 1 vCPU Worker ready), ms | ${
      medianRange(startups, (x) => x.toFixed(1))
    } | n/a (the whole-process start-up is in vmm_bench.ts) | n/a |`,
  );
  console.log(`load after: ${machineLine()}`);
  console.log(
    `\npeer command: cc -O2 -o peer peer.c && ./peer <port>  (C source embedded in ${import.meta.url})`,
  );
} finally {
  await Deno.remove(dir, { recursive: true });
}
