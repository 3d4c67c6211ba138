/**
 * The control socket: HTTP/1.1 over a Unix socket (mode 0600), JSON bodies,
 * Firecracker's API (`fc_routes.ts`) plus the route sets other files add
 * (`extensions.ts`), served by the bounded server of `http.ts`.
 *
 * Errors reply `{"fault_message": "…"}`: 400 for a bad body or a request the
 * VM's state forbids, 404 for an unknown path, 405 for a wrong method, 500
 * when the machine itself fails; 431, 501, 503 and 505 come from the HTTP
 * layer's limits.
 *
 * @module
 */

import { VmController } from "./controller.ts";
import { API_EXTENSIONS } from "./extensions.ts";
import { type ApiObservability, firecrackerRoutes } from "./fc_routes.ts";
import { type HttpExchange, type HttpLimits, serveHttp } from "./http.ts";
import { type ApiRoute, ApiRouter } from "./router.ts";
import { listenPrivateUnix } from "./socket.ts";
import type { ApiTarget } from "./target.ts";

/** A running control socket. */
export interface ApiServer {
  /** The socket path. */
  readonly path: string;
  /** Stops accepting requests, waits for those in flight and removes the socket file. */
  close(): Promise<void>;
}

/** Options of {@link startApiServer}. */
export interface ApiServerOptions {
  /** More routes, served before the others. */
  readonly routes?: readonly ApiRoute[];
  /** Metrics and logger hooks for `GET /metrics`, `FlushMetrics`, `PUT /metrics|/logger`. */
  readonly observability?: ApiObservability;
  /** Client limits, overriding the defaults of `http.ts` field by field. */
  readonly limits?: Partial<HttpLimits>;
  /** Called after each reply (for logs and metrics). */
  readonly onExchange?: (e: HttpExchange) => void;
}

function controllerOf(target: ApiTarget | VmController): VmController {
  return target instanceof VmController ? target : new VmController({ vm: target });
}

/**
 * Builds the request handler for `target` — a running machine, or a
 * {@link VmController} that may not have started one yet (what
 * {@link startApiServer} serves; exposed to embed the API in another server).
 */
export function apiHandler(
  target: ApiTarget | VmController,
  opts: Pick<ApiServerOptions, "routes" | "observability"> = {},
): (req: Request) => Promise<Response> {
  const ctl = controllerOf(target);
  const router = new ApiRouter().add(opts.routes ?? []);
  for (const make of API_EXTENSIONS) router.add(make(ctl));
  router.add(firecrackerRoutes(ctl, opts.observability));
  return (req) => router.handle(req);
}

/**
 * Serves the control API for `target` on a new Unix socket at `path`, mode
 * 0600 (a stale socket file left by a previous run is replaced; anything else
 * at `path` is refused).
 *
 * @example
 * ```ts ignore
 * import { startApiServer } from "./server.ts";
 * const server = await startApiServer("/tmp/vm.sock", machine);
 * // curl --unix-socket /tmp/vm.sock http://localhost/vm
 * await server.close();
 * ```
 */
export async function startApiServer(
  path: string,
  target: ApiTarget | VmController,
  opts: ApiServerOptions = {},
): Promise<ApiServer> {
  return await serveApiRoutes(path, apiHandler(target, opts), opts);
}

/** Serves `handler` on a new 0600 Unix socket at `path` under the HTTP layer's limits. */
export async function serveApiRoutes(
  path: string,
  handler: (req: Request) => Promise<Response>,
  opts: Pick<ApiServerOptions, "limits" | "onExchange"> = {},
): Promise<ApiServer> {
  const { listener, unlink } = await listenPrivateUnix(path);
  const server = serveHttp(listener, handler, {
    ...(opts.limits === undefined ? {} : { limits: opts.limits }),
    ...(opts.onExchange === undefined ? {} : { onExchange: opts.onExchange }),
  });
  let closed: Promise<void> | undefined;
  return {
    path,
    close(): Promise<void> {
      closed ??= (async () => {
        await server.close();
        await unlink();
      })();
      return closed;
    },
  };
}
