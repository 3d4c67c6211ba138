import assert from "node:assert/strict";
import {
  RX_RING_BYTES,
  Serial16550,
  SERIAL_STATE_BYTES,
  serialSpec,
} from "../../vmm/devices/mod.ts";
import type { DeviceEnv, DeviceSpec } from "../../vmm/devices/mod.ts";

const BASE = 0x3f8;
const RBR = BASE + 0;
const THR = BASE + 0;
const IER = BASE + 1;
const IIR = BASE + 2;
const FCR = BASE + 2;
const LCR = BASE + 3;
const MCR = BASE + 4;
const LSR = BASE + 5;
const MSR = BASE + 6;
const SCR = BASE + 7;

interface Rig {
  uart: Serial16550;
  spec: DeviceSpec;
  out: number[];
  irqs: Array<[number, boolean]>;
  stops: Array<[number, string]>;
  env: DeviceEnv;
  line(): boolean;
}

function rig(spec: DeviceSpec = serialSpec("com1", { output: "none" })): Rig {
  const out: number[] = [];
  const irqs: Array<[number, boolean]> = [];
  const stops: Array<[number, string]> = [];
  const env: DeviceEnv = {
    setIrq: (gsi, level) => irqs.push([gsi, level]),
    requestStop: (status, reason) => stops.push([status, reason]),
  };
  const uart = new Serial16550(spec, env, { sink: (b) => out.push(...b) });
  return {
    uart,
    spec,
    out,
    irqs,
    stops,
    env,
    line: () => irqs.length > 0 && (irqs[irqs.length - 1]?.[1] ?? false),
  };
}

Deno.test("serial passes the Linux 8250 scratch, loopback and FIFO probes as a 16550A", () => {
  const { uart } = rig();
  // Scratch test on IER (autoconfig): 0 reads 0, 0x0f reads 0x0f.
  uart.write(IER, 1, 0);
  assert.equal(uart.read(IER, 1) & 0x0f, 0);
  uart.write(IER, 1, 0x0f);
  assert.equal(uart.read(IER, 1) & 0x0f, 0x0f);
  uart.write(IER, 1, 0);
  // Scratch register holds any byte.
  for (const v of [0x00, 0x55, 0xaa, 0xff]) {
    uart.write(SCR, 1, v);
    assert.equal(uart.read(SCR, 1), v);
  }
  // Loopback: MCR = LOOP | 0x0a must read back MSR status bits DCD | CTS.
  uart.write(MCR, 1, 0x10 | 0x0a);
  assert.equal(uart.read(MSR, 1) & 0xf0, 0x90);
  uart.write(MCR, 1, 0x10 | 0x05);
  assert.equal(uart.read(MSR, 1) & 0xf0, 0x60);
  uart.write(MCR, 1, 0);
  assert.equal(uart.read(MSR, 1) & 0xf0, 0xb0);
  // FIFO detection: FCR = 0x07 → IIR top bits 0xC0 (16550A); FCR = 0 → 0x00.
  uart.write(FCR, 1, 0x07);
  assert.equal(uart.read(IIR, 1) >> 6, 3);
  uart.write(FCR, 1, 0);
  assert.equal(uart.read(IIR, 1) >> 6, 0);
  assert.equal(uart.read(IIR, 1), 0x01);
});

Deno.test("serial is identified as a plain 16550A by Linux's autoconfig_16550a and startup checks", () => {
  const { uart } = rig();
  const UART_EFR = BASE + 2;
  uart.write(FCR, 1, 0x01); // UART_FCR_ENABLE_FIFO
  assert.equal(uart.read(IIR, 1) >> 6, 3); // "16550A" branch
  // No EFR with LCR = 0x80 or 0xBF: reads at offset 2 must not be 0.
  uart.write(LCR, 1, 0x80);
  assert.notEqual(uart.read(UART_EFR, 1), 0);
  uart.write(LCR, 1, 0xbf);
  assert.notEqual(uart.read(UART_EFR, 1), 0);
  // Not a National SuperIO: EXCR1 (offset 2 with LCR = 0xE0) does not track MCR's LOOP bit.
  uart.write(LCR, 1, 0);
  const mcr = uart.read(MCR, 1);
  uart.write(LCR, 1, 0xe0);
  const excr1 = uart.read(BASE + 2, 1);
  uart.write(LCR, 1, 0);
  uart.write(MCR, 1, mcr ^ 0x10);
  uart.write(LCR, 1, 0xe0);
  const excr1Loop = uart.read(BASE + 2, 1);
  uart.write(LCR, 1, 0);
  uart.write(MCR, 1, mcr);
  assert.equal((excr1 ^ excr1Loop) & 0x10, 0);
  // Not a TI16750: IIR bit 5 (64-byte FIFO) never sets, with or without DLAB.
  uart.write(FCR, 1, 0x21);
  const s1 = uart.read(IIR, 1) & 0xe0;
  uart.write(FCR, 1, 0);
  uart.write(LCR, 1, 0x80);
  uart.write(FCR, 1, 0x21);
  const s2 = uart.read(IIR, 1) & 0xe0;
  uart.write(FCR, 1, 0);
  uart.write(LCR, 1, 0);
  assert.equal(s1, 0xc0);
  assert.equal(s2, 0xc0);
  // Not an XScale UART: IER bit 6 (UUE) does not stick.
  uart.write(IER, 1, 0x40);
  assert.equal(uart.read(IER, 1) & 0x40, 0);
  uart.write(IER, 1, 0);
  // serial8250_do_startup: clear FIFOs, LSR must not read 0xff, then the THRE re-assert test.
  uart.write(FCR, 1, 0x07);
  uart.write(FCR, 1, 0);
  uart.read(LSR, 1);
  uart.read(RBR, 1);
  uart.read(IIR, 1);
  uart.read(MSR, 1);
  assert.notEqual(uart.read(LSR, 1), 0xff);
  uart.write(LCR, 1, 0x03);
  uart.write(IER, 1, 0x02);
  const iir1 = uart.read(IIR, 1);
  uart.write(IER, 1, 0);
  uart.write(IER, 1, 0x02);
  const iir = uart.read(IIR, 1);
  uart.write(IER, 1, 0);
  assert.equal(iir1 & 0x01, 0); // THRE interrupt pending: no UART_BUG_THRE
  assert.equal(iir & 0x01, 0);
  // UART_BUG_TXEN check: THRI enable with TEMT set reports a pending interrupt.
  uart.write(IER, 1, 0x02);
  const lsr = uart.read(LSR, 1);
  const iir2 = uart.read(IIR, 1);
  uart.write(IER, 1, 0);
  assert.equal(lsr & 0x40, 0x40);
  assert.equal(iir2 & 0x01, 0);
});

Deno.test("serial raises a THRE interrupt when the THRE interrupt is enabled with OUT2 set", () => {
  const r = rig();
  r.uart.write(MCR, 1, 0x0b); // DTR | RTS | OUT2
  assert.equal(r.line(), false);
  r.uart.write(IER, 1, 0x02);
  assert.deepEqual(r.irqs.at(-1), [4, true]);
  assert.equal(r.uart.read(IIR, 1), 0x02);
  // Reading IIR acknowledged it.
  assert.equal(r.line(), false);
  assert.equal(r.uart.read(IIR, 1), 0x01);
  // Each THR write drops and re-raises the line: an edge per byte.
  const before = r.irqs.length;
  r.uart.write(THR, 1, 0x41);
  assert.deepEqual(r.irqs.slice(before), [[4, true]]);
  r.uart.write(THR, 1, 0x42);
  assert.deepEqual(r.irqs.slice(before), [[4, true], [4, false], [4, true]]);
  r.uart.write(IER, 1, 0);
  assert.equal(r.line(), false);
});

Deno.test("serial keeps the IRQ low without OUT2, as on PC hardware", () => {
  const r = rig();
  r.uart.write(MCR, 1, 0x03);
  r.uart.write(IER, 1, 0x02);
  assert.equal(r.uart.read(IIR, 1), 0x02);
  assert.equal(r.irqs.length, 0);
});

Deno.test("serial sends polled output to the sink, flushing on newline and on flush()", () => {
  const r = rig();
  const text = "hello\nworld";
  for (const b of new TextEncoder().encode(text)) {
    assert.equal(r.uart.read(LSR, 1) & 0x60, 0x60); // THRE and TEMT: ready
    r.uart.write(THR, 1, b);
  }
  assert.equal(new TextDecoder().decode(new Uint8Array(r.out)), "hello\n");
  r.uart.flush();
  assert.equal(new TextDecoder().decode(new Uint8Array(r.out)), text);
});

Deno.test("serial writes its output to a file in append mode", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const path = `${dir}/serial.log`;
    await Deno.writeTextFile(path, "before:");
    const env: DeviceEnv = { setIrq() {}, requestStop() {} };
    const spec = serialSpec("com1", { output: { path } });
    const a = new Serial16550(spec, env);
    const b = new Serial16550(spec, env); // as another thread would
    for (const c of new TextEncoder().encode("ab\n")) a.write(THR, 1, c);
    for (const c of new TextEncoder().encode("cd")) b.write(THR, 1, c);
    b.close();
    a.close();
    assert.equal(await Deno.readTextFile(path), "before:ab\ncd");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("serial delivers pushed input with DR set and an RX interrupt", () => {
  const r = rig();
  r.uart.write(FCR, 1, 0x07);
  r.uart.write(MCR, 1, 0x0b);
  r.uart.write(IER, 1, 0x01);
  assert.equal(r.uart.read(LSR, 1) & 0x01, 0);
  assert.equal(r.line(), false);
  const msg = new TextEncoder().encode("input bytes, more than sixteen of them");
  assert.equal(r.uart.pushInput(msg), msg.length);
  assert.equal(r.line(), true);
  assert.equal(r.uart.read(IIR, 1), 0xc4); // FIFO at or above the 1-byte trigger level
  r.uart.write(FCR, 1, 0xc1); // 14-byte trigger; the FIFO refills with 16 bytes
  assert.equal(r.uart.read(IIR, 1), 0xc4);
  const got: number[] = [];
  while ((r.uart.read(LSR, 1) & 0x01) !== 0) {
    if (got.length === msg.length - 2) {
      assert.equal(r.uart.read(IIR, 1), 0xcc); // two bytes left, below trigger: timeout
    }
    got.push(r.uart.read(RBR, 1));
  }
  assert.deepEqual(got, [...msg]);
  assert.equal(r.line(), false);
  assert.equal(r.uart.read(IIR, 1), 0xc1);
  assert.equal(r.uart.pendingInput(), 0);
});

Deno.test("serial input ring accepts at most 4 KiB until the guest reads", () => {
  const r = rig();
  r.uart.write(FCR, 1, 0x01);
  const big = new Uint8Array(RX_RING_BYTES + 100).map((_, i) => i & 0xff);
  const taken = r.uart.pushInput(big);
  assert.equal(taken, RX_RING_BYTES + 16); // ring plus the 16-byte FIFO
  assert.equal(r.uart.pushInput(big), 0);
  assert.equal(r.uart.read(RBR, 1), 0);
  assert.equal(r.uart.pushInput(big.subarray(taken)), 1);
  let n = 1;
  while ((r.uart.read(LSR, 1) & 0x01) !== 0) {
    assert.equal(r.uart.read(RBR, 1), n & 0xff);
    n++;
  }
  assert.equal(n, taken + 1);
});

Deno.test("serial with input disabled accepts no host input", () => {
  const r = rig(serialSpec("com1", { output: "none", input: false }));
  assert.equal(r.uart.pushInput(new Uint8Array([1, 2, 3])), 0);
  assert.equal(r.uart.read(LSR, 1) & 0x01, 0);
});

Deno.test("serial DLAB switches offsets 0 and 1 to the divisor latch", () => {
  const { uart } = rig();
  uart.write(IER, 1, 0x05);
  uart.write(LCR, 1, 0x83);
  uart.write(BASE, 1, 0x01);
  uart.write(BASE + 1, 1, 0x00);
  assert.equal(uart.read(BASE, 1), 0x01);
  assert.equal(uart.read(BASE + 1, 1), 0x00);
  uart.write(LCR, 1, 0x03);
  assert.equal(uart.read(LCR, 1), 0x03);
  assert.equal(uart.read(IER, 1), 0x05);
  uart.write(LCR, 1, 0x83);
  assert.equal(uart.read(BASE, 1), 0x01);
});

Deno.test("serial reports interrupts by priority: line status, RX data, THRE, modem status", () => {
  const r = rig();
  const u = r.uart;
  u.write(MCR, 1, 0x18); // loopback, OUT2 (so loopback bytes reach our own receiver)
  u.read(MSR, 1); // clear deltas from entering loopback
  u.write(IER, 1, 0x0f);
  assert.equal(u.read(IIR, 1), 0x02); // THRE only
  u.write(MCR, 1, 0x19); // DTR toggles DSR → modem status delta
  u.write(THR, 1, 0x31); // loopback: one byte received (FIFO off)
  u.write(THR, 1, 0x32); // overrun
  assert.equal(u.read(IIR, 1), 0x06); // line status first
  assert.equal(u.read(LSR, 1) & 0x03, 0x03); // DR | OE; clears OE
  assert.equal(u.read(IIR, 1), 0x04); // then RX data
  assert.equal(u.read(RBR, 1), 0x32); // overwritten holding register
  assert.equal(u.read(IIR, 1), 0x02); // then THRE
  assert.equal(u.read(IIR, 1), 0x00); // THRE acknowledged: modem status
  assert.equal(u.read(MSR, 1) & 0x0f, 0x02); // DDSR; reading clears it
  assert.equal(u.read(IIR, 1), 0x01);
});

Deno.test("serial loopback with the FIFO overruns only past 16 bytes", () => {
  const { uart } = rig();
  uart.write(FCR, 1, 0x01);
  uart.write(MCR, 1, 0x10);
  for (let i = 0; i < 17; i++) uart.write(THR, 1, i);
  assert.equal(uart.read(LSR, 1) & 0x03, 0x03);
  const got: number[] = [];
  while ((uart.read(LSR, 1) & 0x01) !== 0) got.push(uart.read(RBR, 1));
  assert.deepEqual(got, Array.from({ length: 16 }, (_, i) => i));
});

Deno.test("serial save then restore into a new instance gives the same register behaviour", () => {
  const a = rig();
  a.uart.write(FCR, 1, 0xc7);
  a.uart.write(LCR, 1, 0x03);
  a.uart.write(MCR, 1, 0x0b);
  a.uart.write(IER, 1, 0x03);
  a.uart.write(SCR, 1, 0x5a);
  a.uart.pushInput(new TextEncoder().encode("xyz"));
  a.uart.write(THR, 1, 0x41); // buffered output is flushed by save
  const saved = a.uart.save();
  assert.deepEqual(a.out, [0x41]);
  const b = rig(serialSpec("com1", { output: "none" }));
  b.uart.restore(saved);
  assert.deepEqual(b.irqs.at(-1), [4, true]);
  for (const reg of [IER, IIR, LCR, MCR, LSR, MSR, SCR]) {
    assert.equal(b.uart.read(reg, 1), a.uart.read(reg, 1), `register ${reg - BASE}`);
  }
  assert.equal(b.uart.read(RBR, 1), 0x78);
  assert.equal(b.uart.read(RBR, 1), 0x79);
  assert.equal(b.uart.read(RBR, 1), 0x7a);
  assert.throws(() => b.uart.restore(saved.subarray(0, 50)), /device state/);
  const corrupt = saved.slice();
  corrupt[44 + 18 - 4] = 200; // FIFO count
  assert.throws(() => b.uart.restore(corrupt), /out of range/);
});

Deno.test("two serial instances over the same shared state see each other's writes", () => {
  const spec = serialSpec("com1", { output: "none" });
  const a = rig(spec);
  const b = rig(spec);
  a.uart.write(SCR, 1, 0x99);
  assert.equal(b.uart.read(SCR, 1), 0x99);
  b.uart.write(LCR, 1, 0x1b);
  assert.equal(a.uart.read(LCR, 1), 0x1b);
  a.uart.pushInput(new Uint8Array([7]));
  assert.equal(b.uart.read(LSR, 1) & 0x01, 1);
  assert.equal(b.uart.read(RBR, 1), 7);
  assert.equal(a.uart.read(LSR, 1) & 0x01, 0);
  assert.equal(spec.state.byteLength, SERIAL_STATE_BYTES);
});

Deno.test("serial survives random reads and writes to every port (seeded fuzz)", () => {
  const seed = 0x5eed_1234;
  let x = seed;
  const rand = (): number => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return x >>> 0;
  };
  const r = rig();
  try {
    for (let i = 0; i < 50_000; i++) {
      const port = BASE + (rand() % 8);
      const size = [1, 2, 4][rand() % 3] ?? 1;
      if (rand() % 2 === 0) {
        const v = r.uart.read(port, size);
        assert.ok(Number.isInteger(v) && v >= 0 && v <= 0xff);
      } else r.uart.write(port, size, rand());
      if (rand() % 64 === 0) r.uart.pushInput(new Uint8Array([rand() & 0xff, rand() & 0xff]));
    }
    r.uart.restore(r.uart.save());
  } catch (err) {
    console.error(`serial fuzz failed with seed 0x${seed.toString(16)}`);
    throw err;
  }
  assert.equal(r.stops.length, 0);
});
