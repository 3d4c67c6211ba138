/**
 * FFI symbol table of the KVM shim (`vmkit_shim.c`) and the loader that opens
 * it. Works on the main thread and inside Workers: a Worker is handed the
 * library path and calls {@link openShim} with it, so it never rebuilds.
 *
 * @module
 */

import { buildShim } from "./build.ts";
import { dlopenLazily } from "./lazy_dlopen.ts";

/** Symbols of `vmkit_shim.c`. Every call is synchronous; vCPU Workers block in `vk_run`. */
export const SHIM_SYMBOLS = {
  vk_open: { parameters: ["buffer"], result: "i32" },
  vk_close: { parameters: ["i32"], result: "i32" },
  vk_get_api_version: { parameters: ["i32"], result: "i32" },
  vk_create_vm: { parameters: ["i32"], result: "i32" },
  vk_check_extension: { parameters: ["i32", "i32"], result: "i32" },
  vk_get_vcpu_mmap_size: { parameters: ["i32"], result: "i32" },
  vk_get_msr_index_list: { parameters: ["i32", "buffer", "u32"], result: "i32" },
  vk_get_supported_cpuid: { parameters: ["i32", "buffer", "u32"], result: "i32" },
  vk_set_tss_addr: { parameters: ["i32", "u64"], result: "i32" },
  vk_set_identity_map_addr: { parameters: ["i32", "u64"], result: "i32" },
  vk_create_irqchip: { parameters: ["i32"], result: "i32" },
  vk_create_pit2: { parameters: ["i32", "u32"], result: "i32" },
  vk_set_user_memory_region: {
    parameters: ["i32", "u32", "u32", "u64", "u64", "u64"],
    result: "i32",
  },
  vk_get_dirty_log: { parameters: ["i32", "u32", "buffer", "u64", "u64"], result: "i32" },
  vk_irq_line: { parameters: ["i32", "u32", "u32"], result: "i32" },
  vk_set_gsi_routing: { parameters: ["i32", "buffer", "u32"], result: "i32" },
  vk_create_vcpu: { parameters: ["i32", "u32"], result: "i32" },
  vk_vm_state_size: { parameters: ["i32"], result: "i32" },
  vk_vm_get: { parameters: ["i32", "i32", "buffer", "u32"], result: "i32" },
  vk_vm_set: { parameters: ["i32", "i32", "buffer", "u32"], result: "i32" },
  vk_run: { parameters: ["i32"], result: "i32" },
  vk_vcpu_state_size: { parameters: ["i32"], result: "i32" },
  vk_vcpu_get: { parameters: ["i32", "i32", "buffer", "u32"], result: "i32" },
  vk_vcpu_set: { parameters: ["i32", "i32", "buffer", "u32"], result: "i32" },
  vk_get_msrs: { parameters: ["i32", "buffer", "u32"], result: "i32" },
  vk_set_msrs: { parameters: ["i32", "buffer", "u32"], result: "i32" },
  vk_set_cpuid2: { parameters: ["i32", "buffer", "u32"], result: "i32" },
  vk_get_cpuid2: { parameters: ["i32", "buffer", "u32"], result: "i32" },
  vk_mmap_vcpu: { parameters: ["i32", "u64"], result: "i64" },
  vk_mmap_anon: { parameters: ["u64"], result: "i64" },
  vk_mmap_fd: { parameters: ["i32", "u64"], result: "i64" },
  vk_munmap: { parameters: ["u64", "u64"], result: "i32" },
  vk_madvise: { parameters: ["u64", "u64", "i32"], result: "i32" },
  vk_memfd_create: { parameters: ["buffer", "u64"], result: "i32" },
  vk_install_kick_handler: { parameters: [], result: "i32" },
  vk_thread_self: { parameters: [], result: "u64" },
  vk_kick: { parameters: ["u64", "u64"], result: "i32" },
  vk_strerror: { parameters: ["i32", "buffer", "u32"], result: "i32" },
} as const;

/** The opened shim's callable symbols. */
export type Shim = Deno.DynamicLibrary<typeof SHIM_SYMBOLS>["symbols"];

/** An opened shim together with the path it was loaded from (to hand to Workers). */
export interface LoadedShim {
  /** Path of the shared library. */
  readonly path: string;
  /** Its symbols. */
  readonly symbols: Shim;
}

let loaded: LoadedShim | undefined;

/**
 * Opens the shim at `path` (once per thread; later calls return the same
 * library whatever the path).
 */
export function openShim(path: string): LoadedShim {
  if (loaded !== undefined) return loaded;
  loaded = { path, symbols: dlopenLazily(path, SHIM_SYMBOLS) };
  return loaded;
}

/** Builds (if needed) and opens the shim; the usual entry on the main thread. */
export async function loadShim(): Promise<LoadedShim> {
  if (loaded !== undefined) return loaded;
  return openShim(await buildShim());
}

/** The shim if this thread has opened it already; throws otherwise. */
export function shim(): LoadedShim {
  if (loaded === undefined) {
    throw new Error("native: the shim is not open yet; call loadShim() or openShim(path) first");
  }
  return loaded;
}

/** A C string (NUL-terminated UTF-8) for `buffer` parameters. */
export function cString(s: string): Uint8Array<ArrayBuffer> {
  const bytes = new TextEncoder().encode(s);
  const out = new Uint8Array(bytes.length + 1);
  out.set(bytes);
  return out;
}

/** Converts a `u64`/`i64` FFI result (number or bigint) to bigint. */
export function toBigInt(v: number | bigint): bigint {
  return typeof v === "bigint" ? v : BigInt(v);
}
