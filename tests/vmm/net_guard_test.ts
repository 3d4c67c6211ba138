import assert from "node:assert/strict";
import { Tap } from "../../native/tap.ts";
import type { Machine } from "../../vmm/machine.ts";
import { VmNetWatch, VmNetWatchError } from "../../vmm/net_guard.ts";
import { Netns, sleep, waitFor } from "../netguard/helpers.ts";
import { decisions, spinningMachine, udpFlood, udpFloodGuard } from "./net_flood.ts";

Deno.test("netguard watching each VM's TAP pauses VM A under an hping3 flood into A's TAP while VM B keeps running, then resumes A (root, netns, /dev/kvm)", async () => {
  const ns = await Netns.create("g");
  const dir = await Deno.makeTempDir({ prefix: "h8-netguard-" });
  const tag = Deno.pid % 100000;
  const tapA = `h8ga${tag}`;
  const tapB = `h8gb${tag}`;
  // The TAPs' device ends stay open (as a VM's net device holds them) but unread.
  const taps: Tap[] = [];
  const machines: Machine[] = [];
  const watches: VmNetWatch[] = [];
  try {
    taps.push(await Tap.open(tapA, { netns: ns.name }), await Tap.open(tapB, { netns: ns.name }));
    for (const [t, net] of [[tapA, "10.94.0"], [tapB, "10.94.1"]] as const) {
      await ns.ip(`link set ${t} up`);
      await ns.ip(`addr add ${net}.1/24 dev ${t}`);
      await ns.ip(`neigh add ${net}.2 lladdr 02:00:00:00:94:02 dev ${t}`);
    }
    const a = await spinningMachine(`${dir}/a`);
    machines.push(a);
    const b = await spinningMachine(`${dir}/b`);
    machines.push(b);
    const { guard, events } = udpFloodGuard();
    watches.push(
      await VmNetWatch.start(guard, "A", a, [{ id: "eth0", tap: tapA, netns: ns.name }]),
    );
    watches.push(
      await VmNetWatch.start(guard, "B", b, [{ id: "eth0", tap: tapB, netns: ns.name }]),
    );

    // Benign traffic to B throughout; a bounded UDP flood (3000 frames, ~5000/s) to A.
    const benign = ns.exec(["ping", "-c", "20", "-i", "0.1", "-W", "1", "10.94.1.2"], true);
    const flood = udpFlood(ns, "10.94.0.2");
    assert.ok(
      await waitFor(() => a.state === "Paused", 10_000),
      `A never paused: ${decisions(events)}`,
    );
    assert.equal(b.state, "Running", "B is not touched");
    await flood;
    assert.ok(
      await waitFor(() => a.state === "Running", 10_000),
      `A never resumed: ${decisions(events)}`,
    );
    await benign;
    await guard.settled();
    assert.deepEqual(decisions(events), ["suspend:udp_flood:A", "resume:udp_flood:A"]);
    assert.ok(events.every((e) => e.event !== "decision" || e.iface === tapA), "on A's TAP");
    assert.equal(b.state, "Running");
    const seenA = watches[0]?.frames.get(tapA) ?? 0;
    const seenB = watches[1]?.frames.get(tapB) ?? 0;
    assert.ok(seenA >= 2900, `netguard saw ${seenA} frames on A's TAP`);
    assert.ok(seenB >= 15 && seenB < 100, `netguard saw ${seenB} frames on B's TAP`);
    // B kept making progress (its serial shows ticks) all along.
    const ticks = (await Deno.readTextFile(`${dir}/b`)).match(/^tick \d+$/gm)?.length ?? 0;
    assert.ok(ticks >= 1, "B ran");
  } finally {
    for (const w of watches) await w.close();
    for (const m of machines) await m[Symbol.asyncDispose]();
    for (const t of taps) t.close();
    await sleep(10);
    await ns.delete();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a VM whose actions drop or rate-limit is refused when a NIC has no device to enforce it, before anything is opened", async () => {
  const { guard } = udpFloodGuard({ actions: { inbound: { udp_flood: "drop" } } });
  const vm = { pause: () => Promise.resolve(), resume: () => Promise.resolve() };
  await assert.rejects(
    VmNetWatch.start(guard, "P", vm, [{ id: "eth0", tap: "h12-no-such" }]),
    (e: Error) =>
      e instanceof VmNetWatchError && /eth0 have no vmkit virtio-net device/.test(e.message),
  );
  assert.deepEqual(guard.suspended(), []);
  // Suspend-only actions need no enforcer: the same VM is accepted (and its TAP then opened).
  const { guard: g2 } = udpFloodGuard();
  await assert.rejects(
    VmNetWatch.start(g2, "P", vm, [{ id: "eth0", tap: "h12-no-such" }]),
    (e: Error) => !(e instanceof VmNetWatchError),
  );
});
