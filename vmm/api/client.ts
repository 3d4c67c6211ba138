/**
 * A small client for the control socket, for tools and tests.
 *
 * @module
 */

/** A reply from the control socket. */
export interface ApiReply {
  /** HTTP status. */
  readonly status: number;
  /** Parsed JSON body, or `undefined` for an empty body. */
  readonly body: unknown;
}

/** Raised when the control socket cannot be reached or replies with something other than JSON. */
export class ApiClientError extends Error {
  /** Creates the error for socket `path`. */
  constructor(path: string, detail: string) {
    super(`api client ${path}: ${detail}`);
    this.name = "ApiClientError";
  }
}

/**
 * Sends `method resource` with an optional body (an object is sent as JSON,
 * a string as is) to the control socket at `socketPath`.
 *
 * @example
 * ```ts ignore
 * import { apiRequest } from "./client.ts";
 * const { body } = await apiRequest("/tmp/vm.sock", "GET", "/vm");
 * await apiRequest("/tmp/vm.sock", "PATCH", "/vm", { state: "Paused" });
 * ```
 */
export async function apiRequest(
  socketPath: string,
  method: string,
  resource: string,
  body?: unknown,
): Promise<ApiReply> {
  const client = Deno.createHttpClient({ proxy: { transport: "unix", path: socketPath } });
  try {
    const init: RequestInit & { client: Deno.HttpClient } = { method, client };
    if (body !== undefined) {
      init.body = typeof body === "string" ? body : JSON.stringify(body);
      init.headers = { "content-type": "application/json" };
    }
    let res: Response;
    try {
      res = await fetch(`http://localhost${resource}`, init);
    } catch (err) {
      throw new ApiClientError(socketPath, `request failed: ${(err as Error).message}`);
    }
    const text = await res.text();
    if (text === "") return { status: res.status, body: undefined };
    try {
      return { status: res.status, body: JSON.parse(text) };
    } catch (err) {
      throw new ApiClientError(
        socketPath,
        `reply ${res.status} is not JSON (${(err as Error).message})`,
      );
    }
  } finally {
    client.close();
  }
}
