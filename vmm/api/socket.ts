/**
 * Creating the control socket safely: mode 0600 whatever the umask, never
 * over a regular file, a directory or a live socket, and removed on close
 * only while it is still the one this process made.
 *
 * The socket is bound inside a fresh 0700 directory next to the requested
 * path, set to 0600 there, then hard-linked into place (`link(2)` never
 * replaces an existing name, so a path created meanwhile by someone else is
 * refused, not overwritten). No other user can connect between `bind` and
 * `chmod`, which a plain bind-then-chmod would allow.
 *
 * @module
 */

/** Raised when the control socket cannot be created. */
export class ApiServerError extends Error {
  /** Creates the error for socket `path`. */
  constructor(path: string, detail: string) {
    super(`api socket ${path}: ${detail}`);
    this.name = "ApiServerError";
  }
}

/** Longest `sun_path` Linux accepts (108 bytes including the NUL). */
const MAX_SUN_PATH = 107;

function dirname(path: string): string {
  const i = path.lastIndexOf("/");
  if (i < 0) return ".";
  return i === 0 ? "/" : path.slice(0, i);
}

async function lstatOrNull(path: string): Promise<Deno.FileInfo | null> {
  try {
    return await Deno.lstat(path);
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) return null;
    throw new ApiServerError(path, `cannot inspect it: ${(err as Error).message}`);
  }
}

/**
 * Removes a stale socket at `path` (a socket file nobody listens on); refuses
 * anything else that exists there.
 */
async function clearStale(path: string): Promise<void> {
  const info = await lstatOrNull(path);
  if (info === null) return;
  if (info.isSocket !== true) {
    const what = info.isDirectory ? "a directory" : info.isSymlink ? "a symlink" : "not a socket";
    throw new ApiServerError(path, `exists and is ${what}; pick another path or remove it`);
  }
  try {
    const conn = await Deno.connect({ transport: "unix", path });
    conn.close();
  } catch (err) {
    if (err instanceof Deno.errors.ConnectionRefused) {
      // Nobody listens: a leftover of a previous run. Remove it only if it is
      // still the same socket file that was probed.
      const again = await lstatOrNull(path);
      if (again === null) return;
      if (again.isSocket === true && again.ino === info.ino && again.dev === info.dev) {
        await Deno.remove(path);
        return;
      }
      throw new ApiServerError(path, "changed while it was probed; try again");
    }
    if (err instanceof Deno.errors.NotFound) return;
    throw new ApiServerError(path, `cannot probe it: ${(err as Error).message}`);
  }
  throw new ApiServerError(path, "another process is serving on it; stop it or pick another path");
}

/** A listening Unix socket made by {@link listenPrivateUnix}. */
export interface PrivateUnixListener {
  /** The listener. */
  readonly listener: Deno.UnixListener;
  /** Removes the socket file if it is still the one made here. */
  unlink(): Promise<void>;
}

/** Binds `tmpSock` (in a private directory), makes it 0600 and links it to `path`. */
async function bindAndLink(path: string, tmpSock: string): Promise<Deno.UnixListener> {
  if (new TextEncoder().encode(tmpSock).length > MAX_SUN_PATH) {
    throw new ApiServerError(
      path,
      `the path is too long: vmkit binds it first as '${tmpSock}', past ${MAX_SUN_PATH} bytes`,
    );
  }
  let listener: Deno.UnixListener;
  try {
    listener = Deno.listen({ transport: "unix", path: tmpSock });
  } catch (err) {
    throw new ApiServerError(path, `cannot listen: ${(err as Error).message}`);
  }
  try {
    await Deno.chmod(tmpSock, 0o600);
    await Deno.link(tmpSock, path);
  } catch (err) {
    listener.close();
    if (err instanceof Deno.errors.AlreadyExists) {
      throw new ApiServerError(path, "was created by someone else meanwhile; pick another path");
    }
    throw new ApiServerError(path, `cannot create it: ${(err as Error).message}`);
  }
  return listener;
}

/**
 * Listens on a new Unix socket at `path` with mode 0600, replacing only a
 * stale socket file.
 *
 * @example
 * ```ts ignore
 * import { listenPrivateUnix } from "./socket.ts";
 * const { listener, unlink } = await listenPrivateUnix("/tmp/vm.sock");
 * listener.close();
 * await unlink();
 * ```
 */
export async function listenPrivateUnix(path: string): Promise<PrivateUnixListener> {
  if (path === "") throw new ApiServerError(path, "the socket path is empty");
  if (new TextEncoder().encode(path).length > MAX_SUN_PATH) {
    throw new ApiServerError(path, `the path is longer than ${MAX_SUN_PATH} bytes`);
  }
  await clearStale(path);
  const dir = dirname(path);
  let tmpDir = "";
  for (let attempt = 0; tmpDir === ""; attempt++) {
    const name = `${dir}/.v${crypto.getRandomValues(new Uint32Array(1))[0]?.toString(36)}`;
    try {
      await Deno.mkdir(name, { mode: 0o700 });
      await Deno.chmod(name, 0o700); // the umask may have taken bits it needs
      tmpDir = name;
    } catch (err) {
      if (err instanceof Deno.errors.AlreadyExists && attempt < 8) continue;
      throw new ApiServerError(
        path,
        `cannot create a private directory in ${dir}: ${(err as Error).message}`,
      );
    }
  }
  let listener: Deno.UnixListener;
  try {
    listener = await bindAndLink(path, `${tmpDir}/s`);
  } finally {
    await Deno.remove(tmpDir, { recursive: true });
  }
  const mine = await Deno.lstat(path);
  return {
    listener,
    async unlink(): Promise<void> {
      const now = await lstatOrNull(path);
      if (now === null || now.ino !== mine.ino || now.dev !== mine.dev) return;
      await Deno.remove(path);
    },
  };
}
