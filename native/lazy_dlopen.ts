/**
 * `Deno.dlopen` whose symbols are bound on first use. Binding a symbol costs
 * Deno a fraction of a millisecond (it builds the call's fast path), so
 * opening the whole KVM shim (dozens of symbols) took 9–20 ms on every
 * thread of every start, most of it for symbols that thread never calls (a
 * vCPU Worker calls three or four). The library itself is opened at once, so
 * a bad path still fails where it is opened.
 *
 * @example
 * ```ts ignore
 * // ignore: needs the built shim.
 * import { dlopenLazily } from "./lazy_dlopen.ts";
 * const sym = dlopenLazily("/path/vmkit_shim.so", { vk_thread_self: { parameters: [], result: "u64" } });
 * sym.vk_thread_self(); // bound here, on first use
 * ```
 *
 * @module
 */

/** The symbols of `symbols` in `path`, each bound when first read. */
export function dlopenLazily<const S extends Deno.ForeignLibraryInterface>(
  path: string,
  symbols: S,
): Deno.DynamicLibrary<S>["symbols"] {
  // Opens (and checks) the library now; it stays open for the process, as before.
  Deno.dlopen(path, {});
  const out = {} as Deno.DynamicLibrary<S>["symbols"];
  for (const name of Object.keys(symbols) as (keyof S & string)[]) {
    let fn: Deno.DynamicLibrary<S>["symbols"][typeof name] | undefined;
    // A getter that keeps its function (not a redefinition as a value, which would
    // turn the object into a slow dictionary); hot loops take the function once anyway.
    Object.defineProperty(out, name, {
      enumerable: true,
      get() {
        fn ??= Deno.dlopen(path, { [name]: symbols[name] } as Pick<S, typeof name>).symbols[name];
        return fn;
      },
    });
  }
  return out;
}
