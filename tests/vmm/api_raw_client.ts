/**
 * A raw HTTP/1.1 client over a Unix socket, written as Firecracker's users
 * write theirs (a hand-built request, `Content-Length`, one response read
 * back), plus helpers to drive a connection byte by byte in the API tests.
 *
 * @module
 */

const enc = new TextEncoder();
const dec = new TextDecoder();

/** One parsed response. */
export interface RawResponse {
  status: number;
  headers: Record<string, string>;
  body: string;
}

/** An open connection with a read buffer. */
export class RawConn {
  #buf = new Uint8Array(0);
  #eof = false;
  private constructor(readonly conn: Deno.UnixConn) {}

  /** Connects to `path`. */
  static async open(path: string): Promise<RawConn> {
    return new RawConn(await Deno.connect({ transport: "unix", path }));
  }

  /** Writes all of `data`. */
  async write(data: string | Uint8Array): Promise<void> {
    const bytes = typeof data === "string" ? enc.encode(data) : data;
    let off = 0;
    while (off < bytes.length) off += await this.conn.write(bytes.subarray(off));
  }

  async #more(): Promise<boolean> {
    if (this.#eof) return false;
    const chunk = new Uint8Array(65536);
    let n: number | null;
    try {
      n = await this.conn.read(chunk);
    } catch (err) {
      if (err instanceof Deno.errors.ConnectionReset) n = null;
      else throw err;
    }
    if (n === null) {
      this.#eof = true;
      return false;
    }
    const next = new Uint8Array(this.#buf.length + n);
    next.set(this.#buf);
    next.set(chunk.subarray(0, n), this.#buf.length);
    this.#buf = next;
    return true;
  }

  /** Reads one response (status line, headers, Content-Length body); throws at EOF. */
  async response(): Promise<RawResponse> {
    for (;;) {
      const text = dec.decode(this.#buf);
      const end = text.indexOf("\r\n\r\n");
      if (end >= 0) {
        const [statusLine = "", ...lines] = text.slice(0, end).split("\r\n");
        const status = Number(statusLine.split(" ")[1]);
        const headers: Record<string, string> = {};
        for (const l of lines) {
          const i = l.indexOf(":");
          headers[l.slice(0, i).toLowerCase()] = l.slice(i + 1).trim();
        }
        if (status === 100) {
          this.#buf = this.#buf.subarray(enc.encode(text.slice(0, end + 4)).length);
          return { status, headers, body: "" };
        }
        const len = Number(headers["content-length"] ?? "0");
        const headBytes = enc.encode(text.slice(0, end + 4)).length;
        if (this.#buf.length >= headBytes + len) {
          const body = dec.decode(this.#buf.subarray(headBytes, headBytes + len));
          this.#buf = this.#buf.subarray(headBytes + len);
          return { status, headers, body };
        }
      }
      if (!await this.#more()) throw new Error(`connection closed mid-response: '${text}'`);
    }
  }

  /** Resolves true when the server closes the connection (reading and discarding). */
  async closedByServer(): Promise<boolean> {
    while (await this.#more()) this.#buf = new Uint8Array(0);
    return true;
  }

  /** Closes our end. */
  close(): void {
    try {
      this.conn.close();
    } catch (err) {
      if (!(err instanceof Deno.errors.BadResource)) throw err;
    }
  }
}

/**
 * Sends one request the way a Firecracker client does and reads the reply
 * (a new connection per request, `Content-Length` framing).
 */
export async function rawRequest(
  path: string,
  method: string,
  resource: string,
  body?: unknown,
): Promise<RawResponse> {
  const c = await RawConn.open(path);
  try {
    const payload = body === undefined
      ? ""
      : typeof body === "string"
      ? body
      : JSON.stringify(body);
    const bytes = enc.encode(payload);
    await c.write(
      `${method} ${resource} HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\n` +
        (body === undefined
          ? ""
          : `Content-Type: application/json\r\nContent-Length: ${bytes.length}\r\n`) +
        "\r\n",
    );
    if (bytes.length > 0) await c.write(bytes);
    return await c.response();
  } finally {
    c.close();
  }
}

/** Runs `curl --unix-socket` as Firecracker's docs do; returns status and body. */
export async function curl(
  sock: string,
  method: string,
  resource: string,
  body?: unknown,
): Promise<{ status: number; body: string }> {
  const args = [
    "-sS",
    "--unix-socket",
    sock,
    "-X",
    method,
    `http://localhost${resource}`,
    "-H",
    "Accept: application/json",
    "-w",
    "\n%{http_code}",
  ];
  if (body !== undefined) {
    args.push(
      "-H",
      "Content-Type: application/json",
      "-d",
      typeof body === "string" ? body : JSON.stringify(body),
    );
  }
  const out = await new Deno.Command("curl", { args, stdout: "piped", stderr: "piped" }).output();
  if (!out.success) throw new Error(`curl failed: ${dec.decode(out.stderr)}`);
  const text = dec.decode(out.stdout);
  const nl = text.lastIndexOf("\n");
  return { status: Number(text.slice(nl + 1)), body: text.slice(0, nl) };
}
