/**
 * Mutual authentication of two DSM nodes when a connection opens: both know
 * the cluster secret, and each proves it over nonces from both sides, so
 * neither a stranger nor a replayed handshake can join a cluster. Three
 * fixed-size frames ({@link ./frames.ts} layout), dialer D to acceptor A:
 *
 * ```
 * D → A  HELLO       a = D's id, b = cluster size, block = A's id, payload: nonce_D (16 bytes)
 * A → D  HELLO_ACK   a = A's id, b = cluster size, block = D's id, payload: nonce_A (16) ‖ mac_A (32)
 * D → A  HELLO_AUTH  a = D's id, b = cluster size, block = A's id, payload: mac_D (32)
 *
 * mac_X = HMAC-SHA256(secret, label_X ‖ u32le D ‖ u32le A ‖ u32le size ‖ members ‖ nonce_D ‖ nonce_A)
 * label_A = "vmkit-dsm-ack-1", label_D = "vmkit-dsm-auth-1",
 * members = SHA-256 of the member list ("host:port" in id order, comma-separated)
 * ```
 *
 * `region` of all three frames is the channel: 0 for the connection between
 * two nodes (a node is dialed only by higher ids), k >= 1 for the request
 * channel of D's worker k-1 to A (any other member may dial it; the labels
 * then end in "/chan/k", so a proof for one channel is no proof for another).
 *
 * A answers only a well-formed HELLO addressed to it from a member id that
 * dials it; D checks mac_A before it sends anything else, and A attaches the
 * connection as node D only after mac_D checks out. Each step has a
 * deadline, so a silent peer costs a timeout, never a hang.
 *
 * @module
 */

import { DsmConfigError, DsmPeerBusyError, DsmProtocolError } from "./errors.ts";
import {
  decodeBody,
  encodeFrame,
  HEADER_SIZE,
  LENGTH_SIZE,
  type Message,
  MsgType,
} from "./frames.ts";

/** Environment variable holding the cluster secret when no secret file is given. */
export const SECRET_ENV = "VMKIT_DSM_SECRET";
/** Bytes of each side's nonce. */
export const NONCE_BYTES = 16;
/** Bytes of an HMAC-SHA256. */
export const MAC_BYTES = 32;
/** Shortest cluster secret accepted, in bytes. */
export const MIN_SECRET_BYTES = 16;

const HELLO_LEN = LENGTH_SIZE + HEADER_SIZE + NONCE_BYTES;
const ACK_LEN = LENGTH_SIZE + HEADER_SIZE + NONCE_BYTES + MAC_BYTES;
const AUTH_LEN = LENGTH_SIZE + HEADER_SIZE + MAC_BYTES;
const LABEL_ACK = "vmkit-dsm-ack-1";
const LABEL_AUTH = "vmkit-dsm-auth-1";
/** Most request channels one node may open to another (one per worker). */
export const MAX_CHANNELS = 64;

function label(base: string, channel: number): Uint8Array {
  return new TextEncoder().encode(channel === 0 ? base : `${base}/chan/${channel}`);
}

/** The keyed identity of one cluster: its secret and its member list. */
export interface ClusterAuth {
  /** HMAC-SHA256 key of the cluster secret. */
  readonly key: CryptoKey;
  /** SHA-256 of the member list, so nodes configured with different members refuse each other. */
  readonly members: Uint8Array;
  /** Number of members. */
  readonly size: number;
}

/**
 * Prepares the handshake key for `secret` and the ordered member list.
 *
 * @throws {DsmConfigError} when the secret is shorter than {@link MIN_SECRET_BYTES}.
 */
export async function clusterAuth(
  secret: Uint8Array,
  members: readonly string[],
): Promise<ClusterAuth> {
  if (secret.length < MIN_SECRET_BYTES) {
    throw new DsmConfigError(
      `the cluster secret has ${secret.length} bytes; give at least ${MIN_SECRET_BYTES} ` +
        `(e.g. 32 random bytes, the same on every node)`,
    );
  }
  const key = await crypto.subtle.importKey(
    "raw",
    new Uint8Array(secret),
    { name: "HMAC", hash: "SHA-256" },
    false,
    ["sign", "verify"],
  );
  const digest = await crypto.subtle.digest(
    "SHA-256",
    new TextEncoder().encode(members.join(",")),
  );
  return { key, members: new Uint8Array(digest), size: members.length };
}

function macInput(
  label: Uint8Array,
  auth: ClusterAuth,
  dialer: number,
  acceptor: number,
  nonceD: Uint8Array,
  nonceA: Uint8Array,
): Uint8Array<ArrayBuffer> {
  const out = new Uint8Array(label.length + 12 + auth.members.length + 2 * NONCE_BYTES);
  const v = new DataView(out.buffer);
  out.set(label, 0);
  let o = label.length;
  v.setUint32(o, dialer, true);
  v.setUint32(o + 4, acceptor, true);
  v.setUint32(o + 8, auth.size, true);
  o += 12;
  out.set(auth.members, o);
  o += auth.members.length;
  out.set(nonceD, o);
  out.set(nonceA, o + NONCE_BYTES);
  return out;
}

async function sign(auth: ClusterAuth, data: Uint8Array<ArrayBuffer>): Promise<Uint8Array> {
  return new Uint8Array(await crypto.subtle.sign("HMAC", auth.key, data));
}

/** Constant-time check of `mac` (WebCrypto's verify). */
async function verify(
  auth: ClusterAuth,
  mac: Uint8Array,
  data: Uint8Array<ArrayBuffer>,
): Promise<boolean> {
  return await crypto.subtle.verify("HMAC", auth.key, new Uint8Array(mac), data);
}

/**
 * Reads exactly `n` bytes from `conn` by `deadline` (ms since the epoch);
 * closes the connection and throws on timeout or end of stream.
 */
async function readExact(conn: Deno.Conn, n: number, deadline: number): Promise<Uint8Array> {
  const buf = new Uint8Array(n);
  let got = 0;
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    closeQuietly(conn);
  }, Math.max(1, deadline - Date.now()));
  try {
    while (got < n) {
      let r: number | null;
      try {
        r = await conn.read(buf.subarray(got));
      } catch (err) {
        if (timedOut) throw new DsmProtocolError("no handshake before the deadline (silent peer)");
        throw err;
      }
      if (r === null) {
        throw new DsmProtocolError(`the peer closed the connection during the handshake`);
      }
      got += r;
    }
  } finally {
    clearTimeout(timer);
  }
  return buf;
}

/** Closes `conn` unless it is closed already (the start may give up at the same moment). */
export function closeQuietly(conn: Deno.Conn): void {
  try {
    conn.close();
  } catch (err) {
    if (!(err instanceof Deno.errors.BadResource)) throw err;
  }
}

async function writeAll(conn: Deno.Conn, data: Uint8Array): Promise<void> {
  let off = 0;
  while (off < data.length) off += await conn.write(data.subarray(off));
}

/** Decodes a handshake frame of `type` and exactly `payload` bytes. */
function expectFrame(bytes: Uint8Array, type: number, payload: number, size: number): Message {
  const len = new DataView(bytes.buffer, bytes.byteOffset).getUint32(0, true);
  if (len !== HEADER_SIZE + payload) {
    throw new DsmProtocolError(`handshake frame has length ${len}, not ${HEADER_SIZE + payload}`);
  }
  const m = decodeBody(bytes.subarray(LENGTH_SIZE));
  if (m.type !== type || m.data === null || m.data.length !== payload) {
    throw new DsmProtocolError(`expected handshake frame type ${type}, got type ${m.type}`);
  }
  if (m.b !== size) {
    throw new DsmProtocolError(`peer is in a cluster of ${m.b} nodes, this one has ${size}`);
  }
  return m;
}

/**
 * The dialer's side: node `self` proves itself to node `peer` and checks
 * that `peer` knows the secret.
 *
 * @throws {DsmProtocolError} when the peer does not answer in time, answers
 * badly, or fails authentication.
 */
export async function dialHandshake(
  conn: Deno.Conn,
  auth: ClusterAuth,
  self: number,
  peer: number,
  deadline: number,
  channel = 0,
): Promise<void> {
  const nonceD = crypto.getRandomValues(new Uint8Array(NONCE_BYTES));
  const hello = { region: channel, block: peer, a: self, b: auth.size };
  let ackBytes: Uint8Array;
  try {
    await writeAll(conn, encodeFrame({ ...hello, type: MsgType.HELLO, data: nonceD }));
    ackBytes = await readExact(conn, ACK_LEN, deadline);
  } catch (err) {
    // Hung up on before any answer: the acceptor may be turning connections away; retry.
    if (Date.now() < deadline) {
      throw new DsmPeerBusyError(
        `no answer to HELLO (${err instanceof Error ? err.message : String(err)})`,
      );
    }
    throw err;
  }
  const ack = expectFrame(
    ackBytes,
    MsgType.HELLO_ACK,
    NONCE_BYTES + MAC_BYTES,
    auth.size,
  );
  if (ack.a !== peer || ack.block !== self || ack.region !== channel) {
    throw new DsmProtocolError(`the peer answered as node ${ack.a} to node ${ack.block}`);
  }
  const payload = ack.data ?? new Uint8Array(0);
  const nonceA = payload.subarray(0, NONCE_BYTES);
  const macA = payload.subarray(NONCE_BYTES);
  const ackLabel = label(LABEL_ACK, channel);
  if (!(await verify(auth, macA, macInput(ackLabel, auth, self, peer, nonceD, nonceA)))) {
    throw new DsmProtocolError(
      "the peer failed authentication: it does not know the cluster secret, or has another " +
        "member list",
    );
  }
  const macD = await sign(
    auth,
    macInput(label(LABEL_AUTH, channel), auth, self, peer, nonceD, nonceA),
  );
  await writeAll(conn, encodeFrame({ ...hello, type: MsgType.HELLO_AUTH, data: macD }));
}

/**
 * The acceptor's side: node `self` answers a dialer and returns its node id
 * once it proved it knows the secret. Only ids above `self` dial `self`.
 *
 * @param claimed called with the id the dialer claims, as soon as it is read,
 * so a failure can be reported against the node it pretended to be.
 * @throws {DsmProtocolError} on anything but a well-formed, authentic handshake.
 */
export async function acceptHandshake(
  conn: Deno.Conn,
  auth: ClusterAuth,
  self: number,
  deadline: number,
  claimed: (id: number) => void = () => {},
): Promise<number> {
  const { node, channel } = await acceptChannelHandshake(conn, auth, self, deadline, claimed);
  if (channel !== 0) {
    closeQuietly(conn);
    throw new DsmProtocolError(`node ${node} opened request channel ${channel}, not a node link`);
  }
  return node;
}

/**
 * {@link acceptHandshake} for a connection that may also be a worker's
 * request channel: returns the dialer's node id and the channel (0: the
 * node link, k >= 1: the channel of its worker k-1).
 */
export async function acceptChannelHandshake(
  conn: Deno.Conn,
  auth: ClusterAuth,
  self: number,
  deadline: number,
  claimed: (id: number) => void = () => {},
): Promise<{ node: number; channel: number }> {
  const hello = expectFrame(
    await readExact(conn, HELLO_LEN, deadline),
    MsgType.HELLO,
    NONCE_BYTES,
    auth.size,
  );
  const dialer = hello.a;
  const channel = hello.region;
  if (channel > MAX_CHANNELS) {
    throw new DsmProtocolError(`HELLO for channel ${channel}: at most ${MAX_CHANNELS}`);
  }
  if (channel === 0 && (dialer <= self || dialer >= auth.size || hello.block !== self)) {
    throw new DsmProtocolError(
      `HELLO from node ${dialer} to node ${hello.block}: node ${self} is dialed only by ` +
        `nodes ${self + 1}..${auth.size - 1}`,
    );
  }
  if (channel !== 0 && (dialer === self || dialer >= auth.size || hello.block !== self)) {
    throw new DsmProtocolError(
      `HELLO for channel ${channel} from node ${dialer} to node ${hello.block}: not a member ` +
        `dialing node ${self}`,
    );
  }
  claimed(dialer);
  const nonceD = hello.data ?? new Uint8Array(0);
  const nonceA = crypto.getRandomValues(new Uint8Array(NONCE_BYTES));
  const macA = await sign(
    auth,
    macInput(label(LABEL_ACK, channel), auth, dialer, self, nonceD, nonceA),
  );
  const payload = new Uint8Array(NONCE_BYTES + MAC_BYTES);
  payload.set(nonceA, 0);
  payload.set(macA, NONCE_BYTES);
  const head = { region: channel, block: dialer, a: self, b: auth.size };
  await writeAll(conn, encodeFrame({ ...head, type: MsgType.HELLO_ACK, data: payload }));
  const am = expectFrame(
    await readExact(conn, AUTH_LEN, deadline),
    MsgType.HELLO_AUTH,
    MAC_BYTES,
    auth.size,
  );
  if (am.a !== dialer || am.block !== self || am.region !== channel) {
    throw new DsmProtocolError(`HELLO_AUTH from node ${am.a} in a handshake with node ${dialer}`);
  }
  const macD = am.data ?? new Uint8Array(0);
  const authLabel = label(LABEL_AUTH, channel);
  if (!(await verify(auth, macD, macInput(authLabel, auth, dialer, self, nonceD, nonceA)))) {
    throw new DsmProtocolError(
      `failed authentication as node ${dialer}: it does not know the cluster secret, or has ` +
        `another member list`,
    );
  }
  return { node: dialer, channel };
}
