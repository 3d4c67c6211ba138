/**
 * Full-mesh TCP transport between the nodes of a static membership list,
 * carrying length-prefixed frames ({@link ./frames.ts}); every connection is
 * mutually authenticated first ({@link ./handshake.ts}). Writes to a peer are
 * coalesced and kept in order; a connection that closes before its peer said
 * BYE is reported as a node death.
 *
 * @module
 */

import { DsmConfigError, DsmNodeDeathError, DsmPeerBusyError, DsmProtocolError } from "./errors.ts";
import { encodeFrame, FrameReader, type Message, MsgType } from "./frames.ts";
import {
  acceptChannelHandshake,
  closeQuietly,
  type ClusterAuth,
  dialHandshake,
} from "./handshake.ts";

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
  /** The cluster's secret and member list (see {@link clusterAuth}). */
  auth: ClusterAuth;
  /** Called for every frame received from another node. */
  onMessage: (from: number, msg: Message) => void;
  /** Called once when a peer's connection is lost without a goodbye. */
  onPeerLost: (from: number, error: Error) => void;
  /** Called with one line for every incoming connection refused at start (default: stderr). */
  onRefused?: (line: string) => void;
  /**
   * Request channels per node (its workers; every node runs the same number):
   * this node opens that many connections to every other node and expects as
   * many from each. A worker writes its requests straight onto its own (see
   * {@link Mesh.channels}); frames arriving on one go to `onMessage` like any
   * other, and must be requests. Default 0.
   */
  channels?: number;
}

/** The addresses of one request channel (a worker finds its socket by them). */
export interface ChannelAddr {
  /** Local TCP port. */
  localPort: number;
  /** Remote TCP port. */
  remotePort: number;
}

/** Message types a request channel may carry. */
const CHANNEL_TYPES: ReadonlySet<number> = new Set([MsgType.READ, MsgType.READX, MsgType.UPGRADE]);

/** Longest one incoming handshake may take (a silent connection is dropped after it). */
const HANDSHAKE_MS = 5_000;
/** Most incoming handshakes in progress at once; more connections are closed at once. */
const MAX_PENDING_HANDSHAKES = 64;

/** The set of TCP connections from one node to all others. */
export class Mesh {
  readonly #opts: MeshOptions;
  readonly #peers: (Peer | undefined)[];
  #listener: Deno.TcpListener | null = null;
  /** Incoming connections still in their handshake. */
  readonly #pending = new Set<Deno.TcpConn>();
  #closed = false;
  /** Request channels, both directions (closed with the mesh). */
  readonly #channelConns: Deno.TcpConn[] = [];
  /** This node's outgoing channels: `[peer][worker]`. */
  readonly #outChannels: (ChannelAddr | undefined)[][];
  /** Traffic sent by this node. */
  readonly stats: TrafficStats = { messages: 0, bytes: 0 };

  /** Creates a mesh; call {@link Mesh.start} to connect it. */
  constructor(opts: MeshOptions) {
    this.#opts = opts;
    this.#peers = new Array(opts.members.length).fill(undefined);
    this.#outChannels = opts.members.map(() => []);
  }

  /** The request channel of worker `w` to node `peer` (after {@link Mesh.start}). */
  channel(peer: number, w: number): ChannelAddr | undefined {
    return this.#outChannels[peer]?.[w];
  }

  /** Every outgoing channel of worker `w`, by node id (undefined for this node). */
  channels(w: number): (ChannelAddr | undefined)[] {
    return this.#outChannels.map((c) => c[w]);
  }

  /**
   * Listens, dials lower ids, accepts higher ids; resolves when every peer is
   * connected and authenticated. Incoming connections that are silent, speak
   * garbage or fail authentication are dropped (reported through
   * `onRefused`) while the node goes on waiting for its real peers, until
   * `timeoutMs`.
   */
  async start(timeoutMs: number): Promise<void> {
    const { id, members } = this.#opts;
    const self = members[id];
    if (self === undefined) throw new DsmConfigError(`node id ${id} is not in the member list`);
    this.#listener = Deno.listen({ hostname: self.host, port: self.port, transport: "tcp" });
    const deadline = Date.now() + timeoutMs;
    const channels = this.#opts.channels ?? 0;
    let keepListening = false;
    try {
      const accepting = this.#acceptAll(members.length - 1 - id, deadline, timeoutMs);
      const dials: Promise<void>[] = [];
      for (let j = 0; j < id; j++) dials.push(this.#dial(j, deadline));
      await Promise.all([accepting, ...dials]);
      // Every peer listens now (until it leaves): open this node's request
      // channels. One attempt each; a peer that refuses one (or is not a vmkit
      // node) costs nothing but that channel: its requests go by the node link.
      const opening: Promise<void>[] = [];
      for (let j = 0; j < members.length; j++) {
        for (let c = 1; j !== id && c <= channels; c++) {
          opening.push(this.#dial(j, Math.min(deadline, Date.now() + HANDSHAKE_MS), c));
        }
      }
      for (const r of await Promise.allSettled(opening)) {
        if (r.status === "rejected") {
          this.#refused(
            `dsm: node ${id}: no request channel (${String(r.reason)}); using the node link`,
          );
        }
      }
      keepListening = channels > 0;
    } finally {
      if (!keepListening) {
        this.#listener?.close();
        this.#listener = null;
        for (const c of this.#pending) closeQuietly(c);
        this.#pending.clear();
      }
    }
  }

  #refused(line: string): void {
    (this.#opts.onRefused ?? ((l: string) => console.error(l)))(line);
  }

  /**
   * Accepts until `count` higher-id peers are authenticated, or rejects at
   * `deadline`; with request channels, goes on accepting those (only) until
   * the mesh closes.
   */
  #acceptAll(count: number, deadline: number, timeoutMs: number): Promise<void> {
    const listener = this.#listener;
    const channels = this.#opts.channels ?? 0;
    if (listener === null || (count === 0 && channels === 0)) return Promise.resolve();
    const seenChannels = new Set<string>();
    const { id, members } = this.#opts;
    /** Why the last connection that claimed to be each node was refused. */
    const lastRefusal = new Map<number, string>();
    return new Promise<void>((resolve, reject) => {
      let got = 0;
      let done = false;
      const finish = (err?: Error): void => {
        if (done) return;
        done = true;
        clearTimeout(timer);
        if (err === undefined) resolve();
        else reject(err);
      };
      const timer = setTimeout(() => {
        const missing: string[] = [];
        for (let j = id + 1; j < members.length; j++) {
          if (this.#peers[j] !== undefined) continue;
          const ep = members[j];
          const why = lastRefusal.get(j);
          missing.push(
            `node ${j}${ep === undefined ? "" : ` at ${formatEndpoint(ep)}`}` +
              (why === undefined ? "" : ` (a connection claiming to be it was refused: ${why})`),
          );
        }
        finish(
          new DsmConfigError(
            `node ${id}: only ${got} of ${count} peers joined before the start timeout ` +
              `(${timeoutMs} ms); missing ${missing.join(", ")}`,
          ),
        );
      }, Math.max(1, deadline - Date.now()));
      const handshake = async (conn: Deno.TcpConn): Promise<void> => {
        const ra = conn.remoteAddr;
        const from = formatEndpoint({ host: ra.hostname, port: ra.port });
        let claimed = -1;
        try {
          const hsDeadline = done
            ? Date.now() + HANDSHAKE_MS
            : Math.min(deadline, Date.now() + HANDSHAKE_MS);
          const { node: peerId, channel } = await acceptChannelHandshake(
            conn,
            this.#opts.auth,
            id,
            hsDeadline,
            (c) => {
              claimed = c;
            },
          );
          this.#pending.delete(conn);
          if (channel !== 0) {
            const key = `${peerId}/${channel}`;
            if (channel > channels || seenChannels.has(key) || this.#closed) {
              throw new DsmProtocolError(`node ${peerId} channel ${channel} is not expected`);
            }
            seenChannels.add(key);
            this.#attachChannel(peerId, conn);
          } else {
            if (done || this.#peers[peerId] !== undefined) {
              throw new DsmProtocolError(`node ${peerId} is already connected`);
            }
            this.#attach(peerId, conn);
            got++;
          }
          if (got === count) finish();
        } catch (err) {
          this.#pending.delete(conn);
          closeQuietly(conn);
          const why = err instanceof Error ? err.message : String(err);
          if (claimed >= 0) lastRefusal.set(claimed, why);
          if (!this.#closed) {
            this.#refused(`dsm: node ${id} refused a connection from ${from}: ${why}`);
          }
        }
      };
      (async () => {
        for (;;) {
          let conn: Deno.TcpConn;
          try {
            conn = await listener.accept();
          } catch (err) {
            // The listener closes when the mesh is complete (or closes) or start gave up.
            if (done || this.#closed) return;
            throw err;
          }
          if (done && channels === 0) {
            closeQuietly(conn);
            return;
          }
          if (this.#pending.size >= MAX_PENDING_HANDSHAKES) {
            closeQuietly(conn);
            continue;
          }
          conn.setNoDelay(true);
          this.#pending.add(conn);
          void handshake(conn);
        }
      })().catch((err: unknown) => finish(err instanceof Error ? err : new Error(String(err))));
      if (count === 0) finish();
    });
  }

  async #dial(peerId: number, deadline: number, channel = 0): Promise<void> {
    const ep = this.#opts.members[peerId];
    if (ep === undefined) throw new DsmConfigError(`no member ${peerId}`);
    const where = `node ${this.#opts.id}: node ${peerId} at ${formatEndpoint(ep)}`;
    for (;;) {
      let conn: Deno.TcpConn;
      try {
        conn = await Deno.connect({ hostname: ep.host, port: ep.port, transport: "tcp" });
      } catch (err) {
        if (
          !(err instanceof Deno.errors.ConnectionRefused) || Date.now() > deadline || channel !== 0
        ) {
          throw new DsmConfigError(`${where}: cannot connect: ${err}`);
        }
        await new Promise((r) => setTimeout(r, 20));
        continue;
      }
      conn.setNoDelay(true);
      try {
        await dialHandshake(conn, this.#opts.auth, this.#opts.id, peerId, deadline, channel);
      } catch (err) {
        closeQuietly(conn);
        // Turned away before any answer (its start is crowded, or it is restarting): again.
        if (err instanceof DsmPeerBusyError && Date.now() < deadline && channel === 0) {
          await new Promise((r) => setTimeout(r, 50));
          continue;
        }
        throw new DsmConfigError(
          `${where}: handshake failed: ${err instanceof Error ? err.message : String(err)}; ` +
            `every node needs the same cluster secret and member list`,
        );
      }
      if (channel === 0) {
        this.#attach(peerId, conn);
      } else {
        this.#channelConns.push(conn);
        const la = conn.localAddr as Deno.NetAddr;
        const ra = conn.remoteAddr as Deno.NetAddr;
        const list = this.#outChannels[peerId];
        if (list !== undefined) list[channel - 1] = { localPort: la.port, remotePort: ra.port };
      }
      return;
    }
  }

  /**
   * Reads the requests a peer's worker writes on its channel. Its end is not
   * a death (the node link says that); anything but a request is.
   */
  async #attachChannel(peerId: number, conn: Deno.TcpConn): Promise<void> {
    this.#channelConns.push(conn);
    const reader = new FrameReader((msg) => {
      if (!CHANNEL_TYPES.has(msg.type)) {
        throw new DsmProtocolError(
          `node ${peerId} sent message type ${msg.type} on a request channel`,
        );
      }
      this.#opts.onMessage(peerId, msg);
    });
    const buf = new Uint8Array(READ_BUFFER);
    try {
      for (;;) {
        const n = await conn.read(buf);
        if (n === null) return;
        reader.push(buf.subarray(0, n));
      }
    } catch (err) {
      if (err instanceof DsmProtocolError) this.#opts.onPeerLost(peerId, err);
      // A read error after close, or the peer leaving: the node link reports deaths.
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
    this.#closed = true;
    this.#listener?.close();
    this.#listener = null;
    for (const c of this.#pending) closeQuietly(c);
    this.#pending.clear();
    for (const c of this.#channelConns) closeQuietly(c);
    this.#channelConns.length = 0;
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
