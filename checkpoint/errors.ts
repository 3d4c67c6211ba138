/**
 * The checkpoint primitive's error class.
 *
 * @module
 */

/** A checkpoint that cannot be written, read or restored; names the file and section. */
export class CheckpointError extends Error {
  /** The file concerned, when there is one. */
  readonly path: string | undefined;
  /** The section at fault (`header`, `page map`, ...), when there is one. */
  readonly section: string | undefined;
  /** Creates the error: `what` went wrong (with what to do), optionally in `path`'s `section`. */
  constructor(what: string, opts: { path?: string; section?: string } = {}) {
    const where = opts.path === undefined
      ? ""
      : `${opts.path}${opts.section === undefined ? "" : ` (${opts.section})`}: `;
    super(`checkpoint: ${where}${what}`);
    this.name = "CheckpointError";
    this.path = opts.path;
    this.section = opts.section;
  }
}
