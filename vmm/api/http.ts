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

import {
  bodyFraming,
  concat,
  ConnectionGone,
  faultBody,
  header,
  isReset,
  ProtocolError,
  readBody,
  Reader,
  readHead,
  serializeHead,
  writeAll,
} from "./http_wire.ts";

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
      const head = await readHead(r, headDeadline, limits.maxHeaderBytes);
      const framing = bodyFraming(head, limits.maxBodyBytes);
      const expect = header(head, "expect");
      if (expect.length > 0) {
        if (expect.length !== 1 || expect[0]?.toLowerCase() !== "100-continue") {
          throw new ProtocolError(417, `expectation '${expect.join(", ")}' is not supported`);
        }
        if (head.version === "HTTP/1.1" && (framing.chunked || framing.length > 0)) {
          await writeAll(
            r,
            new TextEncoder().encode("HTTP/1.1 100 Continue\r\n\r\n"),
            headDeadline,
          );
        }
      }
      const body = await readBody(r, framing, Date.now() + limits.bodyTimeoutMs, limits);
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
