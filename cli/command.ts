/**
 * The shared preamble of every `vmkit` subcommand: a command is declared
 * once (name, positionals, option table, whether it prints a result or
 * shows progress) and {@link command} turns it into something `main.ts` runs,
 * `--help` prints and the completion scripts read.
 *
 * Every command gets `-h, --help`; a command that prints a result gets
 * `--output text|json` (JSON keys in kebab-case, as qemu-img's); a command
 * with long work gets `-p, --progress` and `-q, --quiet` (progress is shown
 * on a terminal only, unless forced or silenced). Usage errors print one line
 * and exit 64; other errors print one line and exit with the status the
 * command's `exitCode` gives them (default 1). See `exit.ts`.
 *
 * @example
 * ```ts
 * import { command } from "./command.ts";
 * import { int } from "./options.ts";
 * const hello = command({
 *   name: "hello",
 *   summary: "greets",
 *   args: ["NAME"],
 *   options: { times: int("N", "how often", { min: 1, max: 9, default: 1 }) },
 *   output: true,
 *   run(ctx) {
 *     const [name] = ctx.positionals;
 *     ctx.print({ greeting: `hello ${name}`, times: ctx.values.times }, () => `hello ${name}`);
 *     return 0;
 *   },
 * });
 * console.log(await hello.main(["world", "--times", "2", "--output", "json"]));
 * ```
 *
 * @module
 */

import { Exit } from "./exit.ts";
import {
  choice,
  type Completion,
  flag,
  optionHelp,
  type OptionTable,
  parseOptions,
  type Values,
} from "./options.ts";
import { UsageError } from "./usage.ts";

/** What a command's `run` gets. */
export interface Context<O extends OptionTable> {
  /** `"disk create"`: the command's words, for messages. */
  readonly name: string;
  /** The parsed options. */
  readonly values: Values<O>;
  /** The positional arguments. */
  readonly positionals: string[];
  /** The long names of the options given on the command line. */
  readonly given: ReadonlySet<string>;
  /** Whether `--output json` was asked for. */
  readonly json: boolean;
  /**
   * Prints the command's result: `result` as JSON (keys in kebab-case) under
   * `--output json`, else `text()` (nothing when it is empty).
   */
  print(result: unknown, text: () => string): void;
  /** A progress bar on stderr for `label`, or a no-op one when progress is off. */
  progress(label: string): ProgressBar;
}

/** A progress report: `done` of `total` units (bytes). */
export interface ProgressReport {
  /** Units done. */
  done: number;
  /** Units in all. */
  total: number;
}

/** A progress bar: `update` as work goes on, `done` once at the end. */
export interface ProgressBar {
  /** Redraws the bar (at most every 100 ms, and always at 100%). */
  update(p: ProgressReport): void;
  /** Ends the bar's line. */
  done(): void;
}

/** How a command is declared. */
export interface CommandSpec<O extends OptionTable> {
  /** The command's word (`create`). */
  name: string;
  /** One line for the command list. */
  summary: string;
  /** Positionals for the synopsis: `FILE`, `[BASE]` (optional), `FILE...` (any number). */
  args?: readonly string[];
  /** What a shell completes positionals with (default `file` when there are any). */
  argsComplete?: Completion;
  /** The synopsis after the command's words (default: `args` then `[options]`). */
  synopsis?: string;
  /** Paragraphs after the synopsis in `--help`. */
  description?: string;
  /** The options (without the common ones). */
  options: O;
  /** Adds `--output text|json`: the command prints a result. */
  output?: boolean;
  /** Adds `-p, --progress` and `-q, --quiet`: the command shows progress. */
  progress?: boolean;
  /** The exit status for an error `run` threw (default 1); `undefined` lets the error through. */
  exitCode?: (err: Error) => number | undefined;
  /** Does the work; returns the exit status. */
  run(ctx: Context<O>): number | Promise<number>;
}

/** A declared command, ready to run, print help or complete. */
export interface Command {
  /** The command's word. */
  readonly name: string;
  /** One line for the command list. */
  readonly summary: string;
  /** Positionals for the synopsis. */
  readonly args: readonly string[];
  /** What a shell completes positionals with. */
  readonly argsComplete: Completion;
  /** The synopsis after the command's words (`FILE [options]`). */
  readonly synopsis: string;
  /** Every option, the common ones included. */
  readonly options: OptionTable;
  /** The `--help` text; `path` is the words before the name (`["disk"]`). */
  help(path?: readonly string[]): string;
  /** Runs the command with the arguments after its name; returns the exit status. */
  main(args: string[], path?: readonly string[]): Promise<number>;
}

/** A command with sub-commands (`vmkit disk create`). */
export interface Group {
  /** The group's word (`disk`). */
  readonly name: string;
  /** One line for the command list. */
  readonly summary: string;
  /** Paragraphs after the command list in `--help`. */
  readonly description?: string;
  /** The sub-commands. */
  readonly commands: readonly Command[];
}

/** A top-level entry of `vmkit`: a command or a group. */
export type Entry = Command | Group;

/** Whether `e` is a group. */
export function isGroup(e: Entry): e is Group {
  return "commands" in e;
}

const OUTPUT_OPTIONS = {
  output: choice(["text", "json"], "print the result as text or JSON", { default: "text" }),
  json: flag("same as --output json", { hidden: true }),
};
const PROGRESS_OPTIONS = {
  progress: flag("show progress even when stderr is not a terminal", { short: "p" }),
  quiet: flag("show no progress", { short: "q" }),
};
const HELP_OPTION = { help: flag("show this help", { short: "h" }) };

/** Converts `camelCase` keys to `kebab-case`, recursively (JSON output as qemu-img's). */
export function kebabKeys(v: unknown): unknown {
  if (Array.isArray(v)) return v.map(kebabKeys);
  if (typeof v === "bigint") return Number(v);
  if (v === null || typeof v !== "object" || v instanceof Uint8Array) return v;
  const out: Record<string, unknown> = {};
  for (const [k, x] of Object.entries(v)) {
    out[k.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)] = kebabKeys(x);
  }
  return out;
}

function human(n: number): string {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  let v = n;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return i === 0 ? `${n} B` : `${v.toFixed(1)} ${units[i]}`;
}

const NO_PROGRESS: ProgressBar = { update: () => {}, done: () => {} };

/** A progress bar on stderr, redrawn at most every 100 ms. */
export function progressBar(label: string): ProgressBar {
  const enc = new TextEncoder();
  let last = 0;
  let shown = false;
  return {
    update(p: ProgressReport): void {
      const now = performance.now();
      if (now - last < 100 && p.done < p.total) return;
      last = now;
      const frac = p.total === 0 ? 1 : p.done / p.total;
      const width = 30;
      const fill = Math.round(frac * width);
      const bar = "#".repeat(fill) + ".".repeat(width - fill);
      Deno.stderr.writeSync(enc.encode(
        `\r${label} [${bar}] ${(frac * 100).toFixed(0).padStart(3)}% ` +
          `${human(p.done)} / ${human(p.total)}`,
      ));
      shown = true;
    },
    done(): void {
      if (shown) Deno.stderr.writeSync(enc.encode("\n"));
      shown = false;
    },
  };
}

/** Whether `args` ask for help before any `--`. */
function wantsHelp(args: readonly string[]): boolean {
  for (const a of args) {
    if (a === "--") return false;
    if (a === "--help" || a === "-h") return true;
  }
  return false;
}

function positionalCount(args: readonly string[]): { min: number; max: number } {
  let min = 0;
  let max = 0;
  for (const a of args) {
    if (a.endsWith("...")) max = Infinity;
    else max++;
    if (!a.startsWith("[")) min++;
  }
  return { min, max };
}

/** The one-line error every command prints for `err`. */
export function errorLine(name: string, err: Error): string {
  const first = err.message.split("\n")[0] ?? err.name;
  return `vmkit ${name}: ${first}`;
}

/** Declares a command (see the module doc). */
export function command<O extends OptionTable>(spec: CommandSpec<O>): Command {
  const options: OptionTable = {
    ...spec.options,
    ...(spec.output === true ? OUTPUT_OPTIONS : {}),
    ...(spec.progress === true ? PROGRESS_OPTIONS : {}),
    ...HELP_OPTION,
  };
  const args = spec.args ?? [];
  const synopsis = spec.synopsis ?? [...args, "[options]"].join(" ");
  const help = (path: readonly string[] = []): string => {
    const words = ["vmkit", ...path, spec.name].join(" ");
    return [
      `usage: ${words} ${synopsis}`,
      "",
      spec.summary.charAt(0).toUpperCase() + spec.summary.slice(1) + ".",
      ...(spec.description === undefined ? [] : ["", spec.description]),
      "",
      "options:",
      ...optionHelp(options),
    ].join("\n");
  };
  const main = async (argv: string[], path: readonly string[] = []): Promise<number> => {
    const name = [...path, spec.name].join(" ");
    if (wantsHelp(argv)) {
      console.log(help(path));
      return Exit.OK;
    }
    try {
      const parsed = parseOptions(options, argv, positionalCount(args));
      const all = parsed.values as Record<string, unknown>;
      const json = all.output === "json" || all.json === true;
      const showProgress = all.quiet !== true &&
        (all.progress === true || (spec.progress === true && Deno.stderr.isTerminal()));
      const ctx: Context<O> = {
        name,
        values: parsed.values as Values<O>,
        positionals: parsed.positionals,
        given: parsed.given,
        json,
        print(result, text) {
          const out = json ? JSON.stringify(kebabKeys(result), null, 2) : text();
          if (out !== "") console.log(out);
        },
        progress: (label) => showProgress ? progressBar(label) : NO_PROGRESS,
      };
      return await spec.run(ctx);
    } catch (err) {
      if (err instanceof UsageError) {
        console.error(`${errorLine(name, err)} (see vmkit ${name} --help)`);
        return Exit.USAGE;
      }
      if (!(err instanceof Error)) throw err;
      const code = spec.exitCode === undefined ? Exit.FAILURE : spec.exitCode(err);
      if (code === undefined) throw err;
      console.error(errorLine(name, err));
      if (Deno.env.get("VMKIT_DEBUG") === "1") console.error(err.stack);
      return code;
    }
  };
  return {
    name: spec.name,
    summary: spec.summary,
    args,
    argsComplete: spec.argsComplete ?? (args.length > 0 ? "file" : "none"),
    synopsis,
    options,
    help,
    main,
  };
}

/** The `--help` text of a group. */
export function groupHelp(g: Group): string {
  const width = Math.max(...g.commands.map((c) => c.name.length)) + 2;
  return [
    "usage:",
    ...g.commands.map((c) => `  vmkit ${g.name} ${c.name} ${c.synopsis}`),
    "",
    g.summary.charAt(0).toUpperCase() + g.summary.slice(1) + ".",
    "",
    "commands:",
    ...g.commands.map((c) => `  ${c.name.padEnd(width)}${c.summary}`),
    ...(g.description === undefined ? [] : ["", g.description]),
    "",
    `Run 'vmkit ${g.name} <command> --help' for the options of a command.`,
  ].join("\n");
}

/** Runs a group with the arguments after its name; returns the exit status. */
export async function runGroup(g: Group, args: string[]): Promise<number> {
  const [sub, ...rest] = args;
  if (sub === undefined) {
    console.error(groupHelp(g));
    return Exit.USAGE;
  }
  if (sub === "--help" || sub === "-h" || sub === "help") {
    const target = sub === "help" ? g.commands.find((c) => c.name === rest[0]) : undefined;
    console.log(target === undefined ? groupHelp(g) : target.help([g.name]));
    return Exit.OK;
  }
  const c = g.commands.find((x) => x.name === sub);
  if (c === undefined) {
    const names = g.commands.map((x) => x.name).join(", ");
    console.error(
      `vmkit ${g.name}: unknown subcommand '${sub}' (expected ${names}; see vmkit ${g.name} --help)`,
    );
    return Exit.USAGE;
  }
  return await c.main(rest, [g.name]);
}

/** Runs a top-level entry with the arguments after its name. */
export async function runEntry(e: Entry, args: string[]): Promise<number> {
  return isGroup(e) ? await runGroup(e, args) : await e.main(args);
}
