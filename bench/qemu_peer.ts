/**
 * QEMU 7.2 as the checkpoint bench's peer: a microvm running the same PVH
 * guest, driven over QMP (a small client: commands, replies, events with
 * their timestamps) and its serial port on a Unix socket.
 *
 * @module
 */

/** A QMP event with QEMU's own timestamp. */
export interface QmpEvent {
  /** Event name, e.g. `STOP`. */
  event: string;
  /** Seconds since the epoch (QEMU's clock, µs resolution). */
  at: number;
  /** Event data. */
  data: Record<string, unknown>;
}

/** A line-oriented client over a Unix socket. */
class Lines {
  readonly conn: Deno.UnixConn;
  #buf = "";
  #waiters: Array<() => void> = [];
  #lines: string[] = [];
  #closed = false;

  constructor(conn: Deno.UnixConn) {
    this.conn = conn;
    void this.#pump();
  }

  async #pump(): Promise<void> {
    const dec = new TextDecoder();
    const b = new Uint8Array(65536);
    for (;;) {
      let n: number | null;
      try {
        n = await this.conn.read(b);
      } catch (err) {
        if (err instanceof Deno.errors.BadResource || err instanceof Deno.errors.ConnectionReset) {
          n = null;
        } else throw err;
      }
      if (n === null) break;
      this.#buf += dec.decode(b.subarray(0, n), { stream: true });
      let i;
      while ((i = this.#buf.indexOf("\n")) >= 0) {
        this.#lines.push(this.#buf.slice(0, i).replace(/\r$/, ""));
        this.#buf = this.#buf.slice(i + 1);
      }
      this.#wake();
    }
    this.#closed = true;
    this.#wake();
  }

  #wake(): void {
    for (const w of this.#waiters.splice(0)) w();
  }

  /** The next line matching `pred` (earlier ones are dropped), or throws after `ms`. */
  async next(pred: (l: string) => boolean, ms: number): Promise<string> {
    const deadline = Date.now() + ms;
    for (;;) {
      const i = this.#lines.findIndex(pred);
      if (i >= 0) {
        const l = this.#lines[i] ?? "";
        this.#lines.splice(0, i + 1);
        return l;
      }
      if (this.#closed) throw new Error("the connection closed");
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`no matching line within ${ms} ms`);
      await new Promise<void>((res) => {
        const t = setTimeout(res, left);
        this.#waiters.push(() => {
          clearTimeout(t);
          res();
        });
      });
    }
  }

  async write(text: string): Promise<void> {
    const b = new TextEncoder().encode(text);
    let off = 0;
    while (off < b.length) off += await this.conn.write(b.subarray(off));
  }

  close(): void {
    try {
      this.conn.close();
    } catch (err) {
      if (!(err instanceof Deno.errors.BadResource)) throw err;
    }
  }
}

async function connect(path: string, ms = 10_000): Promise<Deno.UnixConn> {
  const deadline = Date.now() + ms;
  for (;;) {
    try {
      return await Deno.connect({ transport: "unix", path });
    } catch (err) {
      if (Date.now() > deadline) throw err;
      await new Promise((r) => setTimeout(r, 20));
    }
  }
}

/** A QEMU process with its QMP and serial sockets. */
export class QemuVm implements AsyncDisposable {
  readonly child: Deno.ChildProcess;
  readonly #qmp: Lines;
  readonly serial: Lines;
  readonly events: QmpEvent[] = [];
  readonly command: string;
  #id = 0;

  private constructor(child: Deno.ChildProcess, qmp: Lines, serial: Lines, command: string) {
    this.child = child;
    this.#qmp = qmp;
    this.serial = serial;
    this.command = command;
  }

  /**
   * Starts QEMU (microvm, KVM) with `memMiB` of RAM running `kernel` with
   * `cmdline`; `incoming` starts it waiting for `migrate-incoming`.
   */
  static async start(
    dir: string,
    kernel: string,
    memMiB: number,
    cmdline: string,
    incoming = false,
  ): Promise<QemuVm> {
    const tag = crypto.randomUUID().slice(0, 8);
    const qmpPath = `${dir}/qmp-${tag}.sock`;
    const serialPath = `${dir}/serial-${tag}.sock`;
    const args = [
      ...["-M", "microvm,x-option-roms=off,rtc=off", "-accel", "kvm"],
      // The host CPU minus IA32_ARCH_CAPABILITIES, which this host's KVM refuses to set.
      ...["-cpu", "host,-arch-capabilities", "-m", String(memMiB)],
      ...["-nodefaults", "-no-user-config", "-display", "none"],
      ...["-qmp", `unix:${qmpPath},server=on,wait=off`],
      ...["-serial", `unix:${serialPath},server=on,wait=off`],
      ...["-kernel", kernel, "-append", cmdline],
      ...(incoming ? ["-incoming", "defer"] : []),
    ];
    const child = new Deno.Command("qemu-system-x86_64", {
      args,
      stdin: "null",
      stdout: "null",
      stderr: "inherit",
    }).spawn();
    const qmp = new Lines(await connect(qmpPath));
    const serial = new Lines(await connect(serialPath));
    const vm = new QemuVm(child, qmp, serial, `qemu-system-x86_64 ${args.join(" ")}`);
    await qmp.next((l) => l.includes('"QMP"'), 10_000);
    await vm.qmp("qmp_capabilities");
    return vm;
  }

  /** Runs a QMP command; returns its `return` value or throws its error. */
  async qmp(execute: string, args?: Record<string, unknown>, ms = 60_000): Promise<unknown> {
    const id = ++this.#id;
    await this.#qmp.write(
      JSON.stringify({ execute, ...(args === undefined ? {} : { arguments: args }), id }) + "\n",
    );
    for (;;) {
      const line = await this.#qmp.next(() => true, ms);
      const msg = JSON.parse(line) as Record<string, unknown>;
      if (typeof msg.event === "string") {
        const ts = msg.timestamp as { seconds: number; microseconds: number };
        this.events.push({
          event: msg.event,
          at: ts.seconds + ts.microseconds / 1e6,
          data: (msg.data ?? {}) as Record<string, unknown>,
        });
        continue;
      }
      if (msg.id !== id) continue;
      if (msg.error !== undefined) {
        throw new Error(`QMP ${execute}: ${JSON.stringify(msg.error)}`);
      }
      return msg.return;
    }
  }

  /** Waits (polling query-status, which also collects events) until `pred` holds. */
  async until(pred: () => Promise<boolean>, ms: number, every = 5): Promise<void> {
    const deadline = Date.now() + ms;
    while (!(await pred())) {
      if (Date.now() > deadline) throw new Error(`QEMU: condition not met within ${ms} ms`);
      await new Promise((r) => setTimeout(r, every));
    }
  }

  /** Sends bytes to the guest's serial port. */
  send(text: string): Promise<void> {
    return this.serial.write(text);
  }

  /** Peak RSS and PSS of the QEMU process (kB). */
  memory(): { rssKb: number; pssKb: number } {
    return processMemory(this.child.pid);
  }

  /** Quits QEMU. */
  async [Symbol.asyncDispose](): Promise<void> {
    try {
      await this.qmp("quit", undefined, 5000);
    } catch (err) {
      if (!(err instanceof Error)) throw err;
      try {
        this.child.kill("SIGKILL");
      } catch (e) {
        if (!(e instanceof TypeError)) throw e;
      }
    }
    await this.child.status;
    this.#qmp.close();
    this.serial.close();
  }
}

/** RSS and PSS of process `pid` from /proc (kB). */
export function processMemory(pid: number): { rssKb: number; pssKb: number } {
  const t = Deno.readTextFileSync(`/proc/${pid}/smaps_rollup`);
  const kb = (name: string): number =>
    Number(new RegExp(`^${name}:\\s+(\\d+) kB`, "m").exec(t)?.[1] ?? 0);
  return { rssKb: kb("Rss"), pssKb: kb("Pss") };
}
