/**
 * Messages between a node's protocol thread and its workers.
 *
 * @module
 */

import type { HomePolicy, RegionBuffers } from "./layout.ts";
import type { ChannelAddr } from "./transport.ts";
import type { Params } from "./program.ts";

/** Everything a worker needs to start, sent once by its node. */
export interface WorkerInit {
  /** URL of the program module (named export `program`). */
  programUrl: string;
  /** Run parameters. */
  params: Params;
  /** The node's region buffers, in region-index order. */
  regions: RegionBuffers[];
  /** Each region's home policy, in region-index order. */
  homes: HomePolicy[];
  /** This worker's request channel to each node (null: none, this node, or no channels). */
  channels: (ChannelAddr | null)[];
  /** Per-worker control words (see `Ctrl` in layout.ts). */
  ctrl: SharedArrayBuffer;
  /** Per-worker rings of miss requests (see `RING_STRIDE` in layout.ts). */
  rings: SharedArrayBuffer;
  /** Node-wide control words and failure message. */
  nodeCtrl: SharedArrayBuffer;
  /** Node id. */
  nodeId: number;
  /** Number of nodes. */
  nodeCount: number;
  /** Worker index within the node. */
  workerId: number;
  /** Workers per node. */
  workers: number;
  /** True to run with blocking stores. */
  blockingStores: boolean;
}

/** A message from a worker to its node. */
export type WorkerMessage =
  | { op: "ready" }
  | { op: "lock"; id: number }
  | { op: "unlock"; id: number }
  | { op: "barrier" }
  | { op: "result"; value: unknown }
  | { op: "done" }
  | { op: "error"; name: string; message: string };
