/**
 * The HTTP/1.1 message layer of `http.ts` (RFC 9112): a connection reader
 * whose every read has a deadline, the request head and its parser, body
 * framing (Content-Length or chunked, never both) with the body read under a
 * byte limit, and the response head. No policy: the limits come from the
 * server.
 *
 * @module
 */

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
export class ProtocolError extends Error {
  /** Creates the error; the server answers `status` with `message`. */
  constructor(readonly status: number, message: string) {
    super(message);
  }
}

/** The connection was closed (by the peer, a deadline or shutdown) while reading. */
export class ConnectionGone extends Error {}

/** Bytes read from a connection and not consumed yet, with deadline-bounded reads. */
export class Reader {
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

/** A request line and its headers (names in lower case, in order). */
export interface RequestHead {
  method: string;
  target: string;
  version: "HTTP/1.0" | "HTTP/1.1";
  headers: [string, string][];
}

/** Parses a request head (without its final CRLFCRLF); a malformed one is a {@link ProtocolError}. */
export function parseHead(text: string): RequestHead {
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

/** Every value of header `name` (lower case). */
export function header(head: RequestHead, name: string): string[] {
  return head.headers.filter(([n]) => n === name).map(([, v]) => v);
}

/** How the body is framed, from Content-Length and Transfer-Encoding (RFC 9112 §6). */
export function bodyFraming(head: RequestHead, max: number): { chunked: boolean; length: number } {
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
export async function writeAll(r: Reader, bytes: Uint8Array, deadline: number): Promise<void> {
  const timer = setTimeout(() => r.close(), Math.max(0, deadline - Date.now()));
  try {
    let off = 0;
    while (off < bytes.length) off += await r.conn.write(bytes.subarray(off));
  } finally {
    clearTimeout(timer);
  }
}

/** A Firecracker-style error body: `{"fault_message": message}`. */
export function faultBody(message: string): Uint8Array<ArrayBuffer> {
  return enc.encode(JSON.stringify({ fault_message: message }));
}

/** A response head: status line, `headers` (framing headers replaced by ours), Content-Length. */
export function serializeHead(
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

/** `a` then `b` in one array (a head and its body in one write). */
export function concat(a: Uint8Array, b: Uint8Array): Uint8Array {
  const out = new Uint8Array(a.length + b.length);
  out.set(a);
  out.set(b, a.length);
  return out;
}

/** Reads the request line and headers before `deadline`, at most `maxHeaderBytes` of them. */
export async function readHead(
  r: Reader,
  deadline: number,
  maxHeaderBytes: number,
): Promise<RequestHead> {
  let end: number;
  let scanned = 0;
  while ((end = indexOfSeq(r.view(), CRLF2, Math.max(0, scanned - 3))) < 0) {
    scanned = r.buffered;
    if (r.buffered > maxHeaderBytes) {
      throw new ProtocolError(431, `request headers exceed ${maxHeaderBytes} bytes`);
    }
    await r.fill(deadline, maxHeaderBytes + 1);
  }
  if (end + 4 > maxHeaderBytes) {
    throw new ProtocolError(431, `request headers exceed ${maxHeaderBytes} bytes`);
  }
  const head = parseHead(latin1.decode(r.view().subarray(0, end)));
  r.consume(end + 4);
  return head;
}

/**
 * Reads one body (the reader is past the headers) before `deadline`, never
 * more than `limits.maxBodyBytes`, chunked bodies counted as they arrive;
 * trailers are skipped, bounded by `limits.maxHeaderBytes`.
 */
export async function readBody(
  r: Reader,
  framing: { chunked: boolean; length: number },
  deadline: number,
  limits: { readonly maxBodyBytes: number; readonly maxHeaderBytes: number },
): Promise<Uint8Array<ArrayBuffer>> {
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
}

/** Whether `err` is the peer resetting or aborting the connection. */
export function isReset(err: unknown): boolean {
  return err instanceof Deno.errors.ConnectionReset || err instanceof Deno.errors.ConnectionAborted;
}
