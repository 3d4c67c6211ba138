/**
 * Opens a SUI registry from a user-facing spec: a file path (the embedded
 * journal) or `etcd://HOST:PORT[/prefix]` (the fleet registry).
 *
 * @module
 */

import { EtcdSuiRegistry, parseEtcdUrl } from "./etcd_registry.ts";
import { FileSuiRegistry } from "./file_registry.ts";
import type { RegistryOptions, SuiRegistry } from "./registry.ts";

/**
 * Opens the registry named by `spec`.
 *
 * @example
 * ```ts
 * const reg = await openRegistry("etcd://127.0.0.1:2379");
 * await reg.close();
 * ```
 */
export async function openRegistry(
  spec: string,
  options: RegistryOptions = {},
): Promise<SuiRegistry> {
  if (spec.startsWith("etcd://")) {
    const { endpoint, prefix } = parseEtcdUrl(spec);
    return new EtcdSuiRegistry(endpoint, prefix === undefined ? options : { ...options, prefix });
  }
  return await FileSuiRegistry.open(spec, options);
}
