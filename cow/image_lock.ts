/**
 * Image locking compatible with QEMU's (block/file-posix.c): open file
 * description locks (`F_OFD_SETLK`) on single bytes of the image file, one
 * byte per block permission a user holds (offset 100 + bit) and one per
 * permission it refuses to share with others (offset 200 + bit). Every
 * lock is a shared (read) lock; a conflict is found with `F_OFD_GETLK`
 * asking for an exclusive lock on the byte a conflicting user holds. So
 * vmkit and QEMU (qemu-io, qemu-img, qemu-system, qemu-storage-daemon) keep
 * each other off an image in both directions, and vmkit's own openers
 * exclude each other the same way, in one process or many.
 *
 * What vmkit takes, by how an image is opened (QEMU does the same for qcow2
 * images and backing files; for a raw top image qemu-io/qemu-img share
 * more, vmkit refuses other writers on every image it writes or reads):
 *
 * | open                     | holds (perm)          | does not share  |
 * | ------------------------ | --------------------- | --------------- |
 * | read-write               | read, write, resize   | write, resize   |
 * | read-only                | read                  | write, resize   |
 * | read-only, force-share   | read                  | nothing         |
 *
 * Locks follow the descriptor: they go away when it is closed, also when
 * the process dies.
 *
 * @module
 */

import { CowError } from "./errors.ts";
import { ERRNO, errno, errText, lib } from "./libc.ts";

/** QEMU's block permission bits (BLK_PERM_*), in the order of their lock bytes. */
export const PERM = {
  CONSISTENT_READ: 1,
  WRITE: 2,
  WRITE_UNCHANGED: 4,
  RESIZE: 8,
} as const;
const PERM_COUNT = 4;
const ALL_PERMS = 0xf;
/** QEMU's names for the permissions, as its lock messages print them. */
const PERM_NAMES = ["consistent read", "write", "write unchanged", "resize"] as const;
/** File offset of the lock byte of permission bit i held (QEMU's RAW_LOCK_PERM_BASE). */
export const LOCK_PERM_BASE = 100;
/** File offset of the lock byte of permission bit i not shared (RAW_LOCK_SHARED_BASE). */
export const LOCK_SHARED_BASE = 200;

const F_OFD_GETLK = 36;
const F_OFD_SETLK = 37;
const F_RDLCK = 0;
const F_WRLCK = 1;
const F_UNLCK = 2;
/** struct flock (x86-64 and aarch64): l_type i16, l_whence i16, l_start i64 @8, l_len i64 @16, l_pid i32 @24. */
const FLOCK_SIZE = 32;

/** How an image file is locked. */
export type LockMode = "write" | "read" | "force-share" | "none";

/** The permissions vmkit holds and shares for `mode` (see the module table). */
export function lockPermissions(mode: LockMode): { perm: number; shared: number } {
  switch (mode) {
    case "write":
      return {
        perm: PERM.CONSISTENT_READ | PERM.WRITE | PERM.RESIZE,
        shared: PERM.CONSISTENT_READ | PERM.WRITE_UNCHANGED,
      };
    case "read":
      return { perm: PERM.CONSISTENT_READ, shared: PERM.CONSISTENT_READ | PERM.WRITE_UNCHANGED };
    case "force-share":
      return { perm: PERM.CONSISTENT_READ, shared: ALL_PERMS };
    case "none":
      return { perm: 0, shared: ALL_PERMS };
  }
}

/** A process that holds a lock byte of an image. */
export interface LockHolder {
  /** Its process id. */
  pid: number;
  /** Its command name (`/proc/PID/comm`), e.g. "qemu-io" or "deno". */
  command: string;
}

/** The image is in use by another opener whose permissions conflict with ours. */
export class ImageLockError extends CowError {
  /** The image path. */
  readonly path: string;
  /** QEMU's name of the permission that could not be had ("write", "resize", ...). */
  readonly permission: string;
  /** True when the conflict is over sharing (someone holds what we refuse to share). */
  readonly shared: boolean;
  /** The processes found holding the conflicting lock byte (may be empty if unreadable). */
  readonly holders: LockHolder[];
  /** Creates the error; the message reads like QEMU's, plus who holds the lock. */
  constructor(path: string, permission: string, shared: boolean, holders: LockHolder[]) {
    const who = holders.length === 0
      ? "held by another process"
      : "held by " + holders.map((h) =>
        h.pid === Deno.pid
          ? `this process (${h.command}, pid ${h.pid})`
          : `${h.command} (pid ${h.pid})`
      ).join(", ");
    const hint = shared
      ? "another process is writing the image; stop it, or read anyway with force-share"
      : "another process is using the image; stop it first";
    super(
      `cannot open '${path}': Failed to get ${shared ? "shared " : ""}"${permission}" lock ` +
        `(${who}): ${hint}`,
    );
    this.name = "ImageLockError";
    this.path = path;
    this.permission = permission;
    this.shared = shared;
    this.holders = holders;
  }
}

function flock(type: number, byte: number): Uint8Array {
  const b = new Uint8Array(FLOCK_SIZE);
  const v = new DataView(b.buffer);
  v.setInt16(0, type, true);
  v.setInt16(2, 0, true); // SEEK_SET
  v.setBigInt64(8, BigInt(byte), true);
  v.setBigInt64(16, 1n, true);
  return b;
}

function setLock(fd: number, path: string, type: number, byte: number): boolean {
  const arg = flock(type, byte);
  for (;;) {
    if (lib().fcntl(fd, F_OFD_SETLK, arg) === 0) return true;
    const e = errno();
    if (e === ERRNO.EINTR) continue;
    if (e === ERRNO.EAGAIN || e === ERRNO.EACCES) return false;
    throw new CowError(
      `cannot lock '${path}': fcntl(F_OFD_SETLK) failed: ${errText(e)} (errno ${e}); ` +
        `the file system may not support locks (open with locking disabled to go on)`,
    );
  }
}

/** Whether another open file description holds a lock on `byte`. */
function lockedByOthers(fd: number, path: string, byte: number): boolean {
  const arg = flock(F_WRLCK, byte);
  for (;;) {
    if (lib().fcntl(fd, F_OFD_GETLK, arg) === 0) break;
    const e = errno();
    if (e === ERRNO.EINTR) continue;
    throw new CowError(
      `cannot test the locks of '${path}': fcntl(F_OFD_GETLK) failed: ${errText(e)} (errno ${e})`,
    );
  }
  return new DataView(arg.buffer).getInt16(0, true) !== F_UNLCK;
}

/**
 * Takes the lock bytes for `mode` on the open file `fd`, then checks that no
 * other opener holds a conflicting one (QEMU's order: take first, then look,
 * so two openers racing always see each other). Throws
 * {@link ImageLockError} naming the holder on a conflict; the caller closes
 * `fd`, which drops whatever was taken.
 */
export function lockImage(
  fd: number,
  path: string,
  mode: LockMode,
  identity: { dev: number; ino: number },
): void {
  if (mode === "none") return;
  const { perm, shared } = lockPermissions(mode);
  const fail = (bit: number, isShared: boolean, byte: number): never => {
    throw new ImageLockError(
      path,
      PERM_NAMES[bit] ?? `permission ${bit}`,
      isShared,
      lockHolders(identity, byte, fd),
    );
  };
  for (let i = 0; i < PERM_COUNT; i++) {
    const bit = 1 << i;
    if ((perm & bit) && !setLock(fd, path, F_RDLCK, LOCK_PERM_BASE + i)) {
      fail(i, false, LOCK_PERM_BASE + i);
    }
    if (!(shared & bit) && !setLock(fd, path, F_RDLCK, LOCK_SHARED_BASE + i)) {
      fail(i, true, LOCK_SHARED_BASE + i);
    }
  }
  for (let i = 0; i < PERM_COUNT; i++) {
    const bit = 1 << i;
    // We want permission i: nobody may be refusing to share it.
    if ((perm & bit) && lockedByOthers(fd, path, LOCK_SHARED_BASE + i)) {
      fail(i, false, LOCK_SHARED_BASE + i);
    }
    // We refuse to share permission i: nobody may be holding it.
    if (!(shared & bit) && lockedByOthers(fd, path, LOCK_PERM_BASE + i)) {
      fail(i, true, LOCK_PERM_BASE + i);
    }
  }
}

/** Releases every lock byte vmkit or QEMU may hold on `fd` (they also go at close). */
export function unlockImage(fd: number, path: string): void {
  for (let i = 0; i < PERM_COUNT; i++) {
    setLock(fd, path, F_UNLCK, LOCK_PERM_BASE + i);
    setLock(fd, path, F_UNLCK, LOCK_SHARED_BASE + i);
  }
}

/** Splits a Linux st_dev into (major, minor) as glibc's gnu_dev_major/minor do. */
function devParts(dev: number): [number, number] {
  const d = BigInt(dev);
  const major = Number(((d >> 8n) & 0xfffn) | ((d >> 32n) & ~0xfffn));
  const minor = Number((d & 0xffn) | ((d >> 12n) & ~0xffn));
  return [major, minor];
}

/** Upper bound on /proc entries read while looking for a lock holder. */
const MAX_PROC_SCAN = 200_000;

/**
 * The processes whose descriptors hold an OFD lock covering `byte` of the
 * file `identity` (from `/proc/PID/fdinfo`: `F_OFD_GETLK` reports no pid for
 * OFD locks). Best effort: unreadable processes are skipped; `ownFd` of this
 * process (the opener itself) is left out.
 */
export function lockHolders(
  identity: { dev: number; ino: number },
  byte: number,
  ownFd = -1,
): LockHolder[] {
  const [major, minor] = devParts(identity.dev);
  const hex = (n: number): string => n.toString(16).padStart(2, "0");
  const key = `${hex(major)}:${hex(minor)}:${identity.ino}`;
  const out: LockHolder[] = [];
  let budget = MAX_PROC_SCAN;
  let procs: Iterable<Deno.DirEntry>;
  try {
    procs = Deno.readDirSync("/proc");
  } catch (err) {
    if (isGone(err)) return out;
    throw err;
  }
  for (const p of procs) {
    if (!/^\d+$/.test(p.name) || --budget < 0) continue;
    const pid = Number(p.name);
    const holds = holdsLock(pid, pid === Deno.pid ? ownFd : -1, key, byte, () => --budget);
    if (holds) out.push({ pid, command: readComm(pid) });
  }
  return out;
}

/** Whether a descriptor of `pid` (other than `skipFd`) holds a lock on `key` covering `byte`. */
function holdsLock(
  pid: number,
  skipFd: number,
  key: string,
  byte: number,
  spend: () => number,
): boolean {
  let fds: Iterable<Deno.DirEntry>;
  try {
    fds = Deno.readDirSync(`/proc/${pid}/fdinfo`);
  } catch (err) {
    if (isGone(err)) return false;
    throw err;
  }
  for (const f of fds) {
    if (spend() < 0) return false;
    if (Number(f.name) === skipFd) continue;
    let info: string;
    try {
      info = Deno.readTextFileSync(`/proc/${pid}/fdinfo/${f.name}`);
    } catch (err) {
      if (isGone(err)) continue;
      throw err;
    }
    for (const line of info.split("\n")) {
      if (!line.startsWith("lock:") || !line.includes(key)) continue;
      // lock:	1: OFDLCK  ADVISORY  READ -1 fe:00:2146442 100 101
      const parts = line.trim().split(/\s+/);
      const start = Number(parts.at(-2));
      const endText = parts.at(-1) ?? "";
      const end = endText === "EOF" ? Infinity : Number(endText);
      if (parts.includes(key) && start <= byte && byte <= end) return true;
    }
  }
  return false;
}

function readComm(pid: number): string {
  try {
    return Deno.readTextFileSync(`/proc/${pid}/comm`).trim();
  } catch (err) {
    if (isGone(err)) return "?";
    throw err;
  }
}

/** A /proc entry that vanished or may not be read (the process exited, or is another user's). */
function isGone(err: unknown): boolean {
  return err instanceof Deno.errors.NotFound || err instanceof Deno.errors.PermissionDenied ||
    err instanceof Deno.errors.NotCapable ||
    (err instanceof Error && /ESRCH|No such process/.test(err.message));
}
