/**
 * Store-heavy kernel for the lock-up free store benchmark: in every round each
 * worker overwrites every word of the blocks it is assigned, all homed on other
 * nodes and last read by every node, so each block's first store is a miss
 * (an upgrade that invalidates the other copies). Then all workers read the
 * blocks back and check them. The write phase (stores until performed, via a
 * fence) is timed; `result` returns the mean write-phase time of the writers.
 *
 * The first store of each block in round 0 is a miss (read-exclusive of a
 * block nobody cached) and is timed alone: with blocking stores it is the
 * store-miss latency inside the kernel (`missUs`, median over the writers).
 * With `solo` = a rank, only that worker writes (the others wait at the
 * barrier), which measures the same misses with nothing else going on.
 *
 * @module
 */

import { DsmError } from "../errors.ts";
import { type DsmContext, type DsmProgram, intParam as int, type Params } from "../program.ts";
import { hash32 } from "./util.ts";

/** Bytes of one rank's slot in the `times` region: write ms, miss µs. */
const SLOT = 64;

/** The store-kernel program. */
export const program: DsmProgram = {
  name: "store_kernel",
  defaults: { blocks: 128, blockSize: 256, rounds: 6, solo: -1 },
  limits: {
    blocks: int(1, 1 << 20),
    blockSize: int(64, 4096),
    rounds: int(1, 1e6),
    solo: int(-1, 1 << 20),
  },
  regions: (p: Readonly<Params>, shape) => [
    { name: "buf", size: (p.blocks ?? 0) * (p.blockSize ?? 64), blockSize: p.blockSize ?? 64 },
    { name: "times", size: shape.nodes * shape.workers * SLOT, blockSize: 64 },
  ],
  run(ctx: DsmContext): void {
    const { blocks = 0, blockSize = 64, rounds = 0, solo = -1 } = ctx.params;
    const buf = ctx.region("buf");
    const words = blockSize / 4;
    const mine: number[] = [];
    for (let b = 0; b < blocks; b++) {
      const home = b % ctx.nodeCount;
      // Deal blocks to workers of the other nodes only.
      const candidates = ctx.size - ctx.workersPerNode;
      if (candidates <= 0) {
        if (b % ctx.size === ctx.rank) mine.push(b);
        continue;
      }
      let k = hash32(b) % candidates;
      const firstOfHome = home * ctx.workersPerNode;
      if (k >= firstOfHome) k += ctx.workersPerNode;
      if (k === ctx.rank) mine.push(b);
    }
    const writes = solo < 0 || solo === ctx.rank;
    const misses: number[] = [];
    let total = 0;
    for (let r = 0; r < rounds; r++) {
      const t0 = performance.now();
      if (writes) {
        for (const b of mine) {
          const base = b * blockSize;
          const s0 = performance.now();
          buf.storeU32(base, hash32(r, b, 0));
          if (r === 0) misses.push((performance.now() - s0) * 1000);
          for (let w = 1; w < words; w++) buf.storeU32(base + w * 4, hash32(r, b, w));
        }
      }
      ctx.fence();
      total += performance.now() - t0;
      ctx.barrier();
      if (solo < 0) {
        for (let b = ctx.rank % blocks; b < blocks; b += 7) {
          const v = buf.loadU32(b * blockSize + 4);
          if (v !== hash32(r, b, 1)) {
            throw new DsmError(`store kernel read ${v} in block ${b} round ${r}`);
          }
        }
      }
      ctx.barrier();
    }
    misses.sort((x, y) => x - y);
    const times = ctx.region("times");
    times.storeF64(ctx.rank * SLOT, writes ? total : -1);
    times.storeF64(ctx.rank * SLOT + 8, misses[misses.length >> 1] ?? -1);
  },
  result(ctx: DsmContext): Record<string, number> {
    const times = ctx.region("times");
    let sum = 0;
    let writers = 0;
    const missUs: number[] = [];
    for (let k = 0; k < ctx.size; k++) {
      const ms = times.loadF64(k * SLOT);
      if (ms < 0) continue;
      sum += ms;
      writers++;
      const us = times.loadF64(k * SLOT + 8);
      if (us >= 0) missUs.push(us);
    }
    missUs.sort((x, y) => x - y);
    const { blocks = 0, blockSize = 64, rounds = 0 } = ctx.params;
    return {
      writeMs: sum / Math.max(1, writers),
      stores: (blocks * blockSize / 4) * rounds,
      missUs: missUs[missUs.length >> 1] ?? -1,
    };
  },
};
