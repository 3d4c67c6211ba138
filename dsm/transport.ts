/**
 * Full-mesh TCP transport between the nodes of a static membership list,
 * carrying length-prefixed frames ({@link ./frames.ts}). Writes to a peer are
 * coalesced and kept in order; a connection that closes before its peer said
 * BYE is reported as a node death.
 *
 * @module
 */

import { DsmConfigError, DsmNodeDeathError, DsmProtocolError } from "./errors.ts";
import {
  encodeFrame,
  FrameReader,
  HEADER_SIZE,
  LENGTH_SIZE,
  type Message,
  MsgType,
} from "./frames.ts";

/** A `host:port` TCP address of a node. */
export interface Endpoint {
  /** Host name or IP address. */
  host: string;
  /** TCP port. */
  port: number;
}

/** Parses `HOST:PORT` (IPv6 as `[::1]:PORT`). */
export function parseEndpoint(text: string): Endpoint {
  const m = /^(?:\[([^\]]+)\]|([^:]+)):(\d{1,5})$/.exec(text.trim());
  const host = m?.[1] ?? m?.[2];
  const port = Number(m?.[3]);
  if (m === null || host === undefined || !Number.isInteger(port) || port < 1 || port > 65535) {
    throw new DsmConfigError(`'${text}' is not HOST:PORT with a port from 1 to 65535`);
  }
  return { host, port };
}

/** Formats an endpoint as `host:port`. */
export function formatEndpoint(e: Endpoint): string {
  return e.host.includes(":") ? `[${e.host}]:${e.port}` : `${e.host}:${e.port}`;
}

/**
 * Orders a static membership list so every node agrees on ids: addresses
 * sorted by host then port. Returns the members and this node's id.
 */
export function orderMembers(
  self: Endpoint,
  peers: Endpoint[],
): { id: number; members: Endpoint[] } {
  const all = [self, ...peers];
  const keys = new Set(all.map(formatEndpoint));
  if (keys.size !== all.length) {
    throw new DsmConfigError(
      `membership list has duplicates: ${all.map(formatEndpoint).join(",")}`,
    );
  }
  all.sort((x, y) => (x.host < y.host ? -1 : x.host > y.host ? 1 : x.port - y.port));
  const id = all.findIndex((e) => e.host === self.host && e.port === self.port);
  return { id, members: all };
}

/** Counters of what a node sent over the network. */
export interface TrafficStats {
  /** Frames sent to other nodes. */
  messages: number;
  /** Bytes sent to other nodes, length prefixes included. */
  bytes: number;
}

interface Peer {
  conn: Deno.TcpConn;
  queue: Uint8Array[];
  writing: boolean;
  saidBye: boolean;
  closed: boolean;
}

/** Options of {@link Mesh}. */
export interface MeshOptions {
  /** This node's id (index in `members`). */
  id: number;
  /** Every node of the cluster, ordered by {@link orderMembers}. */
  members: Endpoint[];
  /** Called for every frame received from another node. */
  onMessage: (from: number, msg: Message) => void;
  /** Called once when a peer's connection is lost without a goodbye. */
  onPeerLost: (from: number, error: Error) => void;
}

/** The set of TCP connections from one node to all others. */
export class Mesh {
  readonly #opts: MeshOptions;
  readonly #peers: (Peer | undefined)[];
  #listener: Deno.TcpListener | null = null;
  /** Traffic sent by this node. */
  readonly stats: TrafficStats = { messages: 0, bytes: 0 };

  /** Creates a mesh; call {@link Mesh.start} to connect it. */
  constructor(opts: MeshOptions) {
    this.#opts = opts;
    this.#peers = new Array(opts.members.length).fill(undefined);
  }

  /** Listens, dials lower ids, accepts higher ids; resolves when every peer is connected. */
  async start(timeoutMs: number): Promise<void> {
    const { id, members } = this.#opts;
    const self = members[id];
    if (self === undefined) throw new DsmConfigError(`node id ${id} is not in the member list`);
    this.#listener = Deno.listen({ hostname: self.host, port: self.port, transport: "tcp" });
    const deadline = Date.now() + timeoutMs;
    const expectedAccepts = members.length - 1 - id;
    const accepting = this.#acceptAll(expectedAccepts, deadline);
    const dials: Promise<void>[] = [];
    for (let j = 0; j < id; j++) dials.push(this.#dial(j, deadline));
    await Promise.all([accepting, ...dials]);
    this.#listener.close();
    this.#listener = null;
  }

  async #acceptAll(count: number, deadline: number): Promise<void> {
    const listener = this.#listener;
    if (listener === null || count === 0) return;
    const timer = setTimeout(() => listener.close(), Math.max(1, deadline - Date.now()));
    try {
      for (let got = 0; got < count;) {
        let conn: Deno.TcpConn;
        try {
          conn = await listener.accept();
        } catch (err) {
          throw new DsmConfigError(
            `node ${this.#opts.id}: only ${got} of ${count} peers connected before the start timeout (${err})`,
          );
        }
        conn.setNoDelay(true);
        const peerId = await this.#readHello(conn);
        if (peerId <= this.#opts.id || this.#peers[peerId] !== undefined) {
          conn.close();
          throw new DsmProtocolError(`node ${this.#opts.id}: unexpected HELLO from node ${peerId}`);
        }
        this.#attach(peerId, conn);
        got++;
      }
    } finally {
      clearTimeout(timer);
    }
  }

  async #readHello(conn: Deno.TcpConn): Promise<number> {
    // Read exactly one HELLO frame: bytes after it belong to the read loop.
    const buf = new Uint8Array(LENGTH_SIZE + HEADER_SIZE);
    let len = 0;
    while (len < buf.length) {
      const n = await conn.read(buf.subarray(len));
      if (n === null) throw new DsmProtocolError("peer closed before sending HELLO");
      len += n;
    }
    let h: Message | null = null;
    new FrameReader((m) => {
      h = m;
    }).push(buf);
    if (h === null) throw new DsmProtocolError("no HELLO frame");
    h = h as Message;
    if (h === null || h.type !== MsgType.HELLO || h.b !== this.#opts.members.length) {
      throw new DsmProtocolError("first frame was not a HELLO for a cluster of this size");
    }
    if (h.a >= this.#opts.members.length) throw new DsmProtocolError(`HELLO from node ${h.a}`);
    return h.a;
  }

  async #dial(peerId: number, deadline: number): Promise<void> {
    const ep = this.#opts.members[peerId];
    if (ep === undefined) throw new DsmConfigError(`no member ${peerId}`);
    for (;;) {
      try {
        const conn = await Deno.connect({ hostname: ep.host, port: ep.port, transport: "tcp" });
        conn.setNoDelay(true);
        const hello = encodeFrame({
          type: MsgType.HELLO,
          region: 0,
          block: 0,
          a: this.#opts.id,
          b: this.#opts.members.length,
          data: null,
        });
        await writeAll(conn, hello);
        this.#attach(peerId, conn);
        return;
      } catch (err) {
        if (!(err instanceof Deno.errors.ConnectionRefused) || Date.now() > deadline) {
          throw new DsmConfigError(
            `node ${this.#opts.id}: cannot connect to node ${peerId} at ${
              formatEndpoint(ep)
            }: ${err}`,
          );
        }
        await new Promise((r) => setTimeout(r, 20));
      }
    }
  }

  #attach(peerId: number, conn: Deno.TcpConn): void {
    const peer: Peer = { conn, queue: [], writing: false, saidBye: false, closed: false };
    this.#peers[peerId] = peer;
    this.#readLoop(peerId, peer);
  }

  async #readLoop(peerId: number, peer: Peer): Promise<void> {
    const reader = new FrameReader((msg) => {
      if (msg.type === MsgType.BYE || msg.type === MsgType.FAILED) peer.saidBye = true;
      this.#opts.onMessage(peerId, msg);
    });
    const buf = new Uint8Array(READ_BUFFER);
    let failure: Error | null = null;
    try {
      for (;;) {
        const n = await peer.conn.read(buf);
        if (n === null) break;
        reader.push(buf.subarray(0, n));
      }
    } catch (err) {
      failure = err instanceof Error ? err : new Error(String(err));
    }
    if (peer.saidBye && (failure === null || peer.closed)) return;
    if (peer.closed) return;
    const ep = this.#opts.members[peerId];
    const where = ep === undefined ? "" : ` at ${formatEndpoint(ep)}`;
    const why = failure === null ? "closed its connection" : `failed (${failure.message})`;
    this.#opts.onPeerLost(
      peerId,
      failure instanceof DsmProtocolError ? failure : new DsmNodeDeathError(
        `node ${peerId}${where} ${why} without leaving the cluster: it died; ` +
          `the program cannot continue (restart the cluster)`,
      ),
    );
  }

  /** Queues a frame to node `to` (never this node). */
  send(to: number, msg: Message): void {
    const peer = this.#peers[to];
    if (peer === undefined || peer.closed) return;
    const frame = encodeFrame(msg);
    this.stats.messages++;
    this.stats.bytes += frame.length;
    if (peer.writing) peer.queue.push(frame);
    else this.#write(peer, frame);
  }

  /**
   * Writes `out`, then whatever was queued meanwhile, coalesced into one
   * buffer. Plain promise callbacks rather than an async loop: a miss's frame
   * reaches the socket in the same turn it was sent, with no extra awaits.
   */
  #write(peer: Peer, out: Uint8Array): void {
    peer.writing = true;
    peer.conn.write(out).then(
      (n) => {
        if (peer.closed) {
          peer.writing = false;
        } else if (n < out.length) {
          this.#write(peer, out.subarray(n));
        } else if (peer.queue.length === 0) {
          peer.writing = false;
        } else {
          const frames = peer.queue;
          peer.queue = [];
          let total = 0;
          for (const f of frames) total += f.length;
          const next = new Uint8Array(total);
          let off = 0;
          for (const f of frames) {
            next.set(f, off);
            off += f.length;
          }
          this.#write(peer, next);
        }
      },
      (err: unknown) => {
        peer.writing = false;
        peer.queue = [];
        // The read loop reports the death; a failed write alone only stops this queue.
        if (!peer.closed && !peer.saidBye) console.error(`dsm: write to peer failed: ${err}`);
      },
    );
  }

  /** Resolves once every queued frame has been written (or after `timeoutMs`). */
  async drain(timeoutMs = 10_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (Date.now() < deadline) {
      const busy = this.#peers.some((p) =>
        p !== undefined && !p.closed && (p.writing || p.queue.length > 0)
      );
      if (!busy) return;
      await new Promise((r) => setTimeout(r, 1));
    }
  }

  /** True once peer `id` said BYE. */
  saidBye(id: number): boolean {
    return this.#peers[id]?.saidBye ?? false;
  }

  /** Closes every connection. */
  close(): void {
    this.#listener?.close();
    this.#listener = null;
    for (const peer of this.#peers) {
      if (peer === undefined || peer.closed) continue;
      peer.closed = true;
      try {
        peer.conn.close();
      } catch (err) {
        if (!(err instanceof Deno.errors.BadResource)) throw err;
      }
    }
  }
}

const READ_BUFFER = 8192;

async function writeAll(conn: Deno.Conn, data: Uint8Array): Promise<void> {
  let off = 0;
  while (off < data.length) off += await conn.write(data.subarray(off));
}
