/**
 * netguard on a VM's own NICs (seed US8266275B2 on real VM traffic): every
 * TAP of the VM is watched through an AF_PACKET socket opened from the VMM's
 * main thread (in the TAP's namespace), each frame counted for that VM —
 * inbound when the host sent it to the TAP (`PACKET_OUTGOING`), outbound
 * when the VM wrote it — and netguard's suspend decision pauses the VM
 * (a {@link Machine} is a `PausableVm`), its resume decision resumes it.
 *
 * netguard's `drop` and `rate_limit` decisions are enforced by the NIC's own
 * device: the watch hands each change of the interface's block table
 * (netguard's `enforceAt`) to the device through shared memory
 * (`devices/virtio/net_filter.ts`), and the device's I/O Worker drops the
 * blocked packet classes, or limits them to `policy.rateLimitPps`, in the
 * guest's receive direction (inbound) and transmit direction (outbound),
 * counting them (`rxBlocked`, `rxLimited`, `txBlocked`, `txLimited`). With no
 * block in force the device pays one atomic load per batch. A NIC whose VM
 * gives no such device (a `PausableVm` that is not a `Machine`) cannot
 * enforce them, and {@link VmNetWatch.start} refuses a VM whose actions ask
 * for them.
 *
 * The AF_PACKET watch stays the detector, and enforcement does not blind it:
 * inbound frames reach the socket before the device reads the TAP, so a
 * frame the device drops was seen; outbound frames the device drops never
 * reach the TAP, so the device keeps their headers in a ring the watch
 * drains into netguard as that VM's outbound traffic. So netguard sees the
 * whole attack, dropped or not, and lifts the block only when it ends.
 *
 * Why AF_PACKET and not frames fed by the device: the socket sees a flood
 * even when the device takes none of it (the guest paused by netguard
 * itself, its receive ring full, its rate limiter closed), which is when
 * netguard must tell that the attack goes on; and it adds no code and no
 * copy to the device's own path. What it costs the device path (the kernel
 * clones each frame for the socket; the main thread parses it) is measured
 * by `bench/net_bench.ts` and written down in `vmm/devices/virtio/NET.md`.
 *
 * @example
 * ```ts ignore
 * // ignore: needs a started Machine with a TAP, and root.
 * import { defaultConfig, NetGuard } from "../netguard/mod.ts";
 * import { VmNetWatch } from "./net_guard.ts";
 * const guard = new NetGuard(defaultConfig());
 * guard.onEvent((e) => console.error(JSON.stringify(e)));
 * // machine: a started Machine whose NIC "eth0" is TAP "vmtap0"
 * await using watch = await VmNetWatch.start(guard, "web", machine, [{ id: "eth0", tap: "vmtap0" }]);
 * ```
 *
 * @module
 */

import {
  blocksTraffic,
  type Direction,
  LINKTYPE_ETHERNET,
  LiveReader,
  type NetGuard,
  PACKET_OUTGOING,
  type PausableVm,
  type VmOptions,
} from "../netguard/mod.ts";
import { NET_INBOUND, NET_OUTBOUND, type NetBlockPort } from "./devices/virtio/net_filter.ts";
import type { NetConfig } from "./io_config.ts";

/** A NIC whose device enforces netguard's blocks (a Machine's `NetInterface` is one). */
export interface GuardedNic {
  /** Where the device takes its blocks from. */
  readonly blocks: NetBlockPort;
}

/**
 * A VM netguard can act on; `net(id)` gives its NIC `id` when the VM's own
 * device can enforce netguard's blocks (a {@link Machine} has it).
 */
export interface GuardedVm extends PausableVm {
  /** NIC `id`, if the VM has it. */
  net?(id: string): GuardedNic | undefined;
}

/** Raised when a VM's NICs cannot do what its netguard policy asks. */
export class VmNetWatchError extends Error {
  /** Creates the error. */
  constructor(message: string) {
    super(message);
    this.name = "VmNetWatchError";
  }
}

/** Options of {@link VmNetWatch.start}. */
export interface VmNetWatchOptions extends VmOptions {
  /** Bytes of each frame copied to netguard (default 256: every header it parses, as the device). */
  snaplen?: number;
  /** Longest wait in one read, ms (default 20): also how often netguard's clock advances. */
  pollMs?: number;
  /** Called when watching a TAP fails (e.g. it was deleted); default: one line on stderr. */
  onError?: (tap: string, err: Error) => void;
}

/** One watched TAP: its reader and, when its device enforces blocks, its port. */
interface Watched {
  reader: LiveReader;
  port: NetBlockPort | null;
  detach: () => void;
}

/** The NICs of one VM under netguard's watch. */
export class VmNetWatch implements AsyncDisposable {
  readonly #guard: NetGuard;
  readonly #watched: Watched[];
  readonly #loops: Promise<void>[];
  #closed = false;
  /** Frames seen per TAP (by the AF_PACKET watch). */
  readonly frames: Map<string, number>;
  /** Outbound frames per TAP that the device dropped and handed to netguard. */
  readonly dropped: Map<string, number>;

  private constructor(
    guard: NetGuard,
    readonly vmId: string,
    watched: Watched[],
    onError: (tap: string, err: Error) => void,
  ) {
    this.#guard = guard;
    this.#watched = watched;
    this.frames = new Map(watched.map((w) => [w.reader.name, 0]));
    this.dropped = new Map(watched.map((w) => [w.reader.name, 0]));
    this.#loops = watched.map((w) =>
      this.#watch(w).catch((err: unknown) =>
        onError(w.reader.name, err instanceof Error ? err : new Error(String(err)))
      )
    );
  }

  /**
   * Registers `vm` with `guard` as `vmId`, watches the TAP of each of
   * `nets` (in `net.netns` when set) and has each NIC's device
   * (`vm.net(net.id)`) enforce netguard's blocks of that TAP.
   *
   * @throws {VmNetWatchError} when the VM's actions drop or rate-limit and a NIC cannot enforce it.
   * @throws {VmRegistryError} when `vmId` is already registered with a VM.
   * @throws {NativeNetError} when a TAP cannot be watched (no such interface, not root).
   */
  static async start(
    guard: NetGuard,
    vmId: string,
    vm: GuardedVm,
    nets: readonly NetConfig[],
    options: VmNetWatchOptions = {},
  ): Promise<VmNetWatch> {
    const mustEnforce = blocksTraffic(
      guard.config.vms.find((v) => v.id === vmId)?.actions ?? guard.config.policy.actions,
    );
    const ports = nets.map((net) => vm.net?.(net.id)?.blocks ?? null);
    const missing = nets.filter((_, i) => ports[i] === null).map((n) => n.id);
    if (mustEnforce && missing.length > 0) {
      throw new VmNetWatchError(
        `netguard: VM '${vmId}' has drop or rate_limit actions, but its NIC(s) ${
          missing.join(", ")
        } have no vmkit virtio-net device to enforce them; use alert or suspend actions for it`,
      );
    }
    const watched: Watched[] = [];
    let registered = false;
    try {
      for (const [i, net] of nets.entries()) {
        const reader = await LiveReader.openInterface(net.tap, {
          ...(net.netns === undefined ? {} : { netns: net.netns }),
          snaplen: options.snaplen ?? 256,
          pollMs: options.pollMs ?? 20,
        });
        const port = ports[i] ?? null;
        watched.push({ reader, port, detach: () => {} });
      }
      const vmOptions: VmOptions = {};
      if (options.priority !== undefined) vmOptions.priority = options.priority;
      if (options.addresses !== undefined) vmOptions.addresses = options.addresses;
      if (options.protected !== undefined) vmOptions.protected = options.protected;
      guard.registerVm(vmId, vm, vmOptions);
      registered = true;
      for (const w of watched) {
        const port = w.port;
        if (port === null) continue;
        w.detach = guard.enforceAt(vmId, w.reader.name, (dir: Direction, classes, rate) => {
          port.publish(dir === "inbound" ? NET_INBOUND : NET_OUTBOUND, classes, rate);
        });
      }
    } catch (err) {
      for (const w of watched) {
        w.detach();
        w.port?.clear();
        await w.reader.close();
      }
      if (registered) await guard.unregisterVm(vmId);
      throw err;
    }
    const onError = options.onError ??
      ((tap: string, err: Error) =>
        console.error(`netguard: stopped watching TAP ${tap} of VM ${vmId}: ${err.message}`));
    return new VmNetWatch(guard, vmId, watched, onError);
  }

  #watch(w: Watched): Promise<void> {
    const guard = this.#guard;
    const vmId = this.vmId;
    const { reader, port } = w;
    const tap = reader.name;
    let seen = 0;
    let handed = 0;
    const onDropped = (buf: Uint8Array, off: number, len: number, wire: number, ts: number) =>
      void guard.ingest(vmId, "outbound", tap, buf, off, len, wire, ts, LINKTYPE_ETHERNET);
    return reader.run(
      (buf, off, len, wire, ts, pktType) => {
        seen++;
        // The host sending to the TAP is the VM receiving; anything else the VM sent.
        const dir = pktType === PACKET_OUTGOING ? "inbound" : "outbound";
        guard.ingest(vmId, dir, tap, buf, off, len, wire, ts, LINKTYPE_ETHERNET);
      },
      (now) => {
        // What the device dropped going out never reached the TAP: netguard sees it here.
        if (port !== null) handed += port.drain(onDropped);
        this.frames.set(tap, seen);
        this.dropped.set(tap, handed);
        guard.advance(now);
      },
    );
  }

  /**
   * Stops watching, lifts the blocks the NICs enforce, and unregisters the
   * VM (netguard resumes it first if it holds it suspended).
   */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    for (const w of this.#watched) {
      w.detach();
      w.port?.clear();
      await w.reader.close();
    }
    await Promise.all(this.#loops);
    await this.#guard.settled();
    await this.#guard.unregisterVm(this.vmId);
  }

  /** Closes the watch; see {@link VmNetWatch.close}. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}
