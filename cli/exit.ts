/**
 * The exit statuses of every `vmkit` subcommand: one table, documented in
 * the README and printed by `vmkit --help`.
 *
 * `disk check` follows qemu-img check (0 clean, 1 could not check, 2
 * corrupt, 3 leaks only, 63 format without checks); the rest of the table
 * keeps those meanings, with usage errors apart (64, BSD's `EX_USAGE`).
 *
 * @module
 */

/** Exit statuses shared by all subcommands. */
export const Exit = {
  /** Success (for `disk check`: no errors). */
  OK: 0,
  /** The command could not do its work: an I/O error, a missing file, a peer that refused. */
  FAILURE: 1,
  /** The input is corrupt (a qcow2 image whose metadata is inconsistent). */
  CORRUPT: 2,
  /** `disk check`: only leaked clusters were found (harmless, wasted space). */
  LEAKS: 3,
  /** `disk check`: the image format has no consistency checks (raw). */
  UNSUPPORTED: 63,
  /** A bad command line: unknown option, missing or malformed value. */
  USAGE: 64,
  /** Stopped by SIGINT (128 + 2). */
  SIGINT: 130,
  /** Stopped by SIGTERM (128 + 15). */
  SIGTERM: 143,
} as const;

/** The exit-status table as `--help` and the README print it. */
export const EXIT_TABLE: readonly (readonly [number, string])[] = [
  [Exit.OK, "success (disk check: the image is clean)"],
  [
    Exit.FAILURE,
    "failure: I/O error, missing file, refused connection (disk check: could not check)",
  ],
  [Exit.CORRUPT, "corrupt input: inconsistent qcow2 metadata (disk check: corruptions found)"],
  [Exit.LEAKS, "disk check: leaked clusters only"],
  [Exit.UNSUPPORTED, "disk check: the format has no checks (raw)"],
  [Exit.USAGE, "usage error: unknown option, missing or malformed value"],
  [Exit.SIGINT, "stopped by SIGINT (Ctrl-C); 143 for SIGTERM"],
];

/** The table as help text. */
export function exitTableText(): string {
  return [
    "exit status:",
    ...EXIT_TABLE.map(([code, what]) => `  ${String(code).padStart(3)}  ${what}`),
    "  vmkit run: 0 when the guest powers off, (v << 1) | 1 when it writes v to --debug-exit",
  ].join("\n");
}
