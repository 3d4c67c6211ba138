/**
 * netguard on a VM's own NICs (seed US8266275B2 on real VM traffic): every
 * TAP of the VM is watched through an AF_PACKET socket opened from the VMM's
 * main thread (in the TAP's namespace), each frame counted for that VM —
 * inbound when the host sent it to the TAP (`PACKET_OUTGOING`), outbound
 * when the VM wrote it — and netguard's suspend decision pauses the VM
 * (a {@link Machine} is a `PausableVm`), its resume decision resumes it.
 *
 * Why AF_PACKET and not frames fed by the device: the socket sees a flood
 * even when the device takes none of it (the guest paused by netguard
 * itself, its receive ring full, its rate limiter closed), which is when
 * netguard must tell that the attack goes on; and it adds no code and no
 * copy to the device's own path. What it costs the device path (the kernel
 * clones each frame for the socket; the main thread parses it) is measured
 * by `bench/net_bench.ts` and written down in `vmm/devices/virtio/NET.md`.
 * netguard's `drop` and `rate_limit` actions are reported as decisions but
 * cannot be enforced by a passive socket: for a hard limit use the device's
 * own rate limiter (`NetConfig.rxRateLimiter`/`txRateLimiter`).
 *
 * @example
 * ```ts ignore
 * import { defaultConfig, NetGuard } from "../netguard/mod.ts";
 * import { VmNetWatch } from "./net_guard.ts";
 * const guard = new NetGuard(defaultConfig());
 * guard.onEvent((e) => console.error(JSON.stringify(e)));
 * // machine: a started Machine whose NIC is TAP "vmtap0"
 * await using watch = await VmNetWatch.start(guard, "web", machine, [{ id: "eth0", tap: "vmtap0" }]);
 * ```
 *
 * @module
 */

import {
  LINKTYPE_ETHERNET,
  LiveReader,
  type NetGuard,
  PACKET_OUTGOING,
  type PausableVm,
  type VmOptions,
} from "../netguard/mod.ts";
import type { NetConfig } from "./io_config.ts";

/** Options of {@link VmNetWatch.start}. */
export interface VmNetWatchOptions extends VmOptions {
  /** Bytes of each frame copied to netguard (default 256: every header it parses). */
  snaplen?: number;
  /** Longest wait in one read, ms (default 20): also how often netguard's clock advances. */
  pollMs?: number;
  /** Called when watching a TAP fails (e.g. it was deleted); default: one line on stderr. */
  onError?: (tap: string, err: Error) => void;
}

/** The NICs of one VM under netguard's watch. */
export class VmNetWatch implements AsyncDisposable {
  readonly #guard: NetGuard;
  readonly #readers: LiveReader[];
  readonly #loops: Promise<void>[];
  #closed = false;
  /** Frames seen per TAP. */
  readonly frames: Map<string, number>;

  private constructor(
    guard: NetGuard,
    readonly vmId: string,
    readers: LiveReader[],
    frames: Map<string, number>,
    onError: (tap: string, err: Error) => void,
  ) {
    this.#guard = guard;
    this.#readers = readers;
    this.frames = frames;
    this.#loops = readers.map((r) =>
      this.#watch(r).catch((err: unknown) =>
        onError(r.name, err instanceof Error ? err : new Error(String(err)))
      )
    );
  }

  /**
   * Registers `vm` with `guard` as `vmId` and watches the TAP of each of
   * `nets` (in `net.netns` when set).
   *
   * @throws {VmRegistryError} when `vmId` is already registered with a VM.
   * @throws {NativeNetError} when a TAP cannot be watched (no such interface, not root).
   */
  static async start(
    guard: NetGuard,
    vmId: string,
    vm: PausableVm,
    nets: readonly NetConfig[],
    options: VmNetWatchOptions = {},
  ): Promise<VmNetWatch> {
    const readers: LiveReader[] = [];
    const frames = new Map<string, number>();
    try {
      for (const net of nets) {
        readers.push(
          await LiveReader.openInterface(net.tap, {
            ...(net.netns === undefined ? {} : { netns: net.netns }),
            snaplen: options.snaplen ?? 256,
            pollMs: options.pollMs ?? 20,
          }),
        );
        frames.set(net.tap, 0);
      }
      const vmOptions: VmOptions = {};
      if (options.priority !== undefined) vmOptions.priority = options.priority;
      if (options.addresses !== undefined) vmOptions.addresses = options.addresses;
      if (options.protected !== undefined) vmOptions.protected = options.protected;
      guard.registerVm(vmId, vm, vmOptions);
    } catch (err) {
      for (const r of readers) await r.close();
      throw err;
    }
    const onError = options.onError ??
      ((tap: string, err: Error) =>
        console.error(`netguard: stopped watching TAP ${tap} of VM ${vmId}: ${err.message}`));
    return new VmNetWatch(guard, vmId, readers, frames, onError);
  }

  #watch(reader: LiveReader): Promise<void> {
    const guard = this.#guard;
    const vmId = this.vmId;
    const tap = reader.name;
    let seen = 0;
    return reader.run(
      (buf, off, len, wire, ts, pktType) => {
        seen++;
        // The host sending to the TAP is the VM receiving; anything else the VM sent.
        const dir = pktType === PACKET_OUTGOING ? "inbound" : "outbound";
        guard.ingest(vmId, dir, tap, buf, off, len, wire, ts, LINKTYPE_ETHERNET);
      },
      (now) => {
        this.frames.set(tap, seen);
        guard.advance(now);
      },
    );
  }

  /** Stops watching and unregisters the VM (netguard resumes it first if it holds it suspended). */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    for (const r of this.#readers) await r.close();
    await Promise.all(this.#loops);
    await this.#guard.settled();
    await this.#guard.unregisterVm(this.vmId);
  }

  /** Closes the watch; see {@link VmNetWatch.close}. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}
