/**
 * Wire format of the coherence and synchronization protocol: length-prefixed
 * binary frames, little-endian, one fixed header and an optional block payload.
 *
 * ```
 * offset size field
 *   0    4   length of the rest of the frame (header + payload)
 *   4    1   message type (MsgType)
 *   5    1   reserved (0)
 *   6    2   region index
 *   8    4   block index (or lock id / barrier generation)
 *  12    4   argument a (requesting node, worker, …)
 *  16    4   argument b
 *  20    …   payload (block data for DATA and WRITEBACK)
 * ```
 *
 * @module
 */

import { DsmProtocolError } from "./errors.ts";

/** Protocol message types. */
export const MsgType = {
  /** Node → home: read copy wanted (`a` = requester). */
  READ: 1,
  /** Node → home: exclusive copy wanted, data included (`a` = requester). */
  READX: 2,
  /** Node → home: the sharer wants exclusivity of its valid copy (`a` = requester). */
  UPGRADE: 3,
  /** Home → sharer: drop your copy and acknowledge. */
  INVALIDATE: 4,
  /** Sharer → home: invalidation done; home → requester: upgrade granted without data. */
  ACK: 5,
  /** Home → requester: block data; `b` = 1 when exclusive. */
  DATA: 6,
  /** Home → owner: write back; `b` = 1 to also invalidate (else downgrade to shared). */
  FETCH: 7,
  /** Owner → home: the block's data written back. */
  WRITEBACK: 8,
  /** Node → lock manager: acquire lock `block` for (`a` node, `b` worker). */
  LOCK_ACQUIRE: 9,
  /** Lock manager → node: lock `block` granted to worker `b`. */
  LOCK_GRANT: 10,
  /** Node → lock manager: release lock `block`. */
  LOCK_RELEASE: 11,
  /** Node → barrier manager: all local workers reached barrier generation `block`. */
  BARRIER_ENTER: 12,
  /** Barrier manager → node: barrier generation `block` complete. */
  BARRIER_GO: 13,
  /** Handshake 1, dialer → acceptor: dialer id in `a`, cluster size in `b`, acceptor id in `block`, nonce (see handshake.ts). */
  HELLO: 14,
  /** Orderly leave: the sender is done; its connection closing next is not a death. */
  BYE: 15,
  /**
   * The sender stopped because node `a` failed (`a` = sender: an error of its
   * own); `b` = 0 when `a` died (its connection was lost), 1 when `a` broke the protocol.
   */
  FAILED: 16,
  /** Handshake 2, acceptor → dialer: nonce and MAC (see handshake.ts). */
  HELLO_ACK: 17,
  /** Handshake 3, dialer → acceptor: MAC (see handshake.ts). */
  HELLO_AUTH: 18,
} as const;

/** One of {@link MsgType}. */
export type MsgTypeValue = typeof MsgType[keyof typeof MsgType];

/** Header bytes after the length prefix. */
export const HEADER_SIZE = 16;
/** Bytes of the length prefix. */
export const LENGTH_SIZE = 4;
/** Largest payload a frame may carry (the largest block). */
export const MAX_PAYLOAD = 4096;

const OFF_TYPE = 0;
const OFF_RESERVED = 1;
const OFF_REGION = 2;
const OFF_BLOCK = 4;
const OFF_A = 8;
const OFF_B = 12;

/** A decoded protocol message. */
export interface Message {
  /** Message type. */
  type: MsgTypeValue;
  /** Region index. */
  region: number;
  /** Block index, lock id or barrier generation. */
  block: number;
  /** First argument. */
  a: number;
  /** Second argument. */
  b: number;
  /** Block data, when the type carries it. */
  data: Uint8Array | null;
}

/** Encodes a message as a length-prefixed frame. */
export function encodeFrame(msg: Message): Uint8Array {
  const payload = msg.data?.length ?? 0;
  if (payload > MAX_PAYLOAD) {
    throw new DsmProtocolError(`frame payload ${payload} exceeds ${MAX_PAYLOAD} bytes`);
  }
  const out = new Uint8Array(LENGTH_SIZE + HEADER_SIZE + payload);
  const dv = new DataView(out.buffer);
  dv.setUint32(0, HEADER_SIZE + payload, true);
  const h = LENGTH_SIZE;
  dv.setUint8(h + OFF_TYPE, msg.type);
  dv.setUint8(h + OFF_RESERVED, 0);
  dv.setUint16(h + OFF_REGION, msg.region, true);
  dv.setUint32(h + OFF_BLOCK, msg.block >>> 0, true);
  dv.setUint32(h + OFF_A, msg.a >>> 0, true);
  dv.setUint32(h + OFF_B, msg.b >>> 0, true);
  if (msg.data !== null) out.set(msg.data, LENGTH_SIZE + HEADER_SIZE);
  return out;
}

/** Decodes the body (after the length prefix) of one frame; copies the payload. */
export function decodeBody(body: Uint8Array): Message {
  if (body.length < HEADER_SIZE || body.length > HEADER_SIZE + MAX_PAYLOAD) {
    throw new DsmProtocolError(
      `frame of ${body.length} bytes is outside ${HEADER_SIZE}..${HEADER_SIZE + MAX_PAYLOAD}`,
    );
  }
  const dv = new DataView(body.buffer, body.byteOffset, body.byteLength);
  const type = dv.getUint8(OFF_TYPE);
  if (type < MsgType.READ || type > MsgType.HELLO_AUTH) {
    throw new DsmProtocolError(`unknown message type ${type}`);
  }
  const payload = body.length - HEADER_SIZE;
  return {
    type: type as MsgTypeValue,
    region: dv.getUint16(OFF_REGION, true),
    block: dv.getUint32(OFF_BLOCK, true),
    a: dv.getUint32(OFF_A, true),
    b: dv.getUint32(OFF_B, true),
    data: payload > 0 ? body.slice(HEADER_SIZE) : null,
  };
}

/**
 * Splits a byte stream into frames. Feed chunks with {@link FrameReader.push};
 * each complete frame is handed to the callback. Rejects oversized lengths
 * before buffering them.
 */
export class FrameReader {
  #buf: Uint8Array = new Uint8Array(64 * 1024);
  #len = 0;
  #onFrame: (msg: Message) => void;

  /** Creates a reader calling `onFrame` for every decoded frame. */
  constructor(onFrame: (msg: Message) => void) {
    this.#onFrame = onFrame;
  }

  /** Appends received bytes and decodes every complete frame. */
  push(chunk: Uint8Array): void {
    if (this.#len === 0) {
      // The common case: nothing buffered. Decode straight from the chunk and
      // keep only a trailing partial frame.
      const used = this.#decodeAll(chunk);
      if (used < chunk.length) this.#append(chunk.subarray(used));
      return;
    }
    this.#append(chunk);
    const used = this.#decodeAll(this.#buf.subarray(0, this.#len));
    if (used > 0) {
      this.#buf.copyWithin(0, used, this.#len);
      this.#len -= used;
    }
  }

  #append(bytes: Uint8Array): void {
    if (this.#len + bytes.length > this.#buf.length) {
      const next = new Uint8Array(Math.max(this.#buf.length * 2, this.#len + bytes.length));
      next.set(this.#buf.subarray(0, this.#len));
      this.#buf = next;
    }
    this.#buf.set(bytes, this.#len);
    this.#len += bytes.length;
  }

  /** Decodes every complete frame at the start of `bytes`; returns the bytes used. */
  #decodeAll(bytes: Uint8Array): number {
    const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    let pos = 0;
    while (bytes.length - pos >= LENGTH_SIZE) {
      const n = dv.getUint32(pos, true);
      if (n < HEADER_SIZE || n > HEADER_SIZE + MAX_PAYLOAD) {
        throw new DsmProtocolError(
          `frame length ${n} is outside ${HEADER_SIZE}..${HEADER_SIZE + MAX_PAYLOAD}`,
        );
      }
      if (bytes.length - pos < LENGTH_SIZE + n) break;
      this.#onFrame(decodeBody(bytes.subarray(pos + LENGTH_SIZE, pos + LENGTH_SIZE + n)));
      pos += LENGTH_SIZE + n;
    }
    return pos;
  }
}
