import assert from "node:assert/strict";
import { Checkpointer } from "../../checkpoint/live.ts";
import { readVmGenId } from "../../vmm/acpi/mod.ts";
import { MachineTarget, type RestoredMachine, restoreMachine } from "../../vmm/checkpoint.ts";
import { defaultDeviceSpecs } from "../../vmm/devices/mod.ts";
import { Machine } from "../../vmm/machine.ts";
import { guest } from "../vmm/boot_fake_memory.ts";
import {
  copyRam,
  firstDifference,
  guestMachine,
  ReferenceTarget,
  SEQ_BASE,
  sleep,
  waitForText,
} from "./helpers.ts";

const hex = (b: Uint8Array): string =>
  Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");

Deno.test("4 clones of one checkpoint run at once, each on its own overlay, share the pages they only read and get distinct generation ids (needs /dev/kvm)", async () => {
  const dir = await Deno.makeTempDir({ prefix: "vmkit-clones-" });
  const path = `${dir}/base.ckpt`;
  const pages = 512;
  let reference: Uint8Array[];
  let dataPages: number;
  const disk = `${dir}/disk.raw`;
  await Deno.writeFile(disk, new Uint8Array(1 << 20));
  {
    await using m = await guestMachine(64, `mode=seq:${pages}`, {
      drives: [{ id: "vda", backend: { kind: "file", path: disk, format: "raw" } }],
    });
    await sleep(300);
    const target = new ReferenceTarget(m);
    using cp = await Checkpointer.create(target);
    const summary = await (await cp.checkpoint({ path })).done;
    reference = target.ram;
    dataPages = summary.dataPages;
  }
  const clones: RestoredMachine[] = [];
  try {
    for (let i = 0; i < 4; i++) clones.push(await restoreMachine(path));
    const store = clones[0]?.pageStore;
    assert.ok(store !== undefined, "no shared page store (is /dev/shm a tmpfs?)");
    assert.ok(clones.every((c) => c.pageStore?.path === store.path), "clones use different stores");
    // Every clone reads all of its RAM: the first stores each data page once,
    // the others map the same pages from the store (minor faults).
    for (const c of clones) {
      const diff = firstDifference(copyRam(c.machine), reference);
      // The generation id page differs by design (each clone has its own id).
      const loc = c.machine.acpi?.vmgenid;
      assert.ok(loc !== undefined);
      assert.ok(
        diff === -1 || diff === loc.addr,
        `a clone's RAM differs at 0x${diff.toString(16)}`,
      );
    }
    const counters = clones.map((c) => c.checkpointer.counters());
    const stored = counters.reduce((n, k) => n + (k?.stored ?? 0), 0);
    const minor = counters.reduce((n, k) => n + (k?.minor ?? 0), 0);
    assert.ok(stored <= dataPages + 8, `${stored} pages stored for ${dataPages} data pages`);
    assert.ok(minor >= 3 * (dataPages - 8), `only ${minor} pages mapped from the store`);
    const blocks = Deno.statSync(store.path).blocks ?? 0;
    assert.ok(
      blocks * 512 <= (dataPages + 8) * 4096,
      `the store holds ${blocks * 512} bytes for ${dataPages} data pages`,
    );

    // They all run at once, each on its own copy of what it writes.
    await Promise.all(clones.map((c) => c.machine.start()));
    await sleep(400);
    await Promise.all(clones.map((c) => c.machine.pause()));
    const base = reference[0]?.subarray(SEQ_BASE, SEQ_BASE + pages * 4096);
    for (const c of clones) {
      assert.equal(c.machine.state, "Paused");
      const now = c.machine.memory.read(SEQ_BASE, pages * 4096);
      assert.ok(base !== undefined && now.some((b, i) => b !== base[i]), "a clone did not run");
    }
    const ids = clones.map((c) => {
      const loc = c.machine.acpi?.vmgenid;
      assert.ok(loc !== undefined && c.vmGenId !== undefined);
      assert.equal(hex(readVmGenId(c.machine.memory, loc)), hex(c.vmGenId));
      return hex(c.vmGenId);
    });
    assert.equal(new Set(ids).size, 4, `generation ids repeat: ${ids.join(" ")}`);
    // Each on its own overlay over the checkpoint's disk.
    const chains = await Promise.all(clones.map((c) => c.machine.disk("vda")?.describe()));
    const tops = chains.map((d) => d?.layers[0]?.path);
    assert.equal(new Set(tops).size, 4, `clones share an overlay: ${tops.join(" ")}`);
    assert.ok(chains.every((d) => d?.layers[1]?.path === disk), "an overlay is not over the disk");
  } finally {
    const storePath = clones[0]?.pageStore?.path;
    for (const c of clones) await c[Symbol.asyncDispose]();
    if (storePath !== undefined) {
      assert.throws(
        () => Deno.statSync(storePath),
        Deno.errors.NotFound,
        "the store outlived its clones",
      );
    }
  }
  await Deno.remove(dir, { recursive: true });
});

Deno.test("a restored guest is told its new generation id by the vmgenid interrupt (needs /dev/kvm)", async () => {
  const dir = await Deno.makeTempDir({ prefix: "vmkit-clone-genid-" });
  const path = `${dir}/vm.ckpt`;
  const serial = `${dir}/serial.log`;
  await Deno.writeTextFile(serial, "");
  {
    await using m = await Machine.create({
      memMiB: 32,
      vcpus: 1,
      kernel: await guest("guest-vmlinux.elf"),
      cmdline: "mode=vmgenid",
      devices: defaultDeviceSpecs({ serialOut: { path: serial }, serialIn: false, memMiB: 32 }),
    });
    await m.start();
    await waitForText(serial, /^vmgenid ready$/m);
    using cp = await Checkpointer.create(new MachineTarget(m));
    await (await cp.checkpoint({ path })).done;
  }
  for (let i = 0; i < 2; i++) {
    const out = `${dir}/clone${i}.log`;
    await Deno.writeTextFile(out, "");
    await using c = await restoreMachine(path, {
      deviceConfig: { com1: { out: "file", path: out, base: 0x3f8, irq: 4, input: false } },
    });
    assert.ok(c.vmGenId !== undefined);
    await c.machine.start();
    await waitForText(out, new RegExp(`^vmgenid notified 1 id ${hex(c.vmGenId)}$`, "m"));
  }
  await Deno.remove(dir, { recursive: true });
});
