/**
 * Option tables for the `vmkit` subcommands: one description of each option
 * that the parser, the `--help` text and the shell completion scripts all
 * read, so the three never disagree.
 *
 * An option is made with one of the builders ({@link flag}, {@link str},
 * {@link int}, {@link size}, {@link choice}, {@link list}); each knows how to
 * turn its text into a typed value and names the option when the text is bad.
 *
 * @example
 * ```ts
 * import { int, parseOptions, str } from "./options.ts";
 * const opts = {
 *   mem: int("MiB", "guest RAM", { min: 1, max: 65536, default: 256 }),
 *   kernel: str("PATH", "kernel image", { complete: "file" }),
 * };
 * const { values } = parseOptions(opts, ["--mem", "128"], { min: 0, max: 0 });
 * console.log(values.mem + 1); // 129
 * ```
 *
 * @module
 */

import { UsageError } from "./usage.ts";

/** What a shell may complete an option's value (or a positional) with. */
export type Completion = "file" | "dir" | "none";

/** One option of a command: its help, how it completes and how its text becomes a value. */
export interface Opt<T> {
  /** `flag` options take no value; `value` options take one; `list` options repeat. */
  readonly kind: "flag" | "value" | "list";
  /** One-letter alias (`-p`). */
  readonly short?: string;
  /** The value's placeholder in `--help` (`BYTES`, `PATH`). */
  readonly value?: string;
  /** One line for `--help`. */
  readonly help: string;
  /** The values a shell offers (and the only ones accepted). */
  readonly choices?: readonly string[];
  /** What a shell completes the value with (default: nothing). */
  readonly complete?: Completion;
  /** Kept out of `--help` and completion (an old spelling kept working). */
  readonly hidden?: boolean;
  /** The value when the option is absent. */
  readonly fallback: T;
  /**
   * A `value` option that may also be given alone (`--netguard`, or followed
   * by an option): then its value is this. `--name VALUE` and `--name=VALUE` still work.
   */
  readonly bare?: T;
  /** Turns the option's text into its value; `name` is `--opt` for messages. */
  parse(text: string, name: string): T;
}

/** A command's options by long name (`"cluster-size"`). */
export type OptionTable = Record<string, Opt<unknown>>;

/** The parsed values of an option table. */
export type Values<O extends OptionTable> = {
  [K in keyof O]: O[K] extends Opt<infer T> ? T : never;
};

/** Common fields of every builder's settings. */
export interface OptSettings {
  /** One-letter alias. */
  short?: string;
  /** What a shell completes the value with. */
  complete?: Completion;
  /** Kept out of `--help` and completion. */
  hidden?: boolean;
}

function base(settings: OptSettings): Pick<Opt<unknown>, "short" | "complete" | "hidden"> {
  return {
    ...(settings.short === undefined ? {} : { short: settings.short }),
    ...(settings.complete === undefined ? {} : { complete: settings.complete }),
    ...(settings.hidden === undefined ? {} : { hidden: settings.hidden }),
  };
}

/** A switch without a value: `true` when given. */
export function flag(help: string, settings: OptSettings = {}): Opt<boolean> {
  return { kind: "flag", help, fallback: false, parse: () => true, ...base(settings) };
}

/** A string option. */
export function str(value: string, help: string, settings?: OptSettings): Opt<string | undefined>;
/** A string option with a default. */
export function str(
  value: string,
  help: string,
  settings: OptSettings & { default: string },
): Opt<string>;
export function str(
  value: string,
  help: string,
  settings: OptSettings & { default?: string } = {},
): Opt<string | undefined> {
  return {
    kind: "value",
    value,
    help,
    fallback: settings.default,
    parse: (t) => t,
    ...base(settings),
  };
}

/** A string option whose value may be left out (`--netguard [POLICY]`): `bare` is then its value. */
export function optionalStr(
  value: string,
  help: string,
  bare: string,
  settings: OptSettings = {},
): Opt<string | undefined> {
  return {
    kind: "value",
    value,
    help,
    fallback: undefined,
    bare,
    parse: (t) => t,
    ...base(settings),
  };
}

/** A repeatable string option (`--param A=1 --param B=2`). */
export function list(value: string, help: string, settings: OptSettings = {}): Opt<string[]> {
  return { kind: "list", value, help, fallback: [], parse: (t) => [t], ...base(settings) };
}

/** Range and default of a number option. */
export interface NumberSettings extends OptSettings {
  /** Smallest accepted value (default 0). */
  min?: number;
  /** Largest accepted value (default `Number.MAX_SAFE_INTEGER`). */
  max?: number;
  /** Unit named in the error message (`MiB`). */
  unit?: string;
}

/** Parses a decimal or `0x` hexadecimal integer; `NaN` if `text` is neither. */
export function parseInteger(text: string): number {
  const t = text.trim();
  if (/^0x[0-9a-f]+$/i.test(t)) return Number.parseInt(t.slice(2), 16);
  if (/^-?[0-9]+$/.test(t)) return Number.parseInt(t, 10);
  return Number.NaN;
}

function ranged(
  name: string,
  text: string,
  v: number,
  s: NumberSettings,
  what: string,
): number {
  const min = s.min ?? 0;
  const max = s.max ?? Number.MAX_SAFE_INTEGER;
  if (!Number.isSafeInteger(v) || v < min || v > max) {
    const range = max === Number.MAX_SAFE_INTEGER ? `${min} or more` : `in ${min}..${max}`;
    const unit = s.unit === undefined ? "" : ` (${s.unit})`;
    throw new UsageError(`${name} must be ${what} ${range}${unit}, got '${text}'`);
  }
  return v;
}

/**
 * The builder of a number option: `(value, help, settings)` gives an option
 * of type `number | undefined`, or `number` when `settings.default` is set.
 */
export interface NumberOptionBuilder {
  /** An option without a default. */
  (value: string, help: string, settings?: NumberSettings): Opt<number | undefined>;
  /** An option with a default. */
  (value: string, help: string, settings: NumberSettings & { default: number }): Opt<number>;
}

/** A number option builder whose values `parse` reads (NaN: not `what`), range-checked. */
function numberOption(parse: (text: string) => number, what: string): NumberOptionBuilder {
  return ((value: string, help: string, settings: NumberSettings & { default?: number } = {}) => ({
    kind: "value",
    value,
    help,
    fallback: settings.default,
    parse: (t: string, name: string) => ranged(name, t, parse(t), settings, what),
    ...base(settings),
  })) as NumberOptionBuilder;
}

/** An integer option (decimal or `0x` hex) within `[min, max]`. */
export const int: NumberOptionBuilder = numberOption(parseInteger, "an integer");

const SIZE_UNITS: Record<string, number> = {
  "": 1,
  K: 2 ** 10,
  M: 2 ** 20,
  G: 2 ** 30,
  T: 2 ** 40,
};

/** Parses `4096`, `64K`, `1G` (powers of 1024) into bytes; `NaN` if it is not a size. */
export function parseSizeText(text: string): number {
  const m = /^(\d+)([KMGT]?)(?:i?B)?$/i.exec(text.trim());
  if (m === null) return Number.NaN;
  return Number(m[1]) * (SIZE_UNITS[(m[2] ?? "").toUpperCase()] ?? 1);
}

/** A byte-count option with K, M, G, T suffixes (powers of 1024). */
export const size: NumberOptionBuilder = numberOption(
  parseSizeText,
  "a size (e.g. 4096, 64K, 1G)",
);

/** An option whose value is one of `choices`. */
export function choice<const C extends string>(
  choices: readonly C[],
  help: string,
  settings?: OptSettings,
): Opt<C | undefined>;
/** An option whose value is one of `choices`, with a default. */
export function choice<const C extends string>(
  choices: readonly C[],
  help: string,
  settings: OptSettings & { default: NoInfer<C> },
): Opt<C>;
export function choice<const C extends string>(
  choices: readonly C[],
  help: string,
  settings: OptSettings & { default?: C } = {},
): Opt<C | undefined> {
  return {
    kind: "value",
    value: choices.join("|"),
    help,
    choices,
    fallback: settings.default,
    parse: (t, name) => {
      const c = choices.find((x) => x === t);
      if (c === undefined) {
        throw new UsageError(`${name} must be one of ${choices.join(", ")}, got '${t}'`);
      }
      return c;
    },
    ...base(settings),
  };
}

/** How many positional arguments a command takes. */
export interface PositionalCount {
  /** At least this many. */
  min: number;
  /** At most this many (`Infinity` for any). */
  max: number;
}

/** The result of {@link parseOptions}. */
export interface Parsed<O extends OptionTable> {
  /** Every option's value (its fallback when absent). */
  values: Values<O>;
  /** The arguments that are not options, in order. */
  positionals: string[];
  /** The long names of the options that were given. */
  given: Set<string>;
}

/** A number such as `-5`, `-0x10` or `-1M` (a size), taken as a value, never as an option. */
function isNegativeNumber(arg: string): boolean {
  return /^-(\d|0x[0-9a-f])[0-9a-fx.]*([KMGT](i?B)?)?$/i.test(arg);
}

function closest(name: string, names: string[]): string | undefined {
  let best: string | undefined;
  let bestD = 3;
  for (const n of names) {
    const d = editDistance(name, n);
    if (d < bestD) {
      best = n;
      bestD = d;
    }
  }
  return best;
}

function editDistance(a: string, b: string): number {
  const row = Array.from({ length: b.length + 1 }, (_, i) => i);
  for (let i = 1; i <= a.length; i++) {
    let prev = row[0] ?? 0;
    row[0] = i;
    for (let j = 1; j <= b.length; j++) {
      const cur = row[j] ?? 0;
      row[j] = Math.min(cur + 1, (row[j - 1] ?? 0) + 1, prev + (a[i - 1] === b[j - 1] ? 0 : 1));
      prev = cur;
    }
  }
  return row[b.length] ?? 0;
}

/**
 * Parses `args` against `table`, getopt-style: `--name VALUE`, `--name=VALUE`,
 * `-x`, clustered one-letter flags (`-pq`), `--` ending the options. A value
 * that looks like an option is refused (write `--name=-x`), except negative
 * numbers, which are values (so `--mem -5` says `--mem` is out of range).
 *
 * @throws {UsageError} on an unknown, repeated or malformed option, or a wrong
 * number of positionals.
 */
export function parseOptions<O extends OptionTable>(
  table: O,
  args: readonly string[],
  count: PositionalCount = { min: 0, max: Infinity },
): Parsed<O> {
  const values: Record<string, unknown> = {};
  for (const [k, o] of Object.entries(table)) values[k] = o.fallback;
  const given = new Set<string>();
  const positionals: string[] = [];
  const shorts = new Map<string, string>();
  for (const [k, o] of Object.entries(table)) if (o.short !== undefined) shorts.set(o.short, k);

  const set = (key: string, opt: Opt<unknown>, text: string | undefined, shown: string): void => {
    if (opt.kind === "flag") {
      if (text !== undefined) throw new UsageError(`${shown} takes no value, got '${text}'`);
    } else if (text === undefined) {
      throw new UsageError(`${shown} needs a value`);
    }
    if (opt.kind !== "list" && given.has(key)) throw new UsageError(`${shown} is given twice`);
    given.add(key);
    const v = opt.parse(text ?? "", `--${key}`);
    values[key] = opt.kind === "list" ? [...(values[key] as unknown[]), ...(v as unknown[])] : v;
  };
  const takeValue = (i: number, shown: string): string => {
    const next = args[i];
    if (next === undefined) throw new UsageError(`${shown} needs a value`);
    if (next.startsWith("-") && next !== "-" && !isNegativeNumber(next)) {
      throw new UsageError(
        `${shown} needs a value, got the option '${next}' ` +
          `(write ${shown}=VALUE for a value that starts with '-')`,
      );
    }
    return next;
  };

  for (let i = 0; i < args.length; i++) {
    const arg = args[i] ?? "";
    if (arg === "--") {
      positionals.push(...args.slice(i + 1));
      break;
    }
    if (arg.startsWith("--")) {
      const eq = arg.indexOf("=");
      const name = eq < 0 ? arg.slice(2) : arg.slice(2, eq);
      const opt = table[name];
      if (opt === undefined) {
        const near = closest(name, Object.keys(table).filter((k) => !table[k]?.hidden));
        throw new UsageError(
          `unknown option '--${name}'${near === undefined ? "" : ` (did you mean --${near}?)`}`,
        );
      }
      let text = eq < 0 ? undefined : arg.slice(eq + 1);
      const next = args[i + 1];
      if (
        text === undefined && opt.bare !== undefined &&
        (next === undefined || (next.startsWith("-") && next !== "-"))
      ) {
        if (given.has(name)) throw new UsageError(`--${name} is given twice`);
        given.add(name);
        values[name] = opt.bare;
        continue;
      }
      if (text === undefined && opt.kind !== "flag") text = takeValue(++i, `--${name}`);
      set(name, opt, text, `--${name}`);
    } else if (arg.startsWith("-") && arg !== "-" && !isNegativeNumber(arg)) {
      for (let j = 1; j < arg.length; j++) {
        const letter = arg[j] ?? "";
        const key = shorts.get(letter);
        const opt = key === undefined ? undefined : table[key];
        if (key === undefined || opt === undefined) {
          throw new UsageError(`unknown option '-${letter}'`);
        }
        if (opt.kind === "flag") {
          set(key, opt, undefined, `-${letter}`);
          continue;
        }
        const rest = arg.slice(j + 1);
        set(key, opt, rest !== "" ? rest : takeValue(++i, `-${letter}`), `-${letter}`);
        break;
      }
    } else {
      positionals.push(arg);
    }
  }
  if (positionals.length > count.max) {
    const extra = positionals[count.max] ?? "";
    throw new UsageError(`unexpected argument '${extra}'`);
  }
  if (positionals.length < count.min) {
    throw new UsageError(
      `expected ${count.min} argument${count.min === 1 ? "" : "s"}, got ${positionals.length}`,
    );
  }
  return { values: values as Values<O>, positionals, given };
}

/** The `--help` lines of an option table, aligned in two columns. */
export function optionHelp(table: OptionTable): string[] {
  const rows: Array<[string, string]> = [];
  for (const [name, o] of Object.entries(table)) {
    if (o.hidden === true) continue;
    const left = (o.short === undefined ? "" : `-${o.short}, `) + `--${name}` +
      (o.kind === "flag"
        ? ""
        : o.bare !== undefined
        ? ` [${o.value ?? "VALUE"}]`
        : ` ${o.value ?? "VALUE"}`) +
      (o.kind === "list" ? "..." : "");
    const def = o.fallback === undefined || o.kind !== "value"
      ? ""
      : ` (default ${String(o.fallback)})`;
    rows.push([left, o.help + def]);
  }
  const width = Math.min(28, Math.max(...rows.map(([l]) => l.length)) + 2);
  return rows.map(([l, r]) =>
    l.length + 2 > width ? `  ${l}\n  ${" ".repeat(width)}${r}` : `  ${l.padEnd(width)}${r}`
  );
}
