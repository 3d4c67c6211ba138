/**
 * A small HTTP/1.1 server over a `Deno.Listener` that bounds what every
 * client may cost: header bytes and time, body bytes (chunked bodies too,
 * counted while they are read) and time, idle keep-alive time, write time and
 * the number of open connections. The control socket and the metrics
 * endpoints use it instead of `Deno.serve`, which exposes none of these
 * limits (see `vmm/api/README.md`).
 *
 * Requests reach the handler as Web `Request`s with the whole body read and
 * replies are Web `Response`s, so handlers look as they would under
 * `Deno.serve`. Protocol errors are answered here with a JSON
 * `{"fault_message": …}` body and the connection is closed.
 *
 * @module
 */

/** What one client may cost; every field has a default ({@link DEFAULT_HTTP_LIMITS}). */
export interface HttpLimits {
  /** Bytes of the request line plus headers (and of a chunked body's trailers). */
  readonly maxHeaderBytes: number;
  /** Bytes of a request body, counted as it is read (declared or chunked). */
  readonly maxBodyBytes: number;
  /** Milliseconds from a request's first byte to the end of its headers. */
  readonly headerTimeoutMs: number;
  /** Milliseconds from the end of the headers to the end of the body. */
  readonly bodyTimeoutMs: number;
  /** Milliseconds a connection may sit without a request in progress. */
  readonly idleTimeoutMs: number;
  /** Milliseconds to write one response to a client that does not read it. */
  readonly writeTimeoutMs: number;
  /** Connections open at once; one more is answered 503 and closed. */
  readonly maxConnections: number;
}

/** The limits used where none are given. */
export const DEFAULT_HTTP_LIMITS: HttpLimits = {
  maxHeaderBytes: 16 * 1024,
  maxBodyBytes: 64 * 1024,
  headerTimeoutMs: 10_000,
  bodyTimeoutMs: 10_000,
  idleTimeoutMs: 60_000,
  writeTimeoutMs: 10_000,
  maxConnections: 16,
};

/** Handles one request; what it returns (or throws, as a 500) is sent back. */
export type HttpHandler = (req: Request) => Response | Promise<Response>;

/** One finished exchange, for logs and metrics. */
export interface HttpExchange {
  /** Request method, or `""` when the request did not parse. */
  readonly method: string;
  /** Request path, or `""` when the request did not parse. */
  readonly path: string;
  /** Status sent. */
  readonly status: number;
  /** Milliseconds from the end of the request to the end of the reply. */
  readonly ms: number;
}

/** Options of {@link serveHttp}. */
export interface HttpServeOptions {
  /** Limits overriding {@link DEFAULT_HTTP_LIMITS} field by field. */
  readonly limits?: Partial<HttpLimits>;
  /** Called after each reply (also for protocol errors answered by the server). */
  readonly onExchange?: (e: HttpExchange) => void;
}

/** A running server. */
export interface HttpServer {
  /** Connections open now. */
  readonly connections: number;
  /**
   * Stops accepting, closes connections waiting for a request, lets those
   * in a handler finish their reply, then resolves.
   */
  close(): Promise<void>;
}

const REASONS: Record<number, string> = {
  100: "Continue",
  200: "OK",
  201: "Created",
  204: "No Content",
  400: "Bad Request",
  404: "Not Found",
  405: "Method Not Allowed",
  408: "Request Timeout",
  409: "Conflict",
  413: "Content Too Large",
  417: "Expectation Failed",
  431: "Request Header Fields Too Large",
  500: "Internal Server Error",
  501: "Not Implemented",
  503: "Service Unavailable",
  505: "HTTP Version Not Supported",
};

const TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;
const CRLF2 = [13, 10, 13, 10];
const MAX_CHUNK_LINE = 1024;
const READ_CHUNK = 16 * 1024;
const enc = new TextEncoder();
const latin1 = new TextDecoder("latin1");

/** A request the server answers itself, then closes the connection. */
class ProtocolError extends Error {
  constructor(readonly status: number, message: string) {
    super(message);
  }
}

/** The connection was closed (by the peer, a deadline or shutdown) while reading. */
class ConnectionGone extends Error {}

/** Bytes read from a connection and not consumed yet, with deadline-bounded reads. */
class Reader {
  #buf: Uint8Array<ArrayBuffer> = new Uint8Array(READ_CHUNK);
  #start = 0;
  #end = 0;
  #closed = false;
  #timedOut = false;

  constructor(readonly conn: Deno.Conn) {}

  get buffered(): number {
    return this.#end - this.#start;
  }

  get timedOut(): boolean {
    return this.#timedOut;
  }

  view(): Uint8Array<ArrayBuffer> {
    return this.#buf.subarray(this.#start, this.#end);
  }

  consume(n: number): void {
    this.#start += n;
    if (this.#start === this.#end) this.#start = this.#end = 0;
  }

  /** Reads more bytes, keeping at most `cap` unconsumed; throws ConnectionGone at EOF or deadline. */
  async fill(deadline: number, cap: number): Promise<void> {
    if (this.#closed) throw new ConnectionGone();
    if (this.buffered >= cap) throw new Error("reader: buffer cap reached");
    if (this.#start > 0) {
      this.#buf.copyWithin(0, this.#start, this.#end);
      this.#end -= this.#start;
      this.#start = 0;
    }
    const room = Math.min(cap - this.#end, READ_CHUNK);
    if (this.#buf.length < this.#end + room) {
      const bigger = new Uint8Array(
        Math.min(cap, Math.max(this.#buf.length * 2, this.#end + room)),
      );
      bigger.set(this.#buf.subarray(0, this.#end));
      this.#buf = bigger;
    }
    const wait = deadline - Date.now();
    if (wait <= 0) {
      this.#expire();
      throw new ConnectionGone();
    }
    // The deadline closes the connection, which ends the pending read.
    const timer = setTimeout(() => this.#expire(), wait);
    let n: number | null;
    try {
      n = await this.conn.read(this.#buf.subarray(this.#end, this.#end + room));
    } catch (err) {
      if (this.#closed) throw new ConnectionGone();
      throw err;
    } finally {
      clearTimeout(timer);
    }
    if (n === null) {
      this.close();
      throw new ConnectionGone();
    }
    this.#end += n;
  }

  #expire(): void {
    this.#timedOut = true;
    this.close();
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    try {
      this.conn.close();
    } catch (err) {
      if (!(err instanceof Deno.errors.BadResource)) throw err;
    }
  }

  get closed(): boolean {
    return this.#closed;
  }
}

function indexOfSeq(hay: Uint8Array, seq: readonly number[], from = 0): number {
  outer: for (let i = from; i + seq.length <= hay.length; i++) {
    for (let j = 0; j < seq.length; j++) if (hay[i + j] !== seq[j]) continue outer;
    return i;
  }
  return -1;
}

interface RequestHead {
  method: string;
  target: string;
  version: "HTTP/1.0" | "HTTP/1.1";
  headers: [string, string][];
}

function parseHead(text: string): RequestHead {
  const lines = text.split("\r\n");
  const requestLine = lines.shift() ?? "";
  const parts = requestLine.split(" ");
  if (parts.length !== 3) throw new ProtocolError(400, `malformed request line '${requestLine}'`);
  const [method = "", target = "", version = ""] = parts;
  if (!TOKEN.test(method)) throw new ProtocolError(400, `malformed method '${method}'`);
  if (version !== "HTTP/1.1" && version !== "HTTP/1.0") {
    if (/^HTTP\/\d\.\d$/.test(version)) {
      throw new ProtocolError(505, `HTTP version ${version} is not supported (use HTTP/1.1)`);
    }
    throw new ProtocolError(400, `malformed HTTP version '${version}'`);
  }
  if (!target.startsWith("/") && !/^http:\/\/[^/]*(\/|$)/i.test(target)) {
    throw new ProtocolError(400, `request target '${target}' is not a path`);
  }
  const headers: [string, string][] = [];
  for (const line of lines) {
    const colon = line.indexOf(":");
    const name = colon > 0 ? line.slice(0, colon) : "";
    if (!TOKEN.test(name)) {
      throw new ProtocolError(400, `malformed header line '${line.slice(0, 80)}'`);
    }
    headers.push([name.toLowerCase(), line.slice(colon + 1).trim()]);
  }
  return { method, target, version, headers };
}

function header(head: RequestHead, name: string): string[] {
  return head.headers.filter(([n]) => n === name).map(([, v]) => v);
}

/** How the body is framed, from Content-Length and Transfer-Encoding (RFC 9112 §6). */
function bodyFraming(head: RequestHead, max: number): { chunked: boolean; length: number } {
  const te = header(head, "transfer-encoding");
  const cl = header(head, "content-length");
  if (te.length > 0) {
    if (cl.length > 0) {
      throw new ProtocolError(400, "request has both Transfer-Encoding and Content-Length");
    }
    if (head.version === "HTTP/1.0") {
      throw new ProtocolError(400, "Transfer-Encoding is not allowed in HTTP/1.0");
    }
    const codings = te.join(",").split(",").map((s) => s.trim().toLowerCase());
    if (codings.length !== 1 || codings[0] !== "chunked") {
      throw new ProtocolError(501, `transfer coding '${te.join(", ")}' is not supported`);
    }
    return { chunked: true, length: 0 };
  }
  if (cl.length === 0) return { chunked: false, length: 0 };
  const values = new Set(cl.join(",").split(",").map((s) => s.trim()));
  const [only] = values;
  if (values.size !== 1 || only === undefined || !/^[0-9]{1,15}$/.test(only)) {
    throw new ProtocolError(400, `malformed Content-Length '${cl.join(", ")}'`);
  }
  const length = Number(only);
  if (length > max) {
    throw new ProtocolError(400, `request body of ${length} bytes exceeds ${max}`);
  }
  return { chunked: false, length };
}

/** Writes all of `bytes` before `deadline`, closing the connection when it passes. */
async function writeAll(r: Reader, bytes: Uint8Array, deadline: number): Promise<void> {
  const timer = setTimeout(() => r.close(), Math.max(0, deadline - Date.now()));
  try {
    let off = 0;
    while (off < bytes.length) off += await r.conn.write(bytes.subarray(off));
  } finally {
    clearTimeout(timer);
  }
}

function faultBody(message: string): Uint8Array<ArrayBuffer> {
  return enc.encode(JSON.stringify({ fault_message: message }));
}

function serializeHead(
  status: number,
  headers: Iterable<[string, string]>,
  bodyLength: number,
  close: boolean,
): Uint8Array {
  const lines = [`HTTP/1.1 ${status} ${REASONS[status] ?? "Status"}`, "server: vmkit"];
  for (const [k, v] of headers) {
    if (k === "content-length" || k === "connection" || k === "transfer-encoding") continue;
    lines.push(`${k}: ${v}`);
  }
  if (status !== 204 && status !== 304 && status >= 200) {
    lines.push(`content-length: ${bodyLength}`);
  }
  if (close) lines.push("connection: close");
  return enc.encode(lines.join("\r\n") + "\r\n\r\n");
}

function concat(a: Uint8Array, b: Uint8Array): Uint8Array {
  const out = new Uint8Array(a.length + b.length);
  out.set(a);
  out.set(b, a.length);
  return out;
}

/**
 * Serves `handler` on `listener` under `opts.limits`.
 *
 * @example
 * ```ts ignore
 * import { serveHttp } from "./http.ts";
 * const listener = Deno.listen({ transport: "unix", path: "/tmp/x.sock" });
 * const server = serveHttp(listener, () => new Response("hi"), { limits: { maxConnections: 4 } });
 * await server.close();
 * ```
 */
export function serveHttp(
  listener: Deno.Listener,
  handler: HttpHandler,
  opts: HttpServeOptions = {},
): HttpServer {
  const limits: HttpLimits = { ...DEFAULT_HTTP_LIMITS, ...opts.limits };
  const open = new Set<Reader>();
  const idle = new Set<Reader>();
  const running = new Set<Promise<void>>();
  let closing = false;

  const exchange = (method: string, path: string, status: number, t0: number): void => {
    opts.onExchange?.({ method, path, status, ms: performance.now() - t0 });
  };

  const sendFault = async (r: Reader, status: number, message: string): Promise<void> => {
    const body = faultBody(message);
    const head = serializeHead(status, [["content-type", "application/json"]], body.length, true);
    try {
      await writeAll(r, concat(head, body), Date.now() + limits.writeTimeoutMs);
    } catch (err) {
      if (!r.closed && !(err instanceof Deno.errors.BrokenPipe) && !isReset(err)) throw err;
    }
  };

  /** Reads one body (already past the headers) into a buffer, never more than the limit. */
  const readBody = async (
    r: Reader,
    framing: { chunked: boolean; length: number },
  ): Promise<Uint8Array<ArrayBuffer>> => {
    const deadline = Date.now() + limits.bodyTimeoutMs;
    const max = limits.maxBodyBytes;
    if (!framing.chunked) {
      const cap = Math.max(framing.length, 1);
      while (r.buffered < framing.length) await r.fill(deadline, cap);
      const body = r.view().slice(0, framing.length);
      r.consume(framing.length);
      return body;
    }
    const parts: Uint8Array<ArrayBuffer>[] = [];
    let total = 0;
    const lineCap = MAX_CHUNK_LINE;
    for (;;) {
      let eol: number;
      while ((eol = indexOfSeq(r.view(), [13, 10])) < 0) {
        if (r.buffered >= lineCap) throw new ProtocolError(400, "chunk size line too long");
        await r.fill(deadline, lineCap);
      }
      const line = latin1.decode(r.view().subarray(0, eol));
      r.consume(eol + 2);
      const m = /^([0-9a-fA-F]{1,8})[ \t]*(;.*)?$/.exec(line);
      if (m === null || m[1] === undefined) {
        throw new ProtocolError(400, `malformed chunk size line '${line.slice(0, 40)}'`);
      }
      const size = Number.parseInt(m[1], 16);
      if (size === 0) break;
      if (total + size > max) {
        throw new ProtocolError(400, `request body exceeds ${max} bytes`);
      }
      while (r.buffered < size + 2) await r.fill(deadline, size + 2);
      const v = r.view();
      if (v[size] !== 13 || v[size + 1] !== 10) {
        throw new ProtocolError(400, "chunk data is not followed by CRLF");
      }
      parts.push(v.slice(0, size));
      total += size;
      r.consume(size + 2);
    }
    // Trailer section: header lines up to an empty line, bounded like the headers.
    for (;;) {
      while (indexOfSeq(r.view(), [13, 10]) < 0) {
        if (r.buffered >= limits.maxHeaderBytes) {
          throw new ProtocolError(431, `trailers exceed ${limits.maxHeaderBytes} bytes`);
        }
        await r.fill(deadline, limits.maxHeaderBytes);
      }
      const eol = indexOfSeq(r.view(), [13, 10]);
      r.consume(eol + 2);
      if (eol === 0) break;
    }
    const body = new Uint8Array(total);
    let off = 0;
    for (const p of parts) {
      body.set(p, off);
      off += p.length;
    }
    return body;
  };

  /** Serves one connection: request after request until close, error or deadline. */
  const serveConn = async (r: Reader): Promise<void> => {
    for (;;) {
      // Idle: wait for the first byte of the next request (skipping stray CRLFs).
      idle.add(r);
      try {
        const idleDeadline = Date.now() + limits.idleTimeoutMs;
        for (;;) {
          while (r.buffered > 0 && (r.view()[0] === 13 || r.view()[0] === 10)) r.consume(1);
          if (r.buffered > 0) break;
          if (closing) return;
          await r.fill(idleDeadline, limits.maxHeaderBytes + 1);
        }
      } finally {
        idle.delete(r);
      }
      const headDeadline = Date.now() + limits.headerTimeoutMs;
      let end: number;
      let scanned = 0;
      while ((end = indexOfSeq(r.view(), CRLF2, Math.max(0, scanned - 3))) < 0) {
        scanned = r.buffered;
        if (r.buffered > limits.maxHeaderBytes) {
          throw new ProtocolError(431, `request headers exceed ${limits.maxHeaderBytes} bytes`);
        }
        await r.fill(headDeadline, limits.maxHeaderBytes + 1);
      }
      if (end + 4 > limits.maxHeaderBytes) {
        throw new ProtocolError(431, `request headers exceed ${limits.maxHeaderBytes} bytes`);
      }
      const head = parseHead(latin1.decode(r.view().subarray(0, end)));
      r.consume(end + 4);
      const framing = bodyFraming(head, limits.maxBodyBytes);
      const expect = header(head, "expect");
      if (expect.length > 0) {
        if (expect.length !== 1 || expect[0]?.toLowerCase() !== "100-continue") {
          throw new ProtocolError(417, `expectation '${expect.join(", ")}' is not supported`);
        }
        if (head.version === "HTTP/1.1" && (framing.chunked || framing.length > 0)) {
          await writeAll(r, enc.encode("HTTP/1.1 100 Continue\r\n\r\n"), headDeadline);
        }
      }
      const body = await readBody(r, framing);
      const t0 = performance.now();
      const connTokens = header(head, "connection").join(",").toLowerCase().split(",")
        .map((s) => s.trim());
      const keepAlive = head.version === "HTTP/1.1"
        ? !connTokens.includes("close")
        : connTokens.includes("keep-alive");
      let req: Request;
      try {
        const url = new URL(head.target, "http://localhost");
        const hasBody = head.method !== "GET" && head.method !== "HEAD";
        req = new Request(url, {
          method: head.method,
          headers: head.headers,
          ...(hasBody ? { body } : {}),
        });
      } catch (err) {
        throw new ProtocolError(400, `bad request: ${(err as Error).message}`);
      }
      let res: Response;
      try {
        res = await handler(req);
      } catch (err) {
        res = new Response(faultBody(`internal error: ${(err as Error).message}`), {
          status: 500,
          headers: { "content-type": "application/json" },
        });
      }
      const out = new Uint8Array(await res.arrayBuffer());
      const close = !keepAlive || closing;
      const bodyOut = head.method === "HEAD" || res.status === 204 ? new Uint8Array(0) : out;
      const headOut = serializeHead(res.status, res.headers, out.length, close);
      await writeAll(r, concat(headOut, bodyOut), Date.now() + limits.writeTimeoutMs);
      exchange(head.method, new URL(head.target, "http://localhost").pathname, res.status, t0);
      if (close) return;
    }
  };

  const handleConn = async (conn: Deno.Conn): Promise<void> => {
    const r = new Reader(conn);
    if (open.size >= limits.maxConnections) {
      await sendFault(
        r,
        503,
        `too many connections (limit ${limits.maxConnections}); retry later`,
      );
      r.close();
      return;
    }
    open.add(r);
    try {
      await serveConn(r);
    } catch (err) {
      if (err instanceof ProtocolError) {
        await sendFault(r, err.status, err.message);
        exchange("", "", err.status, performance.now());
      } else if (
        !(err instanceof ConnectionGone) && !(err instanceof Deno.errors.BadResource) &&
        !(err instanceof Deno.errors.BrokenPipe) && !isReset(err) && !r.closed
      ) {
        throw err;
      }
    } finally {
      open.delete(r);
      r.close();
    }
  };

  const acceptLoop = (async () => {
    for (;;) {
      let conn: Deno.Conn;
      try {
        conn = await listener.accept();
      } catch (err) {
        if (closing || err instanceof Deno.errors.BadResource) return;
        throw err;
      }
      const p = handleConn(conn).catch((err: unknown) => {
        console.error(`http server: connection failed: ${(err as Error).message}`);
      });
      running.add(p);
      void p.finally(() => running.delete(p));
    }
  })();

  let closed: Promise<void> | undefined;
  return {
    get connections() {
      return open.size;
    },
    close(): Promise<void> {
      closed ??= (async () => {
        closing = true;
        try {
          listener.close();
        } catch (err) {
          if (!(err instanceof Deno.errors.BadResource)) throw err;
        }
        await acceptLoop;
        for (const r of idle) r.close();
        while (running.size > 0) await Promise.all([...running]);
      })();
      return closed;
    },
  };
}

function isReset(err: unknown): boolean {
  return err instanceof Deno.errors.ConnectionReset || err instanceof Deno.errors.ConnectionAborted;
}
