/**
 * Route sets other parts of vmkit add to the control API from their own
 * files: a factory taking the {@link VmController} and returning routes.
 * {@link startApiServer} serves them before the built-in Firecracker routes.
 *
 * To add routes: write `myRoutes(ctl: VmController): ApiRoute[]` in your own
 * file (handlers throw `ApiFault(status, message)` for errors, read bodies
 * with `ctx.body()`, run lifecycle changes through `ctl.serial`, reach the
 * running machine as `ctl.vm?.machine`), and list it below.
 *
 * @module
 */

import type { VmController } from "./controller.ts";
import type { ApiRoute } from "./router.ts";
import { snapshotRoutes } from "../snapshot_api.ts";

/** Makes a route set for one controller. */
export type ApiRouteFactory = (ctl: VmController) => readonly ApiRoute[];

/** The route sets every control socket serves (besides the Firecracker routes). */
export const API_EXTENSIONS: readonly ApiRouteFactory[] = [snapshotRoutes];
