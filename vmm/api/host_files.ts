/**
 * Checks on the host files a configuration names, made when it is given
 * (as Firecracker opens them at `PUT` time), so a typo is a 400 then rather
 * than a failed `InstanceStart` later.
 *
 * @module
 */

import { isIscsiUrl } from "./vm_resources.ts";
import { VmConfigError } from "./vm_config.ts";

function reason(err: unknown): string {
  if (err instanceof Deno.errors.NotFound) return "no such file";
  if (err instanceof Deno.errors.PermissionDenied) return "permission denied";
  if (err instanceof Deno.errors.IsADirectory) return "it is a directory";
  return (err as Error).message;
}

/**
 * Checks that `path` is a regular file (or, with `blockOk`, a block device)
 * this process can open for reading, and for writing when `write`.
 */
export async function checkHostFile(
  path: string,
  what: string,
  opts: { write?: boolean; blockOk?: boolean } = {},
): Promise<void> {
  let info: Deno.FileInfo;
  try {
    info = await Deno.stat(path);
  } catch (err) {
    throw new VmConfigError(`${what} '${path}' cannot be opened: ${reason(err)}`);
  }
  if (!info.isFile && !(opts.blockOk === true && info.isBlockDevice === true)) {
    const kind = info.isDirectory ? "a directory" : "not a regular file";
    throw new VmConfigError(`${what} '${path}' is ${kind}`);
  }
  try {
    const f = await Deno.open(path, { read: true, write: opts.write === true });
    f.close();
  } catch (err) {
    throw new VmConfigError(`${what} '${path}' cannot be opened: ${reason(err)}`);
  }
}

/** Checks an `iscsi://HOST[:PORT]/TARGET/LUN` URL's shape. */
export function checkIscsiUrl(url: string, what: string): void {
  const m = /^iscsi:\/\/([^/:\s]+|\[[0-9a-fA-F:]+\])(?::(\d{1,5}))?\/([^/\s]+)\/(\d{1,5})$/i.exec(
    url,
  );
  if (m === null) {
    throw new VmConfigError(`${what} '${url}' is not iscsi://HOST[:PORT]/TARGET/LUN`);
  }
  const port = m[2] === undefined ? 3260 : Number(m[2]);
  if (port < 1 || port > 65535) throw new VmConfigError(`${what} '${url}' has a bad port`);
}

/** Checks a drive's image (or iSCSI URL), writable unless `readOnly`. */
export async function checkDrivePath(path: string, readOnly: boolean, what: string): Promise<void> {
  if (isIscsiUrl(path)) return checkIscsiUrl(path, what);
  await checkHostFile(path, what, { write: !readOnly, blockOk: true });
}
