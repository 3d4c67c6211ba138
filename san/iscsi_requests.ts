/**
 * The requests of an iSCSI session that are not SCSI tasks (Login, Text,
 * Logout, NOP-Out pings): each waits for the response that carries its
 * Initiator Task Tag (RFC 7143 §11.18.1, §11.11, §11.15), or for the news that
 * the connection went away. Also the SendTargets answer (§12.1, Appendix C),
 * decoded from its text.
 *
 * @module
 */

import type { RawPdu } from "./iscsi_login.ts";
import { decodeText } from "./iscsi_text.ts";

/** A target found by SendTargets discovery. */
export interface DiscoveredTarget {
  /** Target IQN. */
  readonly name: string;
  /** Portals as "host:port,tpgt". */
  readonly addresses: string[];
}

/** A response that stands for "the connection went away". */
const LOST: RawPdu = { header: new Uint8Array(0), data: new Uint8Array(0) };

/** The non-task requests waiting for their responses, by ITT. */
export class IscsiRequests {
  readonly #waiters = new Map<number, (pdu: RawPdu) => void>();

  /** Whether a request waits under ITT `itt`. */
  has(itt: number): boolean {
    return this.#waiters.has(itt);
  }

  /**
   * Calls `send` (which sends a request with ITT `itt`) and waits for the
   * response with the same ITT; rejects with `lost()` if the connection goes
   * away first.
   */
  exchange(itt: number, send: () => void, lost: () => unknown): Promise<RawPdu> {
    return new Promise<RawPdu>((resolve, reject) => {
      this.#waiters.set(itt, (r) => {
        if (r === LOST) reject(lost());
        else resolve(r);
      });
      send();
    });
  }

  /** Hands `pdu` to the request waiting under `itt`; says whether one waited. */
  answer(itt: number, pdu: RawPdu): boolean {
    const w = this.#waiters.get(itt);
    if (w === undefined) return false;
    this.#waiters.delete(itt);
    w(pdu);
    return true;
  }

  /** Answers every waiting request with "the connection went away". */
  failAll(): void {
    const waiters = [...this.#waiters.values()];
    this.#waiters.clear();
    for (const w of waiters) w(LOST);
  }
}

/** The targets in a SendTargets answer, given as the data segments of its Text Responses. */
export function parseSendTargets(chunks: readonly Uint8Array[]): DiscoveredTarget[] {
  let total = 0;
  for (const c of chunks) total += c.length;
  const all = new Uint8Array(total);
  let o = 0;
  for (const c of chunks) {
    all.set(c, o);
    o += c.length;
  }
  const out: DiscoveredTarget[] = [];
  for (const [k, val] of decodeText(all)) {
    if (k === "TargetName") out.push({ name: val, addresses: [] });
    else if (k === "TargetAddress") out[out.length - 1]?.addresses.push(val);
  }
  return out;
}
