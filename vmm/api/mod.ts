/**
 * vmkit control socket: a Firecracker-style HTTP/JSON API over a Unix socket
 * to inspect, pause, resume and shut down a running machine, served by a
 * small HTTP/1.1 server that bounds every client.
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
  type ApiServerOptions,
  serveApiRoutes,
  startApiServer,
} from "./server.ts";
export { serialQueue } from "./serial.ts";
export {
  type ApiVm,
  type DriveUpdate,
  type InstanceState,
  type NetUpdate,
  POST_BOOT_MESSAGE,
  PRE_BOOT_MESSAGE,
  VmController,
  type VmControllerOptions,
  type VmLauncher,
} from "./controller.ts";
export { API_EXTENSIONS, type ApiRouteFactory } from "./extensions.ts";
export { type ApiObservability, firecrackerRoutes } from "./fc_routes.ts";
export {
  LaunchError,
  launchMachine,
  type LaunchOptions,
  machineApiVm,
  machineConfigFrom,
} from "./launch.ts";
export { checkDrivePath, checkHostFile, checkIscsiUrl } from "./host_files.ts";
export * from "./vm_config.ts";
export * from "./vm_config_parse.ts";
export {
  driveConfig,
  type FullVmConfiguration,
  isIscsiUrl,
  mergeRateLimiter,
  netConfig,
  rateLimiterConfig,
  VmResources,
} from "./vm_resources.ts";
export { ApiServerError, listenPrivateUnix, type PrivateUnixListener } from "./socket.ts";
export {
  type ApiContext,
  ApiFault,
  type ApiRoute,
  ApiRouter,
  fault,
  json,
  MAX_BODY_BYTES,
  noContent,
  onlyFields,
  parseJsonObject,
} from "./router.ts";
export {
  DEFAULT_HTTP_LIMITS,
  type HttpExchange,
  type HttpHandler,
  type HttpLimits,
  type HttpServeOptions,
  type HttpServer,
  serveHttp,
} from "./http.ts";
export { ApiClientError, type ApiReply, apiRequest } from "./client.ts";
