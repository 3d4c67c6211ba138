import assert from "node:assert/strict";
import { NetStat } from "../../vmm/devices/virtio/net_format.ts";
import { VmNetWatch } from "../../vmm/net_guard.ts";
import { sleep, waitFor } from "../netguard/helpers.ts";
import { decisions, udpFlood, udpFloodGuard } from "./net_flood.ts";
import { namespace, type NetVm, netVm, pings, tapStat, waitText } from "./net_vm.ts";

Deno.test("a guest with its own virtio-net driver answers ARP and ping through its TAP; both directions are counted alike by guest, device and TAP (root, netns, /dev/kvm)", async () => {
  const ns = await namespace();
  const dir = await Deno.makeTempDir({ prefix: "h8-netvm-" });
  const vms: NetVm[] = [];
  try {
    const a = await netVm(ns, dir, "10.96.0");
    vms.push(a);
    // Small receive buffers: a 1400-byte echo request spans six of them (MRG_RXBUF).
    const b = await netVm(ns, dir, "10.96.1", "net.buf=256 net.qsize=128");
    vms.push(b);
    for (const vm of [a, b]) {
      assert.equal(await pings(ns, vm.ip, 5), 5, `ping ${vm.ip}`);
      assert.equal(await pings(ns, vm.ip, 3, 1400), 3, `ping -s 1400 ${vm.ip}`);
      vm.command("stats");
      const m = await waitText(
        vm,
        /net stats rx=(\d+) tx=(\d+) arp=(\d+) icmp=(\d+) other=(\d+) merged=(\d+) bad=(\d+)/,
        10_000,
      );
      assert.ok(m !== null, await vm.log());
      const [rx, tx, arp, icmp, , merged, bad] = m.slice(1).map(Number);
      assert.equal(icmp, 8);
      assert.ok((arp ?? 0) >= 1, "answered ARP");
      assert.equal(bad, 0);
      if (vm === b) assert.ok((merged ?? 0) >= 3, `merged frames ${merged}`);
      const net = vm.machine.net("eth0");
      assert.ok(net !== undefined);
      // What the guest sent is what the device wrote is what the TAP received, and back.
      await sleep(100);
      const devTx = net.stats.get(NetStat.TX_FRAMES);
      const devRx = net.stats.get(NetStat.RX_FRAMES);
      assert.equal(devTx, tx, "guest tx = device tx");
      assert.equal(devRx, rx, "guest rx = device rx");
      assert.equal(await tapStat(ns, vm.tap, "rx_packets"), devTx, "TAP rx = device tx");
      assert.equal(await tapStat(ns, vm.tap, "tx_packets"), devRx, "TAP tx = device rx");
      assert.ok(devTx >= 9 && devRx >= 9, `device tx ${devTx} rx ${devRx}`);
    }
  } finally {
    for (const vm of vms) await vm.machine[Symbol.asyncDispose]();
    await ns.delete();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("an hping3 flood into VM A's TAP makes netguard pause VM A while VM B keeps answering pings, then resume A, which answers again (root, netns, /dev/kvm)", async () => {
  const ns = await namespace();
  const dir = await Deno.makeTempDir({ prefix: "h8-netvm-" });
  const vms: NetVm[] = [];
  const watches: VmNetWatch[] = [];
  try {
    const a = await netVm(ns, dir, "10.97.0");
    vms.push(a);
    const b = await netVm(ns, dir, "10.97.1");
    vms.push(b);
    assert.equal(await pings(ns, a.ip, 2), 2);
    assert.equal(await pings(ns, b.ip, 2), 2);
    const { guard, events } = udpFloodGuard();
    for (const [id, vm] of [["A", a], ["B", b]] as const) {
      watches.push(
        await VmNetWatch.start(guard, id, vm.machine, [{
          id: "eth0",
          tap: vm.tap,
          netns: ns.name,
        }]),
      );
    }
    // A bounded UDP flood (3000 frames, ~5000/s) at A; B is pinged meanwhile.
    const flood = udpFlood(ns, a.ip);
    assert.ok(
      await waitFor(() => a.machine.state === "Paused", 10_000),
      `A never paused: ${decisions(events)}`,
    );
    assert.equal(await pings(ns, b.ip, 5), 5, "B answers while A is suspended");
    assert.equal(b.machine.state, "Running");
    await flood;
    assert.ok(
      await waitFor(() => a.machine.state === "Running", 10_000),
      `A never resumed: ${decisions(events)}`,
    );
    await guard.settled();
    assert.deepEqual(decisions(events), ["suspend:udp_flood:A", "resume:udp_flood:A"]);
    assert.ok(await pings(ns, a.ip, 3) >= 2, "A answers again after its resume");
    const netA = a.machine.net("eth0");
    assert.ok(
      (netA?.stats.get(NetStat.RX_FRAMES) ?? 0) > 100,
      "A's device took frames of the flood",
    );
  } finally {
    for (const w of watches) await w.close();
    for (const vm of vms) await vm.machine[Symbol.asyncDispose]();
    await ns.delete();
    await Deno.remove(dir, { recursive: true });
  }
});
