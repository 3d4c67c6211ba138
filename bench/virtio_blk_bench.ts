/**
 * virtio-blk's device path against fio on the same raw file, and against
 * `qemu-img bench` on the same qcow2 overlay.
 *
 * The guest runs at emulator speed here, so the guest side is played by a
 * host driver on the main thread: it keeps requests in a split virtqueue in
 * guest RAM (EVENT_IDX, kicks only when the device asks, as Linux does),
 * rings the queue's notify eventfd (what KVM's ioeventfd does for a guest
 * write) and waits on the interrupt eventfd (what the irqfd delivers). The
 * device is the real one: its I/O Worker, its ring parsing and checks, and
 * io_uring on the raw file.
 *
 * Metrics (each side: median of RUNS runs, range, alternating which side
 * goes first; the load average is printed with each):
 * - 4 KiB random reads and writes at 32 in flight, warm cache (file read
 *   into the page cache first) and cold cache (page cache of the file
 *   dropped with POSIX_FADV_DONTNEED before every run; fio's invalidate=1);
 * - 128 KiB sequential reads at 32 in flight, MB/s, warm and cold;
 * - notification-to-completion latency of one 4 KiB read (median, p99),
 *   against fio io_uring at iodepth 1 (its completion latency);
 * - 4 KiB sequential reads and writes at depth 32 on a qcow2 overlay over a
 *   raw base, against `qemu-img bench` (which has no random mode).
 *
 * fio's best engine: io_uring (plain, and batched with fixed buffers and
 * registered files) and libaio are all run at iodepth 32 and the best
 * median is the peer (all buffered, like the device; direct=0).
 *
 * Usage: `deno run -A bench/virtio_blk_bench.ts [--runs N] [--quick]`
 *
 * @module
 */

import { loadShim } from "../native/ffi.ts";
import { FdWaiter, ioShim } from "../native/io_ffi.ts";
import { HostMemory } from "../vmm/memory.ts";
import { MmioAllocator } from "../vmm/devices/mmio_allocator.ts";
import { blkDeviceConfig } from "../vmm/devices/virtio/blk_format.ts";
import { VirtioDeviceHost } from "../vmm/devices/virtio/host.ts";
import { VirtioMmioTransport } from "../vmm/devices/virtio/mmio.ts";
import type { DriveBackend } from "../vmm/io_config.ts";

const args = Deno.args;
const QUICK = args.includes("--quick");
const RUNS = Number(args[args.indexOf("--runs") + 1] ?? "") || (QUICK ? 3 : 5);
const FILE_BYTES = (QUICK ? 128 : 512) << 20;
const DEPTH = 32;
const QSIZE = 256;
const MEM = 64 << 20;
const QUEUE_AT = 0x10000;
const SLOTS_AT = 0x100000;
const SLOT_BYTES = 0x22000; // header, 128 KiB data, status
const F_VERSION_1 = 1n << 32n;
const F_EVENT_IDX = 1n << 29n;
/** Accepted as Linux's driver does (without it every write must be write-through). */
const F_FLUSH = 1n << 9n;

await loadShim();

// ---- the host driver (plays the guest) ------------------------------------

/** Drives one virtio-blk device from the main thread. */
class BenchDriver {
  readonly #regs: VirtioMmioTransport;
  readonly #base: number;
  readonly #dv: DataView;
  readonly #host: VirtioDeviceHost;
  readonly #irq: FdWaiter;
  readonly #desc = QUEUE_AT;
  readonly #avail = QUEUE_AT + 16 * QSIZE;
  readonly #used = QUEUE_AT + 0x2000;
  #availIdx = 0;
  #lastUsed = 0;
  #kickedAt = 0;
  readonly #fence = new Int32Array(new SharedArrayBuffer(4));

  constructor(mem: HostMemory, host: VirtioDeviceHost) {
    this.#host = host;
    this.#regs = new VirtioMmioTransport(host.spec);
    this.#base = host.slot.base;
    const v = mem.view(0, MEM);
    this.#dv = new DataView(v.buffer, v.byteOffset, v.byteLength);
    this.#irq = new FdWaiter([host.irq.fd], [true]);
    const w = (off: number, val: number) => this.#regs.write(this.#base + off, 4, val);
    w(0x70, 0);
    w(0x70, 1);
    w(0x70, 3);
    w(0x24, 0);
    w(0x20, Number((F_EVENT_IDX | F_FLUSH) & 0xffff_ffffn));
    w(0x24, 1);
    w(0x20, Number(F_VERSION_1 >> 32n));
    w(0x70, 11);
    w(0x30, 0);
    w(0x38, QSIZE);
    w(0x80, this.#desc);
    w(0x84, 0);
    w(0x90, this.#avail);
    w(0x94, 0);
    w(0xa0, this.#used);
    w(0xa4, 0);
    w(0x44, 1);
    new Uint8Array(v.buffer, v.byteOffset + QUEUE_AT, 0x4000).fill(0);
    w(0x70, 15);
    for (let s = 0; s < DEPTH; s++) {
      const at = SLOTS_AT + s * SLOT_BYTES;
      this.#setDesc(3 * s, at, 16, 1, 3 * s + 1);
      this.#setDesc(3 * s + 1, at + 0x1000, 4096, 1, 3 * s + 2);
      this.#setDesc(3 * s + 2, at + 0x1000 + 0x20000, 1, 2, 0);
    }
  }

  #setDesc(i: number, addr: number, len: number, flags: number, next: number): void {
    const d = this.#dv;
    const at = this.#desc + 16 * i;
    d.setUint32(at, addr, true);
    d.setUint32(at + 4, 0, true);
    d.setUint32(at + 8, len, true);
    d.setUint16(at + 12, flags, true);
    d.setUint16(at + 14, next, true);
  }

  /** Queues slot `s` as a request of `type` (0 read, 1 write) of `len` at byte `offset`. */
  submit(s: number, type: number, offset: number, len: number): void {
    const d = this.#dv;
    const at = SLOTS_AT + s * SLOT_BYTES;
    d.setUint32(at, type, true);
    d.setUint32(at + 8, offset / 512, true);
    d.setUint32(at + 12, 0, true);
    const data = this.#desc + 16 * (3 * s + 1);
    d.setUint32(data + 8, len, true);
    d.setUint16(data + 12, type === 0 ? 3 : 1, true);
    d.setUint16(this.#avail + 4 + 2 * (this.#availIdx & (QSIZE - 1)), 3 * s, true);
    this.#availIdx = (this.#availIdx + 1) & 0xffff;
  }

  /** Publishes avail.idx and rings the notify eventfd if the device's avail_event asks. */
  flush(): void {
    const d = this.#dv;
    const idx = this.#availIdx;
    d.setUint16(this.#avail + 2, idx, true);
    Atomics.store(this.#fence, 0, 0); // full barrier before reading avail_event (virtio_mb)
    const event = d.getUint16(this.#used + 4 + 8 * QSIZE, true);
    const old = this.#kickedAt;
    // vring_need_event(event, new, old)
    if (((idx - event - 1) & 0xffff) < ((idx - old) & 0xffff)) {
      const n = this.#host.notify[0];
      if (n !== undefined) ioShim().vkio_eventfd_write(n.fd, 1);
    }
    this.#kickedAt = idx;
  }

  /** Waits for completions; calls `done(slot, status)` for each; returns how many. */
  reap(done: (slot: number, status: number) => void): number {
    const d = this.#dv;
    let n = 0;
    for (;;) {
      const used = d.getUint16(this.#used + 2, true);
      while (this.#lastUsed !== used) {
        const e = this.#used + 4 + 8 * (this.#lastUsed & (QSIZE - 1));
        const head = d.getUint32(e, true);
        const slot = head / 3;
        done(slot, d.getUint8(SLOTS_AT + slot * SLOT_BYTES + 0x21000));
        this.#lastUsed = (this.#lastUsed + 1) & 0xffff;
        n++;
      }
      // used_event: interrupt at the next completion; re-check before sleeping.
      d.setUint16(this.#avail + 4 + 2 * QSIZE, this.#lastUsed, true);
      if (n > 0) return n;
      Atomics.store(this.#fence, 0, 0); // full barrier before re-reading used.idx
      if (d.getUint16(this.#used + 2, true) !== this.#lastUsed) continue;
      this.#irq.waitSync(1000);
    }
  }
}

interface DeviceRig {
  mem: HostMemory;
  host: VirtioDeviceHost;
  drv: BenchDriver;
}

async function device(backend: DriveBackend): Promise<DeviceRig> {
  const mem = HostMemory.create(MEM);
  const host = await VirtioDeviceHost.start(
    blkDeviceConfig({ id: "bench", backend }),
    mem.regions,
    new MmioAllocator().allocate("bench"),
  );
  return { mem, host, drv: new BenchDriver(mem, host) };
}

async function closeDevice(r: DeviceRig): Promise<void> {
  await r.host.close();
  r.mem.close();
}

/** xorshift32 offsets in `[0, span)` aligned to `bs`. */
function offsets(seed: number, span: number, bs: number): () => number {
  let x = seed >>> 0 || 1;
  const blocks = Math.floor(span / bs);
  return () => {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    return (x % blocks) * bs;
  };
}

/** Runs `ops` requests at DEPTH in flight; returns seconds. */
function vmkitRun(
  r: DeviceRig,
  type: number,
  bs: number,
  ops: number,
  random: boolean,
  span: number,
): number {
  const next = random ? offsets(0x9e3779b9, span, bs) : (() => {
    let o = -bs;
    return () => (o = (o + bs) % span);
  })();
  let issued = 0;
  let completed = 0;
  let errors = 0;
  const t0 = performance.now();
  for (let s = 0; s < DEPTH && issued < ops; s++, issued++) r.drv.submit(s, type, next(), bs);
  r.drv.flush();
  while (completed < ops) {
    r.drv.reap((slot, status) => {
      completed++;
      if (status !== 0) errors++;
      if (issued < ops) {
        r.drv.submit(slot, type, next(), bs);
        issued++;
      }
    });
    r.drv.flush();
  }
  const s = (performance.now() - t0) / 1000;
  if (errors > 0) throw new Error(`${errors} requests failed`);
  return s;
}

/** Latency of single 4 KiB reads, one at a time: microseconds, sorted. */
function vmkitLatency(r: DeviceRig, ops: number, span: number): number[] {
  const next = offsets(12345, span, 4096);
  const lat: number[] = [];
  for (let i = 0; i < ops; i++) {
    const t0 = performance.now();
    r.drv.submit(0, 0, next(), 4096);
    r.drv.flush();
    r.drv.reap(() => {});
    lat.push((performance.now() - t0) * 1000);
  }
  return lat.sort((a, b) => a - b);
}

// ---- the peers ----------------------------------------------------------------

interface FioResult {
  iops: number;
  mbps: number;
  lat50us: number;
  lat99us: number;
}

/** fio engine variants tried; the best median is the peer. */
const FIO_ENGINES: Record<string, string[]> = {
  "io_uring": ["--ioengine=io_uring"],
  "io_uring batched": [
    "--ioengine=io_uring",
    "--fixedbufs=1",
    "--registerfiles=1",
    "--iodepth_batch_submit=16",
    "--iodepth_batch_complete_max=16",
  ],
  "libaio": ["--ioengine=libaio"],
};

async function fio(
  file: string,
  engine: string,
  rw: string,
  bs: number,
  depth: number,
  ops: number,
  cold: boolean,
): Promise<FioResult> {
  const a = [
    "--name=peer",
    `--filename=${file}`,
    ...(FIO_ENGINES[engine] ?? [`--ioengine=${engine}`]),
    `--rw=${rw}`,
    `--bs=${bs}`,
    `--iodepth=${depth}`,
    `--size=${FILE_BYTES}`,
    `--number_ios=${ops}`,
    "--direct=0",
    `--invalidate=${cold ? 1 : 0}`,
    "--randrepeat=1",
    "--norandommap",
    "--thread",
    "--lat_percentiles=1",
    "--output-format=json",
  ];
  const out = await new Deno.Command("fio", { args: a, stdout: "piped", stderr: "piped" }).output();
  const text = new TextDecoder().decode(out.stdout);
  if (!out.success) throw new Error(`fio ${a.join(" ")}: ${new TextDecoder().decode(out.stderr)}`);
  const job = JSON.parse(text).jobs[0];
  const side = rw.includes("write") ? job.write : job.read;
  // Total latency (submission to completion), the same span the device path is timed over.
  const pct = side.lat_ns?.percentile ?? {};
  return {
    iops: side.iops,
    mbps: side.bw_bytes / 1e6,
    lat50us: (pct["50.000000"] ?? 0) / 1000,
    lat99us: (pct["99.000000"] ?? 0) / 1000,
  };
}

async function qemuImgBench(
  image: string,
  write: boolean,
  count: number,
  depth: number,
  aio: string,
): Promise<number> {
  // aio=native needs O_DIRECT (cache=none); the others run cache=writeback like the device.
  const cache = aio === "native" ? "none" : "writeback";
  const a = [
    "bench",
    "-q",
    "-f",
    "qcow2",
    "-c",
    String(count),
    "-d",
    String(depth),
    "-s",
    "4096",
    "-i",
    aio,
    "-t",
    cache,
  ];
  if (write) a.push("-w", "--no-drain");
  a.push(image);
  const out = await new Deno.Command("qemu-img", { args: a, stdout: "piped", stderr: "piped" })
    .output();
  const text = new TextDecoder().decode(out.stdout);
  if (!out.success) {
    throw new Error(`qemu-img ${a.join(" ")}: ${new TextDecoder().decode(out.stderr)}`);
  }
  const m = /Run completed in ([\d.]+) seconds/.exec(text);
  if (m?.[1] === undefined) throw new Error(`cannot parse: ${text}`);
  return count / Number(m[1]);
}

// ---- cache control ------------------------------------------------------------

const POSIX_FADV_DONTNEED = 4;
const libc = Deno.dlopen("libc.so.6", {
  posix_fadvise: { parameters: ["i32", "i64", "i64", "i32"], result: "i32" },
  open: { parameters: ["buffer", "i32"], result: "i32" },
  fdatasync: { parameters: ["i32"], result: "i32" },
  close: { parameters: ["i32"], result: "i32" },
}).symbols;

/** Writes the file's dirty pages back (DONTNEED keeps dirty pages), then drops its page cache. */
function dropCache(path: string): void {
  const fd = libc.open(new TextEncoder().encode(path + "\0"), 2);
  if (fd < 0) throw new Error(`open ${path}`);
  libc.fdatasync(fd);
  const r = libc.posix_fadvise(fd, 0n, 0n, POSIX_FADV_DONTNEED);
  libc.close(fd);
  if (r !== 0) throw new Error(`posix_fadvise(DONTNEED) on ${path}: error ${r}`);
}

async function warmCache(path: string): Promise<void> {
  const f = await Deno.open(path);
  const buf = new Uint8Array(1 << 20);
  while ((await f.read(buf)) !== null) { /* read it all */ }
  f.close();
}

// ---- reporting ----------------------------------------------------------------

function load(): string {
  return Deno.loadavg().map((x) => x.toFixed(2)).join(" ");
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? s[m] ?? 0 : ((s[m - 1] ?? 0) + (s[m] ?? 0)) / 2;
}

function range(xs: number[]): string {
  return `[${fmt(Math.min(...xs))}..${fmt(Math.max(...xs))}]`;
}

function fmt(x: number): string {
  return x >= 1000 ? Math.round(x).toString() : x >= 10 ? x.toFixed(1) : x.toFixed(2);
}

interface Row {
  metric: string;
  vmkit: number[];
  peer: number[];
  peerName: string;
  higherBetter: boolean;
  loads: string[];
}

const rows: Row[] = [];

function report(r: Row): void {
  rows.push(r);
  const v = median(r.vmkit), p = median(r.peer);
  const ratio = r.higherBetter ? v / p : p / v;
  console.log(
    `${r.metric.padEnd(38)} vmkit ${fmt(v).padStart(8)} ${range(r.vmkit).padEnd(20)} ` +
      `${r.peerName.padEnd(22)} ${fmt(p).padStart(8)} ${range(r.peer).padEnd(20)} ratio ${
        ratio.toFixed(2)
      }  load ${r.loads.join(" | ")}`,
  );
}

// ---- the runs -----------------------------------------------------------------

async function makeFile(path: string, bytes: number): Promise<void> {
  const f = await Deno.open(path, { write: true, create: true, truncate: true });
  const chunk = new Uint8Array(4 << 20);
  for (let i = 0; i < chunk.length; i += 4) chunk[i] = (i * 2654435761) >>> 24;
  for (let o = 0; o < bytes; o += chunk.length) await f.write(chunk);
  f.close();
}

/** Alternates vmkit and the peer engines RUNS times; returns medians per side. */
async function compare(
  metric: string,
  file: string,
  cold: boolean,
  vmkit: () => Promise<number>,
  peers: Record<string, () => Promise<number>>,
  higherBetter = true,
): Promise<void> {
  const vs: number[] = [];
  const ps: Record<string, number[]> = {};
  const loads: string[] = [];
  for (let i = 0; i < RUNS; i++) {
    loads.push(load());
    const order = i % 2 === 0 ? ["vmkit", ...Object.keys(peers)] : [...Object.keys(peers), "vmkit"];
    for (const who of order) {
      if (cold) dropCache(file);
      else await warmCache(file);
      if (who === "vmkit") vs.push(await vmkit());
      else (ps[who] ??= []).push(await (peers[who] ?? (() => Promise.resolve(0)))());
    }
  }
  let best = "";
  for (const [k, v] of Object.entries(ps)) {
    if (
      best === "" ||
      (higherBetter ? median(v) > median(ps[best] ?? []) : median(v) < median(ps[best] ?? []))
    ) best = k;
  }
  report({ metric, vmkit: vs, peer: ps[best] ?? [], peerName: best, higherBetter, loads });
}

const dir = await Deno.makeTempDir({ prefix: "vmkit-blk-bench-" });
try {
  console.log(
    `virtio-blk device path vs fio (buffered, iodepth ${DEPTH}) and qemu-img bench; ` +
      `${RUNS} runs per side, median [range]; file ${
        FILE_BYTES >> 20
      } MiB; ${navigator.hardwareConcurrency} CPUs`,
  );
  const raw = `${dir}/disk.raw`;
  await makeFile(raw, FILE_BYTES);
  const r = await device({ kind: "file", path: raw });
  const opsRand = QUICK ? 20000 : 60000;
  const opsSeq = QUICK ? 8000 : 20000;
  try {
    // Reads first, writes last: dirty pages left by writes would slow a later cold read's cache drop.
    for (const cold of [false, true]) {
      const tag = cold ? "cold" : "warm";
      // Cold: a quarter of the file's blocks, so few reads hit pages an earlier read brought in.
      const ops = cold ? Math.floor(FILE_BYTES / 4096 / 4) : opsRand;
      await compare(
        `4K randread QD32 ${tag} (req/s)`,
        raw,
        cold,
        () => Promise.resolve(ops / vmkitRun(r, 0, 4096, ops, true, FILE_BYTES)),
        Object.fromEntries(
          Object.keys(FIO_ENGINES).map((
            e,
          ) => [
            `fio ${e}`,
            async () => (await fio(raw, e, "randread", 4096, DEPTH, ops, cold)).iops,
          ]),
        ),
      );
      // Cold: one pass over the file.
      const seqOps = cold ? FILE_BYTES / 131072 : opsSeq;
      await compare(
        `128K seq read QD32 ${tag} (MB/s)`,
        raw,
        cold,
        () =>
          Promise.resolve(
            seqOps * 131072 / 1e6 / vmkitRun(r, 0, 131072, seqOps, false, FILE_BYTES),
          ),
        Object.fromEntries(
          Object.keys(FIO_ENGINES).map((
            e,
          ) => [
            `fio ${e}`,
            async () => (await fio(raw, e, "read", 131072, DEPTH, seqOps, cold)).mbps,
          ]),
        ),
      );
    }
    for (const cold of [false, true]) {
      const tag = cold ? "cold" : "warm";
      const ops = cold ? Math.floor(FILE_BYTES / 4096 / 4) : opsRand;
      await compare(
        `4K randwrite QD32 ${tag} (req/s)`,
        raw,
        cold,
        () => Promise.resolve(ops / vmkitRun(r, 1, 4096, ops, true, FILE_BYTES)),
        Object.fromEntries(
          Object.keys(FIO_ENGINES).map((
            e,
          ) => [
            `fio ${e}`,
            async () => (await fio(raw, e, "randwrite", 4096, DEPTH, ops, cold)).iops,
          ]),
        ),
      );
    }
    // Latency: one request at a time, warm cache.
    await warmCache(raw);
    const latOps = QUICK ? 2000 : 5000;
    const v50: number[] = [], v99: number[] = [], p50: number[] = [], p99: number[] = [];
    const loads: string[] = [];
    for (let i = 0; i < RUNS; i++) {
      loads.push(load());
      const lat = vmkitLatency(r, latOps, FILE_BYTES);
      v50.push(lat[Math.floor(lat.length * 0.5)] ?? 0);
      v99.push(lat[Math.floor(lat.length * 0.99)] ?? 0);
      const f = await fio(raw, "io_uring", "randread", 4096, 1, latOps, false);
      p50.push(f.lat50us);
      p99.push(f.lat99us);
    }
    report({
      metric: "4K read latency p50 (us)",
      vmkit: v50,
      peer: p50,
      peerName: "fio io_uring QD1 lat",
      higherBetter: false,
      loads,
    });
    report({
      metric: "4K read latency p99 (us)",
      vmkit: v99,
      peer: p99,
      peerName: "fio io_uring QD1 lat",
      higherBetter: false,
      loads,
    });
  } finally {
    await closeDevice(r);
  }

  // qcow2 overlay over the raw base, against qemu-img bench (sequential: it has no random mode).
  const overlay = `${dir}/overlay.qcow2`;
  const q = await new Deno.Command("qemu-img", {
    args: ["create", "-q", "-f", "qcow2", "-b", raw, "-F", "raw", overlay],
  }).output();
  if (!q.success) throw new Error("qemu-img create failed");
  // The device holds the image's write lock while open (as qemu-img does), so each vmkit run
  // opens it, runs, and closes it again; opening is outside the timing.
  const count = QUICK ? 20000 : 40000;
  for (
    const [name, type, write] of [["4K seq write (alloc+rewrite)", 1, true], [
      "4K seq read",
      0,
      false,
    ]] as const
  ) {
    await compare(
      `qcow2 overlay ${name} QD32 (req/s)`,
      overlay,
      false,
      async () => {
        const qr = await device({ kind: "file", path: overlay });
        try {
          return count / vmkitRun(qr, type, 4096, count, false, count * 4096);
        } finally {
          await closeDevice(qr);
        }
      },
      Object.fromEntries(
        ["threads", "io_uring", "native"].map((
          aio,
        ) => [`qemu-img bench -i ${aio}`, () => qemuImgBench(overlay, write, count, DEPTH, aio)]),
      ),
    );
  }
  console.log(
    `peer commands: fio --ioengine={io_uring [--fixedbufs=1 --registerfiles=1 --iodepth_batch_submit=16 --iodepth_batch_complete_max=16],libaio} --rw=... --bs=... --iodepth=${DEPTH} --size=${FILE_BYTES} ` +
      `--number_ios=N --direct=0 --invalidate={0 warm,1 cold} --thread; ` +
      `qemu-img bench -f qcow2 -c N -d ${DEPTH} -s 4096 -i {threads,io_uring} -t writeback | -i native -t none [-w --no-drain]`,
  );
} finally {
  await Deno.remove(dir, { recursive: true });
}
