/**
 * What an opened image file is: its identity (device and inode) and its
 * kind, checked right after `open` (only regular files and block devices
 * are images).
 *
 * @module
 */

import { CowError } from "./errors.ts";
import { type FdStat, fstat, S_IF } from "./libc.ts";

/** What a file is: its device and inode numbers. */
export interface FileIdentity {
  /** st_dev. */
  dev: number;
  /** st_ino. */
  ino: number;
}

/** Whether two identities name the same file. */
export function sameFile(a: FileIdentity, b: FileIdentity): boolean {
  return a.dev === b.dev && a.ino === b.ino;
}

/** The identity of the open `fd`; throws unless it is a regular file or a block device. */
export function checkKind(fd: number, path: string): { identity: FileIdentity; regular: boolean } {
  const st = fstat(fd) ?? procStat(fd);
  if (st.type !== S_IF.REG && st.type !== S_IF.BLK) {
    const kind = st.type === S_IF.DIR
      ? "a directory"
      : st.type === S_IF.FIFO
      ? "a FIFO"
      : st.type === S_IF.CHR
      ? "a character device"
      : st.type === S_IF.SOCK
      ? "a socket"
      : "not a regular file";
    throw new CowError(`'${path}' is ${kind}, not a disk image (a regular file or block device)`);
  }
  return { identity: { dev: st.dev, ino: st.ino }, regular: st.type === S_IF.REG };
}

/** fstat through /proc, for a libc without an `fstat64` symbol. */
function procStat(fd: number): FdStat {
  const st = Deno.statSync(`/proc/self/fd/${fd}`);
  const type = st.isFile
    ? S_IF.REG
    : st.isBlockDevice
    ? S_IF.BLK
    : st.isDirectory
    ? S_IF.DIR
    : st.isFifo
    ? S_IF.FIFO
    : st.isCharDevice
    ? S_IF.CHR
    : st.isSocket
    ? S_IF.SOCK
    : 0;
  return { type, dev: st.dev, ino: st.ino ?? 0 };
}
