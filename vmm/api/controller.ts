/**
 * The VMM as the Firecracker-style API drives it: before `InstanceStart` it
 * holds {@link VmResources} that requests fill; `InstanceStart` hands them
 * to a launcher, which builds and starts the machine; afterwards requests go
 * to the running VM ({@link ApiVm}). The state names are Firecracker's
 * (`"Not started"`, `"Running"`, `"Paused"`), plus `"Stopped"` once the run
 * has ended.
 *
 * Requests that change the lifecycle (start, pause, resume, shutdown,
 * snapshots) run one at a time through {@link VmController.serial}.
 *
 * @module
 */

import type { RateLimiterConfig } from "../io_config.ts";
import type { Machine } from "../machine.ts";
import { ApiFault } from "./router.ts";
import { serialQueue } from "./serial.ts";
import type { ApiTarget } from "./target.ts";
import { VmResources } from "./vm_resources.ts";

/** Firecracker's instance states, and `"Stopped"` after the run ended. */
export type InstanceState = "Not started" | "Running" | "Paused" | "Stopped";

/** A drive update from `PATCH /drives/{id}`. */
export interface DriveUpdate {
  /** New image (or `iscsi://` URL) for the drive's back end. */
  readonly path?: string;
  /**
   * Rate limiter update, merged bucket by bucket as `RateLimiter.update`
   * does (left out: kept; 0-sized: removed; else replaced).
   */
  readonly rateLimiter?: RateLimiterConfig;
}

/** A NIC update from `PATCH /network-interfaces/{id}`. */
export interface NetUpdate {
  /** Receive rate limiter update (merged as {@link DriveUpdate.rateLimiter}). */
  readonly rxRateLimiter?: RateLimiterConfig;
  /** Transmit rate limiter update (merged as {@link DriveUpdate.rateLimiter}). */
  readonly txRateLimiter?: RateLimiterConfig;
}

/**
 * A started VM as the API drives it: the machine's lifecycle
 * ({@link ApiTarget}) and the post-boot operations it supports (each
 * optional: absent means the request answers 400 naming what is missing).
 */
export interface ApiVm extends ApiTarget {
  /** The machine itself, for routes that need more than this interface (snapshots). */
  readonly machine?: Machine;
  /** Presses Ctrl-Alt-Del on the i8042 keyboard (`SendCtrlAltDel`). */
  sendCtrlAltDel?(): void;
  /** Replaces a drive's back end or rate limiter (`PATCH /drives/{id}`). */
  updateDrive?(id: string, update: DriveUpdate): Promise<void>;
  /** Replaces a NIC's rate limiters (`PATCH /network-interfaces/{id}`). */
  updateNet?(id: string, update: NetUpdate): Promise<void>;
}

/** Builds and starts a VM from `resources` (called once, by `InstanceStart`). */
export type VmLauncher = (resources: VmResources) => Promise<ApiVm>;

/** Options of {@link VmController}. */
export interface VmControllerOptions {
  /** Instance id for `GET /` (Firecracker's `--id`); default `"anonymous-instance"`. */
  readonly id?: string;
  /** Starting resources (default: empty, Firecracker's defaults). */
  readonly resources?: VmResources;
  /** How `InstanceStart` builds the VM; absent: this controller cannot start one. */
  readonly launch?: VmLauncher;
  /** A VM already running (the API then serves it post-boot). */
  readonly vm?: ApiVm;
}

/** Firecracker's message for a pre-boot request after start. */
export const POST_BOOT_MESSAGE =
  "The requested operation is not supported after starting the microVM.";
/** Firecracker's message for a post-boot request before start. */
export const PRE_BOOT_MESSAGE =
  "The requested operation is not supported before starting the microVM.";

/**
 * The VMM's lifecycle as the API sees it.
 *
 * @example
 * ```ts ignore
 * import { VmController } from "./controller.ts";
 * const ctl = new VmController({ launch: async (r) => await bootFrom(r) });
 * // ... PUT /boot-source, PUT /machine-config over the API, then:
 * const vm = await ctl.start(); // what PUT /actions {"action_type":"InstanceStart"} does
 * ```
 */
export class VmController {
  /** Instance id. */
  readonly id: string;
  /** What the VM is (or was) built from. */
  readonly resources: VmResources;
  /** Runs lifecycle changes one at a time, in arrival order. */
  readonly serial: <T>(fn: () => Promise<T>) => Promise<T> = serialQueue();
  readonly #launch: VmLauncher | undefined;
  #vm: ApiVm | undefined;
  #shutDown = false;
  #resolveLaunched: (vm: ApiVm | undefined) => void = () => {};
  readonly #launched: Promise<ApiVm | undefined>;

  /** Creates the controller (started already when `opts.vm` is given). */
  constructor(opts: VmControllerOptions = {}) {
    this.id = opts.id ?? "anonymous-instance";
    this.resources = opts.resources ?? new VmResources();
    this.#launch = opts.launch;
    this.#vm = opts.vm;
    this.#launched = new Promise((resolve) => this.#resolveLaunched = resolve);
    if (opts.vm !== undefined) this.#resolveLaunched(opts.vm);
  }

  /** The running VM, once started. */
  get vm(): ApiVm | undefined {
    return this.#vm;
  }

  /** The instance state. */
  get state(): InstanceState {
    if (this.#vm === undefined) return this.#shutDown ? "Stopped" : "Not started";
    const s = this.#vm.state;
    if (s === "Running" || s === "Paused" || s === "Stopped") return s;
    return "Not started";
  }

  /** Resolves with the VM once started, or with undefined when shut down before starting. */
  launched(): Promise<ApiVm | undefined> {
    return this.#launched;
  }

  /** Throws Firecracker's 400 unless the VM has not started (a pre-boot request). */
  requirePreBoot(): void {
    if (this.#vm !== undefined || this.#shutDown) throw new ApiFault(400, POST_BOOT_MESSAGE);
  }

  /** The running VM, or Firecracker's 400 for a post-boot request before start. */
  requireStarted(): ApiVm {
    if (this.#vm === undefined) throw new ApiFault(400, PRE_BOOT_MESSAGE);
    return this.#vm;
  }

  /**
   * `InstanceStart`: launches the VM from the resources. A failed launch
   * leaves the controller "Not started" (the configuration can be fixed and
   * the start retried), as Firecracker's does for a bad kernel.
   */
  start(): Promise<ApiVm> {
    return this.serial(async () => {
      this.requirePreBoot();
      if (this.resources.bootSource === undefined) {
        throw new ApiFault(
          400,
          "Cannot start the microVM without a kernel: PUT /boot-source first",
        );
      }
      const launch = this.#launch;
      if (launch === undefined) {
        throw new ApiFault(400, "this VMM was not given a way to start a VM");
      }
      return await this.#become(() => launch(this.resources));
    });
  }

  /**
   * Starts the VM by other means than the boot source (a snapshot restore):
   * `create` builds and starts it. Pre-boot only; runs in {@link serial}.
   */
  adopt(create: () => Promise<ApiVm>): Promise<ApiVm> {
    return this.serial(async () => {
      this.requirePreBoot();
      return await this.#become(create);
    });
  }

  async #become(create: () => Promise<ApiVm>): Promise<ApiVm> {
    let vm: ApiVm;
    try {
      vm = await create();
    } catch (err) {
      if (err instanceof ApiFault) throw err;
      throw new ApiFault(400, `cannot start the microVM: ${(err as Error).message}`);
    }
    this.#vm = vm;
    this.#resolveLaunched(vm);
    return vm;
  }

  /** Stops the VM (or, before start, ends the wait for one). */
  shutdown(): Promise<void> {
    return this.serial(async () => {
      if (this.#vm === undefined) {
        this.#shutDown = true;
        this.#resolveLaunched(undefined);
        return;
      }
      if (this.#vm.state !== "Stopped") await this.#vm.stop();
    });
  }
}
