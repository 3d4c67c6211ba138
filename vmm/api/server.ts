/**
 * The control socket: HTTP/1.1 over a Unix socket, JSON bodies, in the style
 * of Firecracker's API.
 *
 * | method | path       | body                                  | reply                        |
 * | ------ | ---------- | ------------------------------------- | ---------------------------- |
 * | GET    | `/vm`      |                                       | 200 `{state, vcpus, memory}` |
 * | PATCH  | `/vm`      | `{"state": "Paused" \| "Resumed"}`    | 204                          |
 * | PUT    | `/actions` | `{"action_type": "Shutdown"}`         | 204, then the machine stops  |
 *
 * Errors reply `{"fault_message": "…"}`: 400 for a bad body or a request the
 * VM's state forbids, 404 for an unknown path, 405 for a wrong method, 500
 * when the machine itself fails.
 *
 * @module
 */

import type { ApiTarget } from "./target.ts";

/** Largest request body accepted. */
export const MAX_BODY_BYTES = 64 * 1024;
const MIB = 1024 * 1024;

/** Raised when the control socket cannot be created. */
export class ApiServerError extends Error {
  /** Creates the error for socket `path`. */
  constructor(path: string, detail: string) {
    super(`api socket ${path}: ${detail}`);
    this.name = "ApiServerError";
  }
}

/** A running control socket. */
export interface ApiServer {
  /** The socket path. */
  readonly path: string;
  /** Stops accepting requests, waits for those in flight and removes the socket file. */
  close(): Promise<void>;
}

/** A client error: replied with `status` and the message as `fault_message`. */
class Fault extends Error {
  constructor(readonly status: number, message: string) {
    super(message);
  }
}

function json(status: number, body: unknown, headers: Record<string, string> = {}): Response {
  return new Response(JSON.stringify(body), {
    status,
    headers: { "content-type": "application/json", ...headers },
  });
}

function fault(status: number, message: string, headers: Record<string, string> = {}): Response {
  return json(status, { fault_message: message }, headers);
}

async function readJsonObject(req: Request): Promise<Record<string, unknown>> {
  const declared = Number(req.headers.get("content-length") ?? "0");
  if (declared > MAX_BODY_BYTES) {
    throw new Fault(400, `request body of ${declared} bytes exceeds ${MAX_BODY_BYTES}`);
  }
  const bytes = new Uint8Array(await req.arrayBuffer());
  if (bytes.length > MAX_BODY_BYTES) {
    throw new Fault(400, `request body exceeds ${MAX_BODY_BYTES} bytes`);
  }
  let value: unknown;
  try {
    value = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(bytes));
  } catch (err) {
    throw new Fault(400, `request body is not valid JSON: ${(err as Error).message}`);
  }
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    throw new Fault(400, "request body must be a JSON object");
  }
  return value as Record<string, unknown>;
}

function onlyFields(body: Record<string, unknown>, allowed: readonly string[]): void {
  for (const key of Object.keys(body)) {
    if (!allowed.includes(key)) {
      throw new Fault(400, `unknown field '${key}' (allowed: ${allowed.join(", ")})`);
    }
  }
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

/**
 * Builds the request handler for `target` (what {@link startApiServer} serves;
 * exposed to embed the API in another server).
 */
export function apiHandler(target: ApiTarget): (req: Request) => Promise<Response> {
  // Lifecycle requests run one at a time, in arrival order.
  let queue: Promise<unknown> = Promise.resolve();
  const serial = <T>(fn: () => Promise<T>): Promise<T> => {
    const run = queue.then(fn, fn);
    queue = run.catch((_err: unknown) => undefined); // errors reach the caller through `run`
    return run;
  };

  const patchVm = async (req: Request): Promise<Response> => {
    const body = await readJsonObject(req);
    onlyFields(body, ["state"]);
    const want = body.state;
    if (want !== "Paused" && want !== "Resumed") {
      throw new Fault(400, `'state' must be "Paused" or "Resumed", got ${JSON.stringify(want)}`);
    }
    await serial(async () => {
      const now = target.state;
      if (want === "Paused") {
        if (now === "Paused") return;
        if (now !== "Running") throw new Fault(400, `cannot pause a VM that is ${now}`);
        await target.pause();
      } else {
        if (now === "Running") return;
        if (now !== "Paused") throw new Fault(400, `cannot resume a VM that is ${now}`);
        await target.resume();
      }
    });
    return new Response(null, { status: 204 });
  };

  const putActions = async (req: Request): Promise<Response> => {
    const body = await readJsonObject(req);
    onlyFields(body, ["action_type"]);
    const action = body.action_type;
    if (action !== "Shutdown") {
      throw new Fault(
        400,
        `'action_type' must be "Shutdown", got ${JSON.stringify(action)}`,
      );
    }
    await serial(async () => {
      if (target.state !== "Stopped") await target.stop();
    });
    return new Response(null, { status: 204 });
  };

  return async (req: Request): Promise<Response> => {
    const path = new URL(req.url).pathname;
    try {
      if (path === "/vm") {
        if (req.method === "GET") return json(200, describe(target));
        if (req.method === "PATCH") return await patchVm(req);
        return fault(405, `method ${req.method} is not allowed on /vm`, { allow: "GET, PATCH" });
      }
      if (path === "/actions") {
        if (req.method === "PUT") return await putActions(req);
        return fault(405, `method ${req.method} is not allowed on /actions`, { allow: "PUT" });
      }
      return fault(404, `no such resource '${path}' (try /vm or /actions)`);
    } catch (err) {
      if (err instanceof Fault) return fault(err.status, err.message);
      return fault(500, `the machine failed: ${(err as Error).message}`);
    }
  };
}

async function removeStaleSocket(path: string): Promise<void> {
  let info: Deno.FileInfo;
  try {
    info = await Deno.lstat(path);
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) return;
    throw new ApiServerError(path, `cannot inspect it: ${(err as Error).message}`);
  }
  if (info.isSocket !== true) {
    throw new ApiServerError(path, "exists and is not a socket; pick another path or remove it");
  }
  try {
    const conn = await Deno.connect({ transport: "unix", path });
    conn.close();
  } catch (err) {
    if (err instanceof Deno.errors.ConnectionRefused || err instanceof Deno.errors.NotFound) {
      await Deno.remove(path); // nobody listens: a leftover of a previous run
      return;
    }
    throw new ApiServerError(path, `cannot probe it: ${(err as Error).message}`);
  }
  throw new ApiServerError(path, "another process is serving on it; stop it or pick another path");
}

/**
 * Serves the control API for `target` on the Unix socket `path` (removing a
 * stale socket file left by a previous run first).
 *
 * @example
 * ```ts ignore
 * import { startApiServer } from "./server.ts";
 * const server = await startApiServer("/tmp/vm.sock", machine);
 * // curl --unix-socket /tmp/vm.sock http://localhost/vm
 * await server.close();
 * ```
 */
export async function startApiServer(path: string, target: ApiTarget): Promise<ApiServer> {
  await removeStaleSocket(path);
  let server: Deno.HttpServer<Deno.UnixAddr>;
  try {
    server = Deno.serve({ path, transport: "unix", onListen() {} }, apiHandler(target));
  } catch (err) {
    throw new ApiServerError(path, `cannot listen: ${(err as Error).message}`);
  }
  let closed: Promise<void> | undefined;
  return {
    path,
    close(): Promise<void> {
      closed ??= (async () => {
        await server.shutdown();
        try {
          await Deno.remove(path);
        } catch (err) {
          if (!(err instanceof Deno.errors.NotFound)) throw err;
        }
      })();
      return closed;
    },
  };
}
