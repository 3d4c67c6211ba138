/**
 * The kernel command line: validated, NUL-terminated, written at
 * {@link CMDLINE_ADDR}.
 *
 * @module
 */

import type { GuestMemory } from "../guest_memory.ts";
import { BootError } from "./errors.ts";
import { guestWrite } from "./guest_access.ts";
import { CMDLINE_ADDR, CMDLINE_MAX } from "./layout.ts";

/**
 * Writes `cmdline` and its NUL at {@link CMDLINE_ADDR}; returns its length in
 * bytes (without the NUL). `maxLen` is the kernel's limit (`cmdline_size`, which
 * excludes the NUL); `source` says where that limit comes from, for the message.
 */
export function writeCmdline(
  memory: GuestMemory,
  cmdline: string,
  maxLen: number,
  source: string,
): number {
  if (cmdline.includes("\0")) {
    throw new BootError("kernel command line contains a NUL character; remove it");
  }
  const bytes = new TextEncoder().encode(cmdline);
  const limit = Math.min(maxLen, CMDLINE_MAX - 1);
  if (bytes.length > limit) {
    throw new BootError(
      `kernel command line is ${bytes.length} bytes, too long for ${source} ` +
        `(at most ${limit} bytes); shorten it`,
    );
  }
  const buf = new Uint8Array(bytes.length + 1);
  buf.set(bytes);
  guestWrite(memory, CMDLINE_ADDR, buf, "the kernel command line");
  return bytes.length;
}
