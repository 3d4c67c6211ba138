/**
 * A fake machine for the control API tests (the server is tested without a VM).
 *
 * @module
 */

import type { HttpLimits } from "../../vmm/api/http.ts";
import { type ApiTarget, startApiServer } from "../../vmm/api/mod.ts";

const MIB = 1024 * 1024;

/** Records lifecycle calls; `failPause` makes pause() fail as KVM would. */
export class FakeMachine implements ApiTarget {
  state: "Created" | "Running" | "Paused" | "Stopped" = "Running";
  readonly vcpuCount = 2;
  readonly memory = {
    size: 4096 * MIB,
    regions: [{ guestAddr: 0, size: 3072 * MIB }, { guestAddr: 0x1_0000_0000, size: 1024 * MIB }],
  };
  calls: string[] = [];
  failPause = false;
  pause(): Promise<void> {
    this.calls.push("pause");
    if (this.failPause) return Promise.reject(new Error("KVM said no"));
    this.state = "Paused";
    return Promise.resolve();
  }
  resume(): Promise<void> {
    this.calls.push("resume");
    this.state = "Running";
    return Promise.resolve();
  }
  async stop(): Promise<void> {
    this.calls.push("stop");
    await new Promise((r) => setTimeout(r, 5));
    this.state = "Stopped";
  }
}

/** Serves a {@link FakeMachine} on a socket in a fresh temp dir for the duration of `fn`. */
export async function withServer(
  fn: (sock: string, vm: FakeMachine) => Promise<void>,
  limits: Partial<HttpLimits> = {},
): Promise<void> {
  const dir = await Deno.makeTempDir();
  const sock = `${dir}/api.sock`;
  const vm = new FakeMachine();
  const server = await startApiServer(sock, vm, { limits });
  try {
    await fn(sock, vm);
  } finally {
    await server.close();
    await Deno.remove(dir, { recursive: true });
  }
}
