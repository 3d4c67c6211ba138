/**
 * Store-heavy kernel for the lock-up free store benchmark: in every round each
 * worker overwrites every word of the blocks it is assigned, all homed on other
 * nodes and last read by every node, so each block's first store is a miss
 * (an upgrade that invalidates the other copies). Then all workers read the
 * blocks back and check them. The write phase (stores until performed, via a
 * fence) is timed; `result` returns the summed write-phase time.
 *
 * @module
 */

import { DsmError } from "../errors.ts";
import { type DsmContext, type DsmProgram, intParam as int, type Params } from "../program.ts";
import { hash32 } from "./util.ts";

/** The store-kernel program. */
export const program: DsmProgram = {
  name: "store_kernel",
  defaults: { blocks: 128, blockSize: 256, rounds: 6 },
  limits: { blocks: int(1, 1 << 20), blockSize: int(64, 4096), rounds: int(1, 1e6) },
  regions: (p: Readonly<Params>, shape) => [
    { name: "buf", size: (p.blocks ?? 0) * (p.blockSize ?? 64), blockSize: p.blockSize ?? 64 },
    { name: "times", size: shape.nodes * shape.workers * 64, blockSize: 64 },
  ],
  run(ctx: DsmContext): void {
    const { blocks = 0, blockSize = 64, rounds = 0 } = ctx.params;
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
    let total = 0;
    for (let r = 0; r < rounds; r++) {
      const t0 = performance.now();
      for (const b of mine) {
        for (let w = 0; w < words; w++) buf.storeU32(b * blockSize + w * 4, hash32(r, b, w));
      }
      ctx.fence();
      total += performance.now() - t0;
      ctx.barrier();
      for (let b = ctx.rank % blocks; b < blocks; b += 7) {
        const v = buf.loadU32(b * blockSize + 4);
        if (v !== hash32(r, b, 1)) {
          throw new DsmError(`store kernel read ${v} in block ${b} round ${r}`);
        }
      }
      ctx.barrier();
    }
    ctx.region("times").storeF64(ctx.rank * 64, total);
  },
  result(ctx: DsmContext): Record<string, number> {
    let sum = 0;
    for (let k = 0; k < ctx.size; k++) sum += ctx.region("times").loadF64(k * 64);
    const { blocks = 0, blockSize = 64, rounds = 0 } = ctx.params;
    return { writeMs: sum / ctx.size, stores: (blocks * blockSize / 4) * rounds };
  },
};
