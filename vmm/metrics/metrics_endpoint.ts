/**
 * A Prometheus scrape endpoint on TCP (`netguard watch --metrics-listen
 * 127.0.0.1:PORT`): `GET /metrics` answers the text exposition, anything
 * else 404/405. Served by the same bounded HTTP/1.1 server as the control
 * socket, so a scraper (or anyone else who can reach the port) gets the same
 * limits on headers, bodies, idle time and connections.
 *
 * @module
 */

import { type HttpServer, serveHttp } from "../api/http.ts";

/** Raised for a bad listen address or a port that cannot be bound. */
export class MetricsEndpointError extends Error {
  /** Creates the error. */
  constructor(message: string) {
    super(message);
    this.name = "MetricsEndpointError";
  }
}

/** Parses `HOST:PORT` or `[IPv6]:PORT` (port 0 picks a free one). */
export function parseListenAddress(text: string): { hostname: string; port: number } {
  const m = /^(?:\[([0-9a-fA-F:.]+)\]|([^:\s[\]]+)):(\d{1,5})$/.exec(text);
  const port = Number(m?.[3]);
  const hostname = m?.[1] ?? m?.[2];
  if (m === null || hostname === undefined || !(port >= 0 && port <= 65535)) {
    throw new MetricsEndpointError(
      `listen address '${text}' is not HOST:PORT (e.g. 127.0.0.1:9464, [::1]:9464)`,
    );
  }
  return { hostname, port };
}

/** A running endpoint. */
export interface MetricsEndpoint {
  /** The bound port (the chosen one when asked for 0). */
  readonly port: number;
  /** The bound address. */
  readonly hostname: string;
  /** Stops serving. */
  close(): Promise<void>;
}

/**
 * Serves `text()` at `http://ADDRESS/metrics`.
 *
 * @example
 * ```ts ignore
 * import { listenMetrics } from "./metrics_endpoint.ts";
 * const ep = listenMetrics("127.0.0.1:0", () => "up 1\n");
 * console.log(`curl http://127.0.0.1:${ep.port}/metrics`);
 * await ep.close();
 * ```
 */
export function listenMetrics(address: string, text: () => string): MetricsEndpoint {
  const { hostname, port } = parseListenAddress(address);
  let listener: Deno.TcpListener;
  try {
    listener = Deno.listen({ hostname, port, transport: "tcp" });
  } catch (err) {
    throw new MetricsEndpointError(`cannot listen on ${address}: ${(err as Error).message}`);
  }
  const server: HttpServer = serveHttp(listener, (req) => {
    const path = new URL(req.url).pathname;
    const headers = { "content-type": "application/json" };
    if (path !== "/metrics") {
      return new Response(
        JSON.stringify({ fault_message: `no such resource '${path}' (try /metrics)` }),
        {
          status: 404,
          headers,
        },
      );
    }
    if (req.method !== "GET" && req.method !== "HEAD") {
      return new Response(
        JSON.stringify({ fault_message: `method ${req.method} is not allowed` }),
        {
          status: 405,
          headers: { ...headers, allow: "GET, HEAD" },
        },
      );
    }
    return new Response(text(), {
      status: 200,
      headers: { "content-type": "text/plain; version=0.0.4; charset=utf-8" },
    });
  });
  const addr = listener.addr;
  return {
    port: addr.port,
    hostname: addr.hostname,
    close: () => server.close(),
  };
}
