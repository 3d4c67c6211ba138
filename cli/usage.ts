/**
 * The command-line error every subcommand throws for bad input: printed as
 * one line naming the command, exit status 64 (see `exit.ts`).
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
