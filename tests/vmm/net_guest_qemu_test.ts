/**
 * The suite's guest virtio-net driver (tests/guests/virtio_net.c) against a
 * device nobody on the team wrote: QEMU's virtio-net-device on a microvm
 * (TCG, modern virtio-mmio). If this passes and a vmkit test fails, the bug
 * is in vmkit's device, not in the guest.
 *
 * @module
 */

import assert from "node:assert/strict";
import { Netns, sleep, waitFor } from "../netguard/helpers.ts";
import { guest } from "./run_helpers.ts";

/** microvm with ioapic2=off: eight virtio-mmio transports from 0xfeb00000, 512 bytes apart, GSIs 5.. */
const MICROVM_TRANSPORTS = Array.from(
  { length: 8 },
  (_, i) => `virtio_mmio.device=512@0x${(0xfeb0_0000 + i * 512).toString(16)}:${5 + i}`,
).join(" ");

/** Lines the guest printed so far, read from QEMU's stdout. */
class SerialLog {
  text = "";
  readonly done: Promise<void>;
  constructor(stream: ReadableStream<Uint8Array>) {
    this.done = (async () => {
      const dec = new TextDecoder();
      for await (const chunk of stream) this.text += dec.decode(chunk);
    })();
  }
}

/** Kills `child` unless it has exited already. */
function kill(child: Deno.ChildProcess): void {
  try {
    child.kill("SIGKILL");
  } catch (err) {
    if (!(err instanceof TypeError)) throw err;
  }
}

async function pingQemuGuest(
  extraCmdline: string,
  pingSizes: number[],
  merged: boolean,
): Promise<void> {
  const ns = await Netns.create("q");
  const tap = `h8qt${Deno.pid % 100000}`.slice(0, 15);
  const child = new Deno.Command("ip", {
    args: [
      "netns",
      "exec",
      ns.name,
      "qemu-system-x86_64",
      ...["-M", "microvm,ioapic2=off,x-option-roms=off,rtc=off", "-accel", "tcg", "-m", "32"],
      ...["-nodefaults", "-no-user-config", "-display", "none", "-serial", "stdio"],
      ...["-global", "virtio-mmio.force-legacy=false"],
      ...["-kernel", guest("guest-pvh.elf")],
      ...["-append", `mode=net net.ip=10.92.0.2 ${extraCmdline} ${MICROVM_TRANSPORTS}`],
      ...["-netdev", `tap,id=n0,ifname=${tap},script=no,downscript=no`],
      ...["-device", "virtio-net-device,netdev=n0,mac=52:54:00:92:00:02"],
    ],
    stdin: "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const log = new SerialLog(child.stdout);
  const errLog = new SerialLog(child.stderr);
  const writer = child.stdin.getWriter();
  try {
    assert.ok(
      await waitFor(() => /net up .*\n/.test(log.text), 30_000),
      `guest did not come up: ${log.text} ${errLog.text}`,
    );
    assert.match(log.text, /net up mac 52:54:00:92:00:02 ip 10\.92\.0\.2 /);
    await ns.ip(`link set ${tap} up`);
    await ns.ip(`addr add 10.92.0.1/24 dev ${tap}`);
    let sent = 0;
    for (const size of pingSizes) {
      const r = await ns.exec(
        ["ping", "-c", "3", "-i", "0.2", "-W", "3", "-s", String(size), "10.92.0.2"],
        true,
      );
      assert.match(r.stdout, /3 packets transmitted, 3 received/, r.stdout);
      sent += 3;
    }
    await writer.write(new TextEncoder().encode("stats\n"));
    assert.ok(await waitFor(() => /net stats .* bad=\d+\n/.test(log.text), 10_000), log.text);
    const m = /net stats rx=(\d+) tx=(\d+) arp=(\d+) icmp=(\d+) other=(\d+) merged=(\d+) bad=(\d+)/
      .exec(log.text);
    assert.ok(m !== null, log.text);
    assert.equal(Number(m[4]), sent, "echo replies");
    assert.ok(Number(m[3]) >= 1, "answered ARP");
    assert.equal(Number(m[7]), 0, "no malformed frames or headers");
    // Each 1400-byte echo request spans six 256-byte buffers when merging.
    if (merged) assert.ok(Number(m[6]) >= 3, `merged frames: ${m[6]}`);
    else assert.equal(Number(m[6]), 0);
  } finally {
    await writer.close().catch((e: unknown) => {
      if (!(e instanceof Deno.errors.BrokenPipe)) throw e;
    });
    kill(child);
    await child.status;
    await log.done;
    await errLog.done;
    await sleep(10);
    await ns.delete();
  }
}

Deno.test("the guest net driver answers ARP and ping through QEMU's virtio-net with mergeable buffers spanning frames (root, netns, qemu)", () =>
  pingQemuGuest("net.buf=256 net.qsize=128", [56, 1400], true));

Deno.test("the guest net driver answers ping through QEMU's virtio-net without MRG_RXBUF (root, netns, qemu)", () =>
  pingQemuGuest("net.nomrg net.qsize=16", [56, 1400], false));
