/**
 * The `vmkit` command: dispatches to one module per subcommand.
 *
 * Each subcommand module (`cli/<name>.ts`) exports `entry`, a {@link Entry}
 * declared with `command()` (see `command.ts`): its option table drives the
 * parser, `--help` and the shell completion scripts (`vmkit completion bash`).
 *
 * @module
 */

import { VERSION } from "../version.ts";
import { type Entry, isGroup, runEntry } from "./command.ts";
import { Exit, exitTableText } from "./exit.ts";
import { traceStartup } from "../vmm/startup_trace.ts";

traceStartup("cli: main module evaluated");

/** A top-level subcommand: its summary and how to load its module. */
interface Loader {
  summary: string;
  load: () => Promise<{ entry: Entry }>;
  /** Work to start before the module loads (not for `--help`). */
  early?: () => Promise<void>;
}

const SUBCOMMANDS: Record<string, Loader> = {
  run: {
    summary: "boot a kernel in a new VM",
    load: () => import("./run.ts"),
    // The vCPU Worker starts (and loads its modules) while run.ts's modules load here, and
    // the machine's modules (which a boot imports next) load beside run.ts's.
    early: async () => {
      await Promise.all([
        import("../vmm/vcpu_pool.ts").then((pool) => pool.prestartVcpuWorker()),
        import("../vmm/machine.ts"),
      ]);
    },
  },
  disk: { summary: "copy-on-write disk images (qcow2)", load: () => import("./disk.ts") },
  checkpoint: {
    summary: "live checkpoints: inspect, verify, merge",
    load: () => import("./checkpoint.ts"),
  },
  sui: { summary: "per-VM storage-network identities", load: () => import("./sui.ts") },
  san: { summary: "iSCSI discovery and probing", load: () => import("./san.ts") },
  netguard: { summary: "per-VM denial-of-service monitor", load: () => import("./netguard.ts") },
  dsm: { summary: "distributed shared memory nodes and programs", load: () => import("./dsm.ts") },
  completion: {
    summary: "print a bash or zsh completion script",
    load: () => import("./completion_cmd.ts"),
  },
};

/** Loads every subcommand's entry (for completion scripts), in `--help` order. */
export async function allEntries(): Promise<Entry[]> {
  const out: Entry[] = [];
  for (const l of Object.values(SUBCOMMANDS)) out.push((await l.load()).entry);
  return out;
}

/** The top-level usage text. */
export function usage(): string {
  const lines = ["usage: vmkit <command> [options]", "", "commands:"];
  for (const [name, { summary }] of Object.entries(SUBCOMMANDS)) {
    lines.push(`  ${name.padEnd(11)} ${summary}`);
  }
  lines.push(
    "",
    "options:",
    "  -h, --help   show this help",
    "  --version    print the vmkit version",
    "",
    exitTableText(),
    "",
    "Run `vmkit <command> --help` for the options of a command.",
  );
  return lines.join("\n");
}

/** Runs the CLI with `args` and returns the exit status. */
export async function main(args: string[]): Promise<number> {
  const [name, ...rest] = args;
  if (name === undefined || name === "--help" || name === "-h") {
    if (name === undefined) console.error(usage());
    else console.log(usage());
    return name === undefined ? Exit.USAGE : Exit.OK;
  }
  if (name === "--version" || name === "-V") {
    console.log(`vmkit ${VERSION}`);
    return Exit.OK;
  }
  if (name === "help") {
    // `vmkit help disk create` is `vmkit disk create --help`.
    const sub = rest[0] === undefined ? undefined : SUBCOMMANDS[rest[0]];
    if (sub === undefined) {
      console.log(usage());
      return Exit.OK;
    }
    const entry = (await sub.load()).entry;
    return await runEntry(entry, isGroup(entry) ? ["help", ...rest.slice(1)] : ["--help"]);
  }
  const loader = SUBCOMMANDS[name];
  if (loader === undefined) {
    console.error(`vmkit: unknown command '${name}' (see vmkit --help)`);
    return Exit.USAGE;
  }
  const help = rest.includes("--help") || rest.includes("-h");
  const [{ entry }] = await Promise.all([loader.load(), help ? undefined : loader.early?.()]);
  traceStartup(`cli: ${name} module loaded`);
  return await runEntry(entry, rest);
}

if (import.meta.main) {
  const code = await main(Deno.args);
  traceStartup("cli: exit");
  Deno.exit(code);
}
