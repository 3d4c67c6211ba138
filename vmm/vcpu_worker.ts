/**
 * The vCPU loop: one Worker per vCPU calls `KVM_RUN` synchronously through
 * FFI and handles each exit on its own thread with its own instances of the
 * devices (state shared through SharedArrayBuffers under the bus lock), so a
 * port write costs one FFI call plus a bus dispatch and never crosses threads.
 *
 * Start: the Worker sets up its vCPU (the {@link VcpuInit}, which a standby
 * machine sends before it knows its guest), then builds its devices (the
 * {@link VcpuLoad}) and waits at the start gate, where a restore first has
 * it set its own vCPU's state from the load slots (`kvm_state_load.ts`).
 *
 * Pause/stop: the machine sets a request bit in the control buffer and kicks
 * the thread (immediate_exit + signal). The loop checks the bits before every
 * `KVM_RUN`; on pause it publishes PAUSED and parks in `Atomics.wait`.
 *
 * HLT: the in-kernel irqchip handles HLT inside `KVM_RUN` (userspace never
 * sees a HLT exit), so a vCPU halted with interrupts off simply sleeps there;
 * it is not taken as power-off, because an NMI or INIT may still wake it.
 * The run ends through a device (debug-exit, i8042 reset), a guest shutdown
 * or `Machine.stop()`.
 *
 * @module
 */

/// <reference lib="deno.worker" />

import { openShim } from "../native/ffi.ts";
import { KvmError, KvmExit, RunOffset, Vcpu } from "../native/kvm.ts";
import { VcpuStateSlots } from "../native/kvm_state_slot.ts";
import { VcpuLoadSlots } from "../native/kvm_state_load.ts";
import { DeviceBus } from "./devices/bus.ts";
import type { DeviceEnv } from "./devices/device.ts";
import { VirtioMmioTransport } from "./devices/virtio/mmio.ts";
import { EXIT_SLOT, exitCounterRow } from "./metrics/machine_metrics.ts";
import {
  CTL_GO,
  CTL_REQ,
  CTL_VCPU0,
  GO_RUN,
  loadDeviceFactory,
  REQ_PAUSE,
  REQ_STOP,
  type VcpuInit,
  type VcpuLoad,
  type VcpuMessage,
  type VcpuPreload,
  VcpuRunState,
} from "./vcpu.ts";
import { traceStartup } from "./startup_trace.ts";

traceStartup("worker: modules evaluated");

const KVM_SYSTEM_EVENT_SHUTDOWN = 1;
const KVM_SYSTEM_EVENT_RESET = 2;
const KVM_SYSTEM_EVENT_CRASH = 3;
const KVM_EXIT_IO_OUT = 1;
const MAX_MMIO_LEN = 8;

function post(msg: VcpuMessage): void {
  self.postMessage(msg);
}

async function main(init: VcpuInit): Promise<void> {
  const shim = openShim(init.libPath).symbols;
  const ctl = new Int32Array(init.control);
  const stateIndex = CTL_VCPU0 + init.id;
  let stopped = false;
  const requestStop = (status: number, reason: string): void => {
    if (stopped) return;
    stopped = true;
    Atomics.or(ctl, CTL_REQ, REQ_STOP);
    post({ type: "stop", id: init.id, status, reason });
  };
  const env: DeviceEnv = {
    setIrq(gsi: number, level: boolean): void {
      const r = shim.vk_irq_line(init.vmFd, gsi, level ? 1 : 0);
      if (r < 0) throw new KvmError("KVM_IRQ_LINE", -r, `gsi ${gsi}`);
    },
    requestStop,
  };
  // The load message may follow the init at once: take it before yielding.
  const loaded = new Promise<VcpuLoad>((resolve) => {
    self.onmessage = (e: MessageEvent<VcpuLoad>) => {
      if (e.data.type !== "load") return;
      self.onmessage = null;
      resolve(e.data);
    };
  });
  const vcpu = new Vcpu(init.vcpuFd, init.id, init.runAddr, init.runSize, init.xsaveSize, false);
  const run = new DataView(vcpu.runBytes.buffer, vcpu.runBytes.byteOffset, vcpu.runSize);
  const runSize = vcpu.runSize;
  const fd = vcpu.fd;
  const kvmRun = shim.vk_run;
  // Exit counters for GET /metrics: this vCPU's row, written by this thread only.
  const exits = exitCounterRow(init.exitCounters, init.id);
  const X = EXIT_SLOT;
  const tally = (slot: number): void => {
    exits[slot] = (exits[slot] ?? 0) + 1;
  };

  const loads = init.loadSlots === undefined ? undefined : VcpuLoadSlots.attach(
    init.loadSlots.buffer,
    init.loadSlots.count,
    init.xsaveSize,
    init.loadSlots.msrs,
  );

  new BigInt64Array(init.threads)[init.id] = BigInt.asIntN(64, BigInt(shim.vk_thread_self()));
  const standbyDevices = (await loadDeviceFactory(init.deviceModule))(init.devices, env);
  Atomics.store(ctl, stateIndex, VcpuRunState.STANDBY);
  Atomics.notify(ctl, stateIndex);
  post({ type: "ready", id: init.id });
  traceStartup("worker: set up");
  const load = await loaded;
  const bus = new DeviceBus(
    [
      ...(load.devices === undefined
        ? standbyDevices
        : (await loadDeviceFactory(load.deviceModule))(load.devices, env)),
      ...load.ioDevices.map((spec) => new VirtioMmioTransport(spec)),
    ],
    init.busLock,
  );
  traceStartup("worker: devices built");
  Atomics.store(ctl, stateIndex, VcpuRunState.LOADED);
  Atomics.notify(ctl, stateIndex);

  // The start gate: every event (a state to load, start, stop) changes its word.
  for (;;) {
    const gate = Atomics.load(ctl, CTL_GO);
    if ((Atomics.load(ctl, CTL_REQ) & REQ_STOP) !== 0) break;
    loads?.loadOwn(vcpu);
    if ((gate & GO_RUN) !== 0) break;
    Atomics.wait(ctl, CTL_GO, gate);
  }

  const fail = (reason: string): void => requestStop(1, `vcpu ${init.id}: ${reason}`);

  const handleIo = (): void => {
    const size = run.getUint8(RunOffset.IO_SIZE);
    const port = run.getUint16(RunOffset.IO_PORT, true);
    const count = run.getUint32(RunOffset.IO_COUNT, true);
    // data_offset is a u64; read it as two u32s so no BigInt is allocated per exit.
    let off = run.getUint32(RunOffset.IO_DATA_OFFSET, true);
    const offHigh = run.getUint32(RunOffset.IO_DATA_OFFSET + 4, true);
    if ((size !== 1 && size !== 2 && size !== 4) || count === 0) {
      return fail(`bad I/O exit (port 0x${port.toString(16)}, size ${size}, count ${count})`);
    }
    const len = size * count;
    if (offHigh !== 0 || off + len > runSize) {
      return fail(`I/O data (offset ${off}, ${len} bytes) outside the kvm_run mapping`);
    }
    if (run.getUint8(RunOffset.IO_DIRECTION) === KVM_EXIT_IO_OUT) {
      tally(X.io_out);
      for (let i = 0; i < count; i++, off += size) {
        const v = size === 1
          ? run.getUint8(off)
          : size === 2
          ? run.getUint16(off, true)
          : run.getUint32(off, true);
        bus.pioWrite(port, size, v);
      }
    } else {
      tally(X.io_in);
      for (let i = 0; i < count; i++, off += size) {
        const v = bus.pioRead(port, size) ?? 0xffff_ffff;
        if (size === 1) run.setUint8(off, v & 0xff);
        else if (size === 2) run.setUint16(off, v & 0xffff, true);
        else run.setUint32(off, v >>> 0, true);
      }
    }
  };

  const handleMmio = (): void => {
    const len = run.getUint32(RunOffset.MMIO_LEN, true);
    const addr = run.getUint32(RunOffset.MMIO_PHYS_ADDR, true) +
      run.getUint32(RunOffset.MMIO_PHYS_ADDR + 4, true) * 0x1_0000_0000;
    if (len === 0 || len > MAX_MMIO_LEN) {
      return fail(`bad MMIO exit at 0x${addr.toString(16)} (len ${len})`);
    }
    const write = run.getUint8(RunOffset.MMIO_IS_WRITE) !== 0;
    tally(write ? X.mmio_write : X.mmio_read);
    // Accesses wider than 4 bytes go to the device as two 4-byte halves.
    for (let part = 0; part < len; part += 4) {
      const size = Math.min(4, len - part);
      const off = RunOffset.MMIO_DATA + part;
      if (write) {
        let v = 0;
        for (let b = size - 1; b >= 0; b--) v = v * 256 + run.getUint8(off + b);
        bus.mmioWrite(addr + part, size, v);
      } else {
        const v = bus.mmioRead(addr + part, size) ?? 0xffff_ffff;
        for (let b = 0; b < size; b++) run.setUint8(off + b, (v >>> (8 * b)) & 0xff);
      }
    }
  };

  // A checkpoint's pause: this thread saves its own vCPU's state as it parks.
  const slots = init.stateSlots === undefined ? undefined : VcpuStateSlots.attach(
    init.stateSlots.buffer,
    init.stateSlots.count,
    init.xsaveSize,
    init.stateSlots.msrCount,
    init.stateSlots.sync,
  );
  // An I/O or MMIO exit completes (IN data into RAX, string I/O into memory)
  // only on the next KVM_RUN, so before parking the loop enters once more
  // with immediate_exit set: KVM finishes the operation and returns EINTR
  // without running a guest instruction, and the paused state is whole. A
  // vCPU asked to save its state enters once too, so that KVM leaves its
  // registers in kvm_run (slots.prepare).
  let pendingIo = false;

  const park = (): void => {
    if (slots?.wanted(init.id) === true) {
      // The machine may go on (re-protect memory, save devices) while this thread saves.
      Atomics.store(ctl, stateIndex, VcpuRunState.STOPPED);
      Atomics.notify(ctl, stateIndex);
      slots.saveOwn(vcpu);
    }
    Atomics.store(ctl, stateIndex, VcpuRunState.PAUSED);
    Atomics.notify(ctl, stateIndex);
    for (;;) {
      const req = Atomics.load(ctl, CTL_REQ);
      if ((req & REQ_PAUSE) === 0 || (req & REQ_STOP) !== 0) break;
      Atomics.wait(ctl, CTL_REQ, req);
    }
    vcpu.setImmediateExit(false);
    Atomics.store(ctl, stateIndex, VcpuRunState.RUNNING);
  };

  new Float64Array(init.entered)[init.id] = performance.timeOrigin + performance.now();
  traceStartup("worker: first KVM_RUN");
  Atomics.store(ctl, stateIndex, VcpuRunState.RUNNING);
  Atomics.notify(ctl, stateIndex);
  for (;;) {
    const req = Atomics.load(ctl, CTL_REQ);
    if (req !== 0) {
      if ((req & REQ_STOP) !== 0) break;
      if (!pendingIo && slots?.prepare(vcpu) !== true) {
        park();
        continue;
      }
      vcpu.setImmediateExit(true);
    }
    const r = kvmRun(fd);
    pendingIo = false;
    if (r < 0) {
      if (r === -4 || r === -11) { // EINTR (kick) or EAGAIN
        tally(X.intr);
        vcpu.setImmediateExit(false);
        continue;
      }
      fail(new KvmError("KVM_RUN", -r).message);
      break;
    }
    const reason = run.getUint32(RunOffset.EXIT_REASON, true);
    if (reason === KvmExit.IO) {
      handleIo();
      pendingIo = true;
    } else if (reason === KvmExit.MMIO) {
      handleMmio();
      pendingIo = true;
    } else if (reason === KvmExit.INTR || reason === KvmExit.IRQ_WINDOW_OPEN) {
      tally(X.intr);
      vcpu.setImmediateExit(false);
    } else if (reason === KvmExit.HLT) {
      // Only without an in-kernel LAPIC; the machine always has one. Keep going.
      tally(X.hlt);
      continue;
    } else if (reason === KvmExit.SHUTDOWN) {
      tally(X.shutdown);
      requestStop(1, "guest shutdown (triple fault)");
    } else if (reason === KvmExit.SYSTEM_EVENT) {
      tally(X.system_event);
      const type = vcpu.systemEventType;
      if (type === KVM_SYSTEM_EVENT_SHUTDOWN) requestStop(0, "guest powered off");
      else if (type === KVM_SYSTEM_EVENT_RESET) requestStop(0, "guest reset");
      else if (type === KVM_SYSTEM_EVENT_CRASH) requestStop(1, "guest crashed (system event)");
      else fail(`unknown system event ${type}`);
    } else if (reason === KvmExit.INTERNAL_ERROR) {
      tally(X.internal_error);
      const rip = describeRip(vcpu);
      const data = vcpu.internalData().map((d) => `0x${d.toString(16)}`).join(" ");
      fail(`KVM internal error, suberror ${vcpu.internalSuberror}${rip} data [${data}]`);
    } else if (reason === KvmExit.FAIL_ENTRY) {
      tally(X.fail_entry);
      fail(
        `VM entry failed, hardware reason 0x${vcpu.failEntryReason.toString(16)}${
          describeRip(vcpu)
        }`,
      );
    } else {
      tally(X.other);
      fail(`unhandled exit reason ${reason}${describeRip(vcpu)}`);
    }
  }
  Atomics.store(ctl, stateIndex, VcpuRunState.EXITED);
  Atomics.notify(ctl, stateIndex);
  traceStartup("worker: loop ended");
  post({ type: "exited", id: init.id });
}

function describeRip(vcpu: Vcpu): string {
  try {
    return ` at rip 0x${vcpu.getRegs().rip.toString(16)}`;
  } catch (err) {
    return ` (rip unavailable: ${err instanceof Error ? err.message : String(err)})`;
  }
}

self.onmessage = (e: MessageEvent<VcpuInit | VcpuPreload>): void => {
  // A pooled Worker (vcpu_pool.ts) opens the shim while it waits for its VcpuInit.
  if ("preload" in e.data) {
    openShim(e.data.preload);
    traceStartup("worker: shim preloaded");
    return;
  }
  self.onmessage = null;
  const init = e.data;
  main(init).catch((err: unknown) => {
    const reason = err instanceof Error ? err.message : String(err);
    const ctl = new Int32Array(init.control);
    Atomics.or(ctl, CTL_REQ, REQ_STOP);
    Atomics.store(ctl, CTL_VCPU0 + init.id, VcpuRunState.EXITED);
    Atomics.notify(ctl, CTL_VCPU0 + init.id);
    post({ type: "stop", id: init.id, status: 1, reason: `vcpu ${init.id}: ${reason}` });
    post({ type: "exited", id: init.id });
  });
};
