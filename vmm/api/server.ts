/**
 * The control socket: HTTP/1.1 over a Unix socket (mode 0600), JSON bodies,
 * in the style of Firecracker's API, served by the bounded server of
 * `http.ts` from a route table (`router.ts`) that other files extend.
 *
 * | method | path       | body                                  | reply                        |
 * | ------ | ---------- | ------------------------------------- | ---------------------------- |
 * | GET    | `/vm`      |                                       | 200 `{state, vcpus, memory}` |
 * | PATCH  | `/vm`      | `{"state": "Paused" \| "Resumed"}`    | 204                          |
 * | PUT    | `/actions` | `{"action_type": "Shutdown"}`         | 204, then the machine stops  |
 *
 * Errors reply `{"fault_message": "…"}`: 400 for a bad body or a request the
 * VM's state forbids, 404 for an unknown path, 405 for a wrong method, 500
 * when the machine itself fails; 431, 501, 503 and 505 come from the HTTP
 * layer's limits.
 *
 * @module
 */

import { type HttpExchange, type HttpLimits, serveHttp } from "./http.ts";
import { ApiFault, type ApiRoute, ApiRouter, json, noContent, onlyFields } from "./router.ts";
import { listenPrivateUnix } from "./socket.ts";
import type { ApiTarget } from "./target.ts";

const MIB = 1024 * 1024;

/** A running control socket. */
export interface ApiServer {
  /** The socket path. */
  readonly path: string;
  /** Stops accepting requests, waits for those in flight and removes the socket file. */
  close(): Promise<void>;
}

/** Options of {@link startApiServer}. */
export interface ApiServerOptions {
  /** Routes served before the built-in ones (e.g. `/snapshot/*`). */
  readonly routes?: readonly ApiRoute[];
  /** Client limits, overriding the defaults of `http.ts` field by field. */
  readonly limits?: Partial<HttpLimits>;
  /** Called after each reply (for logs and metrics). */
  readonly onExchange?: (e: HttpExchange) => void;
}

function describe(target: ApiTarget): unknown {
  return {
    state: target.state,
    vcpus: target.vcpuCount,
    memory: {
      mib: target.memory.size / MIB,
      regions: target.memory.regions.map((r) => ({ guest_addr: r.guestAddr, size: r.size })),
    },
  };
}

/** Runs lifecycle requests one at a time, in arrival order. */
export function serialQueue(): <T>(fn: () => Promise<T>) => Promise<T> {
  let queue: Promise<unknown> = Promise.resolve();
  return <T>(fn: () => Promise<T>): Promise<T> => {
    const run = queue.then(fn, fn);
    queue = run.catch((_err: unknown) => undefined); // errors reach the caller through `run`
    return run;
  };
}

/** The routes that drive a running machine: `GET/PATCH /vm`, `PUT /actions {Shutdown}`. */
export function machineRoutes(
  target: ApiTarget,
  serial: <T>(fn: () => Promise<T>) => Promise<T> = serialQueue(),
): ApiRoute[] {
  return [
    { method: "GET", path: "/vm", handler: () => json(200, describe(target)) },
    {
      method: "PATCH",
      path: "/vm",
      handler: async (ctx) => {
        const body = await ctx.body();
        onlyFields(body, ["state"]);
        const want = body.state;
        if (want !== "Paused" && want !== "Resumed") {
          throw new ApiFault(
            400,
            `'state' must be "Paused" or "Resumed", got ${JSON.stringify(want)}`,
          );
        }
        await serial(async () => {
          const now = target.state;
          if (want === "Paused") {
            if (now === "Paused") return;
            if (now !== "Running") throw new ApiFault(400, `cannot pause a VM that is ${now}`);
            await target.pause();
          } else {
            if (now === "Running") return;
            if (now !== "Paused") throw new ApiFault(400, `cannot resume a VM that is ${now}`);
            await target.resume();
          }
        });
        return noContent();
      },
    },
    {
      method: "PUT",
      path: "/actions",
      handler: async (ctx) => {
        const body = await ctx.body();
        onlyFields(body, ["action_type"]);
        const action = body.action_type;
        if (action !== "Shutdown") {
          throw new ApiFault(
            400,
            `'action_type' must be "Shutdown", got ${JSON.stringify(action)}`,
          );
        }
        await serial(async () => {
          if (target.state !== "Stopped") await target.stop();
        });
        return noContent();
      },
    },
  ];
}

/**
 * Builds the request handler for `target` (what {@link startApiServer} serves;
 * exposed to embed the API in another server).
 */
export function apiHandler(
  target: ApiTarget,
  routes: readonly ApiRoute[] = [],
): (req: Request) => Promise<Response> {
  const router = new ApiRouter().add(routes).add(machineRoutes(target));
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
  target: ApiTarget,
  opts: ApiServerOptions = {},
): Promise<ApiServer> {
  return await serveApiRoutes(path, apiHandler(target, opts.routes ?? []), opts);
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
