/**
 * File helpers of the registry journal: checking that a path can be a
 * journal before anything opens it, positioned reads and writes, and the
 * fsyncs an atomic replace needs.
 *
 * @module
 */

import { SuiRegistryError } from "./errors.ts";
import { classifyHeader, HEADER_LEN, type HeaderKind } from "./journal.ts";

/** The directory part of `path`. */
export function dirname(path: string): string {
  const i = path.lastIndexOf("/");
  return i <= 0 ? (i === 0 ? "/" : ".") : path.slice(0, i);
}

function message(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/**
 * Stats `path` as a journal: undefined when it does not exist; throws a
 * {@link SuiRegistryError} for a path that cannot be a journal (a directory,
 * FIFO, device, NUL byte) before anything opens it, so nothing blocks.
 */
export async function statJournal(path: string): Promise<Deno.FileInfo | undefined> {
  if (path.includes("\0")) {
    throw new SuiRegistryError(`registry path ${JSON.stringify(path)} contains a NUL byte`);
  }
  if (path === "") throw new SuiRegistryError("registry path is empty");
  let st: Deno.FileInfo;
  try {
    st = await Deno.stat(path);
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) return undefined;
    throw new SuiRegistryError(`cannot stat registry '${path}': ${message(err)}`, { cause: err });
  }
  if (st.isDirectory) {
    throw new SuiRegistryError(
      `registry '${path}' is a directory; give the path of a journal file (e.g. ${path}/sui.journal)`,
    );
  }
  if (!st.isFile) {
    throw new SuiRegistryError(
      `registry '${path}' is not a regular file (a FIFO, socket or device); ` +
        `give the path of a journal file`,
    );
  }
  return st;
}

/** Reads up to `length` bytes at offset `at` (fewer at the end of the file). */
export async function readFully(f: Deno.FsFile, at: number, length: number): Promise<Uint8Array> {
  const buf = new Uint8Array(length);
  await f.seek(at, Deno.SeekMode.Start);
  let got = 0;
  while (got < length) {
    const n = await f.read(buf.subarray(got));
    if (n === null) break;
    got += n;
  }
  return buf.subarray(0, got);
}

/** The error for a file that is not a registry journal. */
export function foreignFileError(path: string): SuiRegistryError {
  return new SuiRegistryError(
    `'${path}' is not a vmkit SUI registry journal (its first line is not a registry ` +
      `header); it was left unchanged: give the path of a registry, or a new file name`,
  );
}

/** Reads the header of an existing journal (no lock needed: headers never change in place). */
export async function peekHeader(path: string): Promise<HeaderKind> {
  let f: Deno.FsFile;
  try {
    f = await Deno.open(path, { read: true });
  } catch (err) {
    throw new SuiRegistryError(`cannot open registry '${path}': ${message(err)}`, { cause: err });
  }
  try {
    return classifyHeader(await readFully(f, 0, HEADER_LEN));
  } finally {
    f.close();
  }
}

/** Writes all of `bytes` at offset `at`. */
export async function writeAllAt(f: Deno.FsFile, at: number, bytes: Uint8Array): Promise<void> {
  await f.seek(at, Deno.SeekMode.Start);
  let done = 0;
  while (done < bytes.length) done += await f.write(bytes.subarray(done));
}

/** Writes `bytes` as the whole content of `path` (created or truncated) and fsyncs it. */
export async function writeFileSynced(path: string, bytes: Uint8Array): Promise<void> {
  const f = await Deno.open(path, { write: true, create: true, truncate: true });
  try {
    await writeAllAt(f, 0, bytes);
    await f.sync();
  } finally {
    f.close();
  }
}

/** Fsyncs the directory holding `path`, so a rename or link in it is durable. */
export async function syncDir(path: string): Promise<void> {
  const d = await Deno.open(dirname(path), { read: true });
  try {
    await d.sync();
  } finally {
    d.close();
  }
}
