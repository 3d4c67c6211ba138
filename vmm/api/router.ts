/**
 * The control API's routes: a table of `{method, path, handler}` that other
 * files extend with their own ({@link ApiRoute}), JSON helpers, and the
 * error type handlers throw ({@link ApiFault}) to reply
 * `{"fault_message": …}` with a status.
 *
 * A path is literal segments and `{name}` segments, each `{name}` matching
 * one non-empty segment (percent-decoded into `ctx.params.name`), as in
 * Firecracker's swagger (`/drives/{drive_id}`).
 *
 * @module
 */

/** Largest request body accepted (the HTTP layer enforces it while reading). */
export const MAX_BODY_BYTES = 64 * 1024;

/** A reply with `status` and `{"fault_message": message}`; handlers throw it. */
export class ApiFault extends Error {
  /** Creates the fault. */
  constructor(readonly status: number, message: string) {
    super(message);
    this.name = "ApiFault";
  }
}

/** What a route handler gets. */
export interface ApiContext {
  /** The request (its body is at most {@link MAX_BODY_BYTES}). */
  readonly req: Request;
  /** The request path. */
  readonly path: string;
  /** Values of the path's `{name}` segments. */
  readonly params: Readonly<Record<string, string>>;
  /** Reads the body as one JSON object, or throws a 400 {@link ApiFault}. */
  body(): Promise<Record<string, unknown>>;
}

/** One route. */
export interface ApiRoute {
  /** HTTP method, upper case. */
  readonly method: string;
  /** Path pattern, e.g. `/snapshot/create` or `/drives/{drive_id}`. */
  readonly path: string;
  /** Handles a matching request. */
  readonly handler: (ctx: ApiContext) => Response | Promise<Response>;
}

/** A JSON reply. */
export function json(
  status: number,
  body: unknown,
  headers: Record<string, string> = {},
): Response {
  return new Response(JSON.stringify(body), {
    status,
    headers: { "content-type": "application/json", ...headers },
  });
}

/** A 204 reply. */
export function noContent(): Response {
  return new Response(null, { status: 204 });
}

/** A `{"fault_message": …}` reply. */
export function fault(
  status: number,
  message: string,
  headers: Record<string, string> = {},
): Response {
  return json(status, { fault_message: message }, headers);
}

/** Parses `bytes` as one JSON object (UTF-8), or throws a 400 {@link ApiFault}. */
export function parseJsonObject(bytes: Uint8Array): Record<string, unknown> {
  if (bytes.length > MAX_BODY_BYTES) {
    throw new ApiFault(400, `request body exceeds ${MAX_BODY_BYTES} bytes`);
  }
  let value: unknown;
  try {
    value = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(bytes));
  } catch (err) {
    throw new ApiFault(400, `request body is not valid JSON: ${(err as Error).message}`);
  }
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    throw new ApiFault(400, "request body must be a JSON object");
  }
  return value as Record<string, unknown>;
}

/** Throws a 400 {@link ApiFault} naming the first key of `body` not in `allowed`. */
export function onlyFields(body: Record<string, unknown>, allowed: readonly string[]): void {
  for (const key of Object.keys(body)) {
    if (!allowed.includes(key)) {
      throw new ApiFault(400, `unknown field '${key}' (allowed: ${allowed.join(", ")})`);
    }
  }
}

interface Compiled {
  route: ApiRoute;
  segments: readonly string[];
}

function splitPath(path: string): string[] {
  return path.split("/").slice(1);
}

function match(
  segments: readonly string[],
  path: readonly string[],
): Record<string, string> | null {
  if (segments.length !== path.length) return null;
  const params: Record<string, string> = {};
  for (let i = 0; i < segments.length; i++) {
    const want = segments[i] ?? "";
    const got = path[i] ?? "";
    if (want.startsWith("{") && want.endsWith("}")) {
      if (got === "") return null;
      let value: string;
      try {
        value = decodeURIComponent(got);
      } catch (err) {
        if (err instanceof URIError) return null; // bad percent-encoding matches no route
        throw err;
      }
      params[want.slice(1, -1)] = value;
    } else if (want !== got) return null;
  }
  return params;
}

/**
 * A route table; {@link ApiRouter.handle} dispatches a request, answering 404
 * for an unknown path and 405 (with `Allow`) for a known path and another method.
 *
 * @example
 * ```ts
 * import { ApiRouter, json } from "./router.ts";
 * const router = new ApiRouter().add([
 *   { method: "GET", path: "/hello/{name}", handler: (ctx) => json(200, ctx.params) },
 * ]);
 * const res = await router.handle(new Request("http://localhost/hello/vm"));
 * console.log(res.status, await res.json()); // 200 { name: "vm" }
 * ```
 */
export class ApiRouter {
  readonly #routes: Compiled[] = [];

  /** Adds `routes`; throws on a method and path already taken. */
  add(routes: readonly ApiRoute[]): this {
    for (const route of routes) {
      const taken = this.#routes.find((c) =>
        c.route.method === route.method && c.route.path === route.path
      );
      if (taken !== undefined) {
        throw new Error(`api router: ${route.method} ${route.path} is already routed`);
      }
      if (!route.path.startsWith("/")) {
        throw new Error(`api router: path '${route.path}' must start with '/'`);
      }
      this.#routes.push({ route, segments: splitPath(route.path) });
    }
    return this;
  }

  /** The routes, in the order added. */
  get routes(): readonly ApiRoute[] {
    return this.#routes.map((c) => c.route);
  }

  /** Dispatches `req`; a thrown {@link ApiFault} becomes its reply, any other error a 500. */
  async handle(req: Request): Promise<Response> {
    const path = new URL(req.url).pathname;
    const parts = splitPath(path);
    const allowed: string[] = [];
    try {
      for (const { route, segments } of this.#routes) {
        const params = match(segments, parts);
        if (params === null) continue;
        if (route.method !== req.method) {
          if (!allowed.includes(route.method)) allowed.push(route.method);
          continue;
        }
        const ctx: ApiContext = {
          req,
          path,
          params,
          body: async () => parseJsonObject(new Uint8Array(await req.arrayBuffer())),
        };
        return await route.handler(ctx);
      }
      if (allowed.length > 0) {
        return fault(405, `method ${req.method} is not allowed on ${path}`, {
          allow: allowed.join(", "),
        });
      }
      return fault(404, `no such resource '${path}'`);
    } catch (err) {
      if (err instanceof ApiFault) return fault(err.status, err.message);
      return fault(500, `the machine failed: ${(err as Error).message}`);
    }
  }
}
