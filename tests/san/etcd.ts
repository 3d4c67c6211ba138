/**
 * Test fixture: a private single-member etcd on loopback free ports with a
 * temporary data directory, killed and removed by `stop()`.
 *
 * @module
 */

import { freePort } from "./tgt.ts";

/** A running etcd. */
export class Etcd {
  readonly clientPort: number;
  readonly dir: string;
  #proc: Deno.ChildProcess;

  private constructor(clientPort: number, dir: string, proc: Deno.ChildProcess) {
    this.clientPort = clientPort;
    this.dir = dir;
    this.#proc = proc;
  }

  /** The `etcd://` registry spec for this instance. */
  get spec(): string {
    return `etcd://127.0.0.1:${this.clientPort}`;
  }

  /** Starts etcd and waits until it answers. */
  static async start(): Promise<Etcd> {
    const dir = await Deno.makeTempDir({ prefix: "vmkit-san-etcd-" });
    const client = freePort();
    const peer = freePort();
    const proc = new Deno.Command("etcd", {
      args: [
        "--name",
        "vmkit-test",
        "--data-dir",
        `${dir}/data`,
        "--listen-client-urls",
        `http://127.0.0.1:${client}`,
        "--advertise-client-urls",
        `http://127.0.0.1:${client}`,
        "--listen-peer-urls",
        `http://127.0.0.1:${peer}`,
        "--initial-advertise-peer-urls",
        `http://127.0.0.1:${peer}`,
        "--initial-cluster",
        `vmkit-test=http://127.0.0.1:${peer}`,
        "--log-level",
        "error",
      ],
      stdout: "null",
      stderr: "null",
    }).spawn();
    const e = new Etcd(client, dir, proc);
    for (let i = 0; i < 200; i++) {
      try {
        const r = await fetch(`http://127.0.0.1:${client}/v3/kv/range`, {
          method: "POST",
          body: JSON.stringify({ key: btoa("probe") }),
        });
        await r.body?.cancel();
        if (r.ok) return e;
      } catch (err) {
        if (!(err instanceof TypeError)) throw err;
      }
      await new Promise((r) => setTimeout(r, 50));
    }
    await e.stop();
    throw new Error("etcd did not come up within 10 s");
  }

  /** Kills etcd and removes its data. */
  async stop(): Promise<void> {
    try {
      this.#proc.kill("SIGKILL");
    } catch (err) {
      if (!(err instanceof TypeError)) throw err;
    }
    await this.#proc.status;
    await Deno.remove(this.dir, { recursive: true });
  }
}
