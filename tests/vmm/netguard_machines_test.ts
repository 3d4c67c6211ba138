import assert from "node:assert/strict";
import { buildFrame, NetGuard, parseConfig } from "../../netguard/mod.ts";
import { spinningMachine } from "./net_flood.ts";

const SYN = buildFrame({
  src: "198.51.100.9",
  dst: "10.0.0.2",
  proto: "tcp",
  dport: 80,
  flags: 0x02,
});

function ticks(text: string): number {
  return [...text.matchAll(/^tick \d+$/gm)].length;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

Deno.test("netguard pauses the real Machine under a SYN flood while a second Machine keeps running, then resumes it (needs /dev/kvm)", async () => {
  const dir = await Deno.makeTempDir();
  const victim = await spinningMachine(`${dir}/victim`);
  const bystander = await spinningMachine(`${dir}/bystander`);
  const read = async (name: string) =>
    ticks(await Deno.readTextFile(`${dir}/${name}`).catch(() => ""));
  try {
    const g = new NetGuard(parseConfig({
      thresholds: { synPps: 1000 },
      detector: { adaptive: { enabled: false } },
      policy: { holdMs: 300 },
    }));
    g.registerVm("victim", victim);
    g.registerVm("bystander", bystander);
    const start = Date.now();
    for (let t = start; t < start + 500; t += 0.25) g.frame("victim", "inbound", SYN, t);
    await g.settled();
    assert.deepEqual(g.suspended(), ["victim"]);
    assert.equal(victim.state, "Paused");
    assert.equal(bystander.state, "Running");

    // While the victim is paused, wait for the bystander to print its next tick
    // (guest time has passed: ~1 s on a quiet host, bounded for a loaded one);
    // the victim must print nothing meanwhile.
    const v0 = await read("victim");
    const b0 = await read("bystander");
    const tickBy = performance.now() + 30_000;
    while ((await read("bystander")) <= b0 && performance.now() < tickBy) await sleep(100);
    assert.ok((await read("bystander")) > b0, "the other Machine stopped making progress");
    assert.equal(await read("victim"), v0, "the suspended Machine printed ticks");

    g.advance(Date.now() + 2_000); // the attack is over and the hold time has passed
    await g.settled();
    assert.deepEqual(g.suspended(), []);
    assert.equal(victim.state, "Running");
    const v1 = await read("victim");
    const end = performance.now() + 30_000;
    while ((await read("victim")) <= v1 && performance.now() < end) await sleep(100);
    assert.ok((await read("victim")) > v1, "the resumed Machine did not run again");
  } finally {
    await victim[Symbol.asyncDispose]();
    await bystander[Symbol.asyncDispose]();
    await Deno.remove(dir, { recursive: true });
  }
});
