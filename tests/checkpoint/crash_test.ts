/**
 * kill -9 of the VMM at seeded random points while a checkpoint is being
 * written over a previous one at the same path: the previous one still
 * restores, the partial file is refused, and the VM's disk chain checks
 * clean. The seed is printed; set VMKIT_CRASH_SEED to replay a run.
 */
import assert from "node:assert/strict";
import { openCheckpoint } from "../../checkpoint/reader.ts";
import { CheckpointError } from "../../checkpoint/errors.ts";
import { restoreMachine } from "../../vmm/checkpoint.ts";
import { prng } from "../../netguard/synth.ts";
import { sleep } from "./helpers.ts";

const CHILD = new URL("./crash_child.ts", import.meta.url).pathname;

async function qemuImgCheck(path: string): Promise<{ code: number; out: string }> {
  const o = await new Deno.Command("qemu-img", { args: ["check", path] }).output();
  return {
    code: o.code,
    out: new TextDecoder().decode(o.stdout) + new TextDecoder().decode(o.stderr),
  };
}

/** Reads JSON lines from the child until `pred` matches one. */
async function until(
  lines: AsyncIterator<string>,
  pred: (o: Record<string, unknown>) => boolean,
): Promise<Record<string, unknown>> {
  for (;;) {
    const { value, done } = await lines.next();
    if (done) throw new Error("the child ended early");
    const o = JSON.parse(value) as Record<string, unknown>;
    if (pred(o)) return o;
  }
}

async function* lineReader(stream: ReadableStream<Uint8Array>): AsyncGenerator<string> {
  let buf = "";
  for await (const chunk of stream.pipeThrough(new TextDecoderStream())) {
    buf += chunk;
    let i;
    while ((i = buf.indexOf("\n")) >= 0) {
      yield buf.slice(0, i);
      buf = buf.slice(i + 1);
    }
  }
}

/** kill -9, unless it exited already. */
function killQuietly(child: Deno.ChildProcess): void {
  try {
    child.kill("SIGKILL");
  } catch (err) {
    if (!(err instanceof TypeError)) throw err; // exited already
  }
}

const seed = Number(Deno.env.get("VMKIT_CRASH_SEED") ?? (Date.now() % 1_000_000));

for (const policy of ["keep-parent", "copy-parent"]) {
  Deno.test(`kill -9 during a ${policy} background save leaves the previous checkpoint restorable, the partial refused and the disks clean (seed ${seed}; needs /dev/kvm)`, async () => {
    console.log(`crash test seed ${seed} (VMKIT_CRASH_SEED=${seed} replays it)`);
    const rand = prng(seed + (policy === "copy-parent" ? 1 : 0));
    for (let round = 0; round < 2; round++) {
      const dir = await Deno.makeTempDir({ prefix: `vmkit-crash-${policy}-` });
      const child = new Deno.Command(Deno.execPath(), {
        args: ["run", "-A", CHILD, dir, policy],
        stdout: "piped",
        stderr: "inherit",
      }).spawn();
      const lines = lineReader(child.stdout);
      let a: string;
      let b = "";
      let delay: number;
      try {
        const first = await until(lines, (o) => typeof o.a === "string");
        a = first.a as string;
        b = (await until(lines, (o) => o.b === "started")).id as string;
        // Somewhere in the first half of the background save (as long as A's was).
        delay = Math.floor(rand() * Number(first.saveMs) * 0.5);
        await sleep(delay);
      } finally {
        killQuietly(child);
      }
      await child.status;
      const path = `${dir}/vm.ckpt`;
      const what = `round ${round}, killed ${delay} ms into the save`;
      // PATH is A, or B when B finished before the kill; never something half written.
      {
        using chain = await openCheckpoint(path);
        const id = chain.top.id;
        assert.ok(id === a || id === b, `${what}: ${path} is neither A nor B`);
        if (id !== a) console.log(`${what}: B completed first`);
      }
      // A temporary file is refused, unless the kill came after its last byte
      // (then it is B, complete, only not yet renamed).
      for (const e of Deno.readDirSync(dir)) {
        if (!e.name.includes(".partial-")) continue;
        try {
          using c = await openCheckpoint(`${dir}/${e.name}`);
          assert.equal(c.top.id, b, `${what}: ${e.name} opens as another checkpoint`);
          console.log(`${what}: ${e.name} was complete, not yet renamed`);
        } catch (err) {
          if (!(err instanceof CheckpointError)) throw err;
        }
      }
      // Every qcow2 image the VM was using, and every complete copy, has no corruption (a copy
      // being written is under a temporary name, garbage of the failed checkpoint). Leaked
      // clusters are allowed: a qcow2 writer killed between allocating a cluster and linking
      // it leaks it (QEMU's too, without lazy refcounts); qemu-img check exits 3 for that,
      // "waste of disk space, but no harm to data".
      for (const e of Deno.readDirSync(dir)) {
        if (!e.name.endsWith(".qcow2")) continue;
        const r = await qemuImgCheck(`${dir}/${e.name}`);
        assert.ok(r.code === 0 || r.code === 3, `${what}: qemu-img check ${e.name}:\n${r.out}`);
        if (r.code === 3) console.log(`${what}: ${e.name} has leaked clusters (no harm to data)`);
      }
      // The complete checkpoint restores and runs.
      {
        await using r = await restoreMachine(path, { vmGenId: false });
        await r.machine.start();
        await sleep(200);
        assert.equal(r.machine.state, "Running", what);
      }
      await Deno.remove(dir, { recursive: true });
    }
  });
}
