/**
 * Command-line errors shared by the subcommands: one line on stderr, exit status 2.
 *
 * @module
 */

/** A bad command line (unknown flag, missing or malformed value). */
export class UsageError extends Error {
  /** Creates the error with a message naming the bad input. */
  constructor(message: string) {
    super(message);
    this.name = "UsageError";
  }
}

/** Whether `err` is a command-line error: a {@link UsageError} or one of `parseArgs`' own. */
export function isUsageError(err: unknown): err is Error {
  if (err instanceof UsageError) return true;
  return err instanceof TypeError &&
    String((err as { code?: unknown }).code).startsWith("ERR_PARSE_ARGS");
}

/** Prints `err` as a usage error of `vmkit <command>` and returns the exit status 2. */
export function usageFailure(command: string, err: Error): number {
  console.error(`vmkit ${command}: ${err.message} (see vmkit ${command} --help)`);
  return 2;
}

/**
 * Checks a file-name argument. Deno turns bytes that are not UTF-8 in the
 * command line into U+FFFD, so such a name would silently point at another
 * file: refuse it rather than read or write the wrong one.
 */
export function checkPathArg(option: string, value: string): string {
  if (value.includes("\uFFFD")) {
    throw new UsageError(
      `${option} '${value}' is not valid UTF-8 (or contains U+FFFD); vmkit cannot name that ` +
        `file exactly: rename it or use a symlink with a UTF-8 name`,
    );
  }
  if (value === "") throw new UsageError(`${option} is empty`);
  return value;
}
