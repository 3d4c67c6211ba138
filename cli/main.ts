/**
 * The `vmkit` command: dispatches to one module per subcommand.
 *
 * Each subcommand module (`cli/<name>.ts`) exports `main(args): Promise<number>`
 * returning the process exit status, and prints its own `--help`.
 *
 * @module
 */

/** What a subcommand module exports. */
export interface Subcommand {
  /** Runs the subcommand with the arguments after its name; returns the exit status. */
  main(args: string[]): Promise<number>;
}

const SUBCOMMANDS: Record<string, { summary: string; load: () => Promise<Subcommand> }> = {
  run: { summary: "boot a kernel in a new VM", load: () => import("./run.ts") },
  disk: { summary: "copy-on-write disk images (qcow2)", load: () => import("./disk.ts") },
  sui: { summary: "per-VM storage-network identities", load: () => import("./sui.ts") },
  san: { summary: "iSCSI discovery and probing", load: () => import("./san.ts") },
  netguard: { summary: "per-VM denial-of-service monitor", load: () => import("./netguard.ts") },
  dsm: { summary: "distributed shared memory nodes and programs", load: () => import("./dsm.ts") },
};

/** The top-level usage text. */
export function usage(): string {
  const lines = ["usage: vmkit <command> [options]", "", "commands:"];
  for (const [name, { summary }] of Object.entries(SUBCOMMANDS)) {
    lines.push(`  ${name.padEnd(10)} ${summary}`);
  }
  lines.push("", "Run `vmkit <command> --help` for the options of a command.");
  return lines.join("\n");
}

/** Runs the CLI with `args` and returns the exit status. */
export async function main(args: string[]): Promise<number> {
  const [name, ...rest] = args;
  if (name === undefined || name === "--help" || name === "-h" || name === "help") {
    console.log(usage());
    return name === undefined ? 2 : 0;
  }
  const entry = SUBCOMMANDS[name];
  if (entry === undefined) {
    console.error(`vmkit: unknown command '${name}'\n\n${usage()}`);
    return 2;
  }
  const mod = await entry.load();
  return await mod.main(rest);
}

if (import.meta.main) {
  Deno.exit(await main(Deno.args));
}
