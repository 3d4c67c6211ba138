/**
 * Test fixture: a private tgtd (Debian `tgt`) on 127.0.0.1 with a free portal
 * port and its own control port, configured through tgtadm, restartable on
 * the same port with the same configuration, always killed by `stop()`.
 *
 * @module
 */

/** Picks a free loopback TCP port (bind port 0, read it, release it). */
export function freePort(): number {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (l.addr as Deno.NetAddr).port;
  l.close();
  return port;
}

/** A target definition replayed after every (re)start. */
export interface TargetSpec {
  tid: number;
  name: string;
  luns: Array<{ lun: number; path: string }>;
  /** Initiator names allowed (ACL); empty = nobody. */
  initiators: string[];
  /** CHAP incoming account, if any. */
  chap?: { user: string; secret: string };
  /** CHAP outgoing account (the target's identity for mutual CHAP), if any. */
  mutualChap?: { user: string; secret: string };
  /** Target parameters to set (e.g. InitialR2T=No). */
  params?: Record<string, string>;
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** A running tgtd. */
export class Tgtd {
  readonly port: number;
  readonly control: number;
  readonly targets: TargetSpec[] = [];
  #proc: Deno.ChildProcess | undefined;

  private constructor(port: number, control: number) {
    this.port = port;
    this.control = control;
  }

  /** Starts tgtd on a free port. */
  static async start(): Promise<Tgtd> {
    for (let attempt = 0; attempt < 5; attempt++) {
      // tgtd accepts control ports below 32768 only.
      const control = 10000 + Math.floor(Math.random() * 22000);
      try {
        await Deno.stat(`/var/run/tgtd/socket.${control}`);
        continue; // another tgtd (maybe another helper's) owns this control port
      } catch (err) {
        if (!(err instanceof Deno.errors.NotFound)) throw err;
      }
      const t = new Tgtd(freePort(), control);
      if (await t.#launch()) return t;
      await t.stop();
    }
    throw new Error("could not start tgtd on a free port after 5 attempts");
  }

  async #launch(): Promise<boolean> {
    this.#proc = new Deno.Command("tgtd", {
      args: ["-f", "-C", String(this.control), "--iscsi", `portal=127.0.0.1:${this.port}`],
      stdout: "null",
      stderr: "null",
    }).spawn();
    for (let i = 0; i < 100; i++) {
      const out = await this.adm(["--mode", "target", "--op", "show"], false);
      if (out && (await this.#portalUp())) return true;
      await sleep(50);
    }
    return false;
  }

  async #portalUp(): Promise<boolean> {
    try {
      const c = await Deno.connect({ hostname: "127.0.0.1", port: this.port });
      c.close();
      return true;
    } catch (err) {
      if (err instanceof Deno.errors.ConnectionRefused) return false;
      throw err;
    }
  }

  /**
   * Runs tgtadm against this instance; throws on failure unless `check` is
   * false. A freshly started tgtd under load sometimes drops a management
   * connection ("Transport endpoint is not connected"): such requests retry.
   */
  async adm(args: string[], check = true): Promise<boolean> {
    for (let attempt = 0;; attempt++) {
      const out = await new Deno.Command("tgtadm", {
        args: ["-C", String(this.control), "--lld", "iscsi", ...args],
        stdout: "piped",
        stderr: "piped",
      }).output();
      if (out.success) return true;
      const err = new TextDecoder().decode(out.stderr);
      if (check && attempt < 40 && /failed to send request|not connected|can't connect/.test(err)) {
        await sleep(50);
        continue;
      }
      if (check) throw new Error(`tgtadm ${args.join(" ")}: ${err}`);
      return false;
    }
  }

  async #apply(t: TargetSpec): Promise<void> {
    await this.adm([
      "--mode",
      "target",
      "--op",
      "new",
      "--tid",
      String(t.tid),
      "--targetname",
      t.name,
    ]);
    for (const l of t.luns) {
      await this.adm([
        "--mode",
        "logicalunit",
        "--op",
        "new",
        "--tid",
        String(t.tid),
        "--lun",
        String(l.lun),
        "--backing-store",
        l.path,
      ]);
    }
    for (const name of t.initiators) {
      await this.adm([
        "--mode",
        "target",
        "--op",
        "bind",
        "--tid",
        String(t.tid),
        "--initiator-name",
        name,
      ]);
    }
    for (const [name, value] of Object.entries(t.params ?? {})) {
      await this.adm([
        "--mode",
        "target",
        "--op",
        "update",
        "--tid",
        String(t.tid),
        "--name",
        name,
        "--value",
        value,
      ]);
    }
    if (t.chap !== undefined) {
      await this.adm([
        "--mode",
        "account",
        "--op",
        "new",
        "--user",
        t.chap.user,
        "--password",
        t.chap.secret,
      ]);
      await this.adm([
        "--mode",
        "account",
        "--op",
        "bind",
        "--tid",
        String(t.tid),
        "--user",
        t.chap.user,
      ]);
    }
    if (t.mutualChap !== undefined) {
      const m = t.mutualChap;
      await this.adm([
        "--mode",
        "account",
        "--op",
        "new",
        "--user",
        m.user,
        "--password",
        m.secret,
      ]);
      await this.adm([
        "--mode",
        "account",
        "--op",
        "bind",
        "--tid",
        String(t.tid),
        "--user",
        m.user,
        "--outgoing",
      ]);
    }
  }

  /** Adds a target (and remembers it for restarts). */
  async addTarget(t: TargetSpec): Promise<void> {
    this.targets.push(t);
    await this.#apply(t);
  }

  /** Kills tgtd with SIGKILL (no clean shutdown). */
  async kill(): Promise<void> {
    const p = this.#proc;
    this.#proc = undefined;
    if (p === undefined) return;
    try {
      p.kill("SIGKILL");
    } catch (err) {
      if (!(err instanceof TypeError)) throw err;
    }
    await p.status;
  }

  /** Kills and restarts tgtd on the same ports with the same targets. */
  async restart(): Promise<void> {
    await this.kill();
    for (let i = 0; i < 40; i++) {
      if (await this.#launch()) {
        for (const t of this.targets) await this.#apply(t);
        return;
      }
      await this.kill();
      await sleep(100);
    }
    throw new Error(`tgtd did not come back on port ${this.port}`);
  }

  /** Stops tgtd and removes its control socket files. */
  async stop(): Promise<void> {
    await this.kill();
    for (
      const f of [
        `/var/run/tgtd/socket.${this.control}`,
        `/var/run/tgtd/socket.${this.control}.lock`,
      ]
    ) {
      await Deno.remove(f).catch((err) => {
        if (!(err instanceof Deno.errors.NotFound)) throw err;
      });
    }
  }
}

/** Creates a zero-filled backing file of `bytes` in `dir`. */
export async function backingFile(dir: string, name: string, bytes: number): Promise<string> {
  const path = `${dir}/${name}`;
  const f = await Deno.open(path, { write: true, create: true, truncate: true });
  await f.truncate(bytes);
  f.close();
  return path;
}

/** Runs qemu-io (QEMU's libiscsi driver) against a LUN with commands; returns stdout. */
export async function qemuIo(
  port: number,
  target: string,
  lun: number,
  initiator: string,
  commands: string[],
): Promise<string> {
  const opts = `driver=iscsi,transport=tcp,portal=127.0.0.1:${port},target=${target},lun=${lun},` +
    `initiator-name=${initiator}`;
  const args: string[] = [];
  for (const c of commands) args.push("-c", c);
  const out = await new Deno.Command("qemu-io", {
    args: [...args, "--image-opts", opts],
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = new TextDecoder().decode(out.stdout) + new TextDecoder().decode(out.stderr);
  if (!out.success) throw new Error(`qemu-io failed: ${text}`);
  return text;
}
