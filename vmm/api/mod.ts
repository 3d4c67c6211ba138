/**
 * vmkit control socket: a Firecracker-style HTTP/JSON API over a Unix socket
 * to inspect, pause, resume and shut down a running machine.
 *
 * @example
 * ```ts ignore
 * import { apiRequest, startApiServer } from "./mod.ts";
 * const server = await startApiServer("/tmp/vm.sock", machine);
 * console.log((await apiRequest("/tmp/vm.sock", "GET", "/vm")).body);
 * await apiRequest("/tmp/vm.sock", "PUT", "/actions", { action_type: "Shutdown" });
 * await server.close();
 * ```
 *
 * @module
 */

export type { ApiMemoryRegion, ApiTarget } from "./target.ts";
export {
  apiHandler,
  type ApiServer,
  ApiServerError,
  MAX_BODY_BYTES,
  startApiServer,
} from "./server.ts";
export { ApiClientError, type ApiReply, apiRequest } from "./client.ts";
