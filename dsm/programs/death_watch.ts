/**
 * Node-death probe: in every round each worker stores the round number into
 * its own word (blocks homed round-robin), passes a barrier, and checks every
 * other worker's word. It runs for `rounds` rounds (long enough to be killed);
 * a wrong value throws an error whose message starts with `WRONG VALUE`.
 *
 * @module
 */

import { DsmError } from "../errors.ts";
import { type DsmContext, type DsmProgram, intParam as int, type Params } from "../program.ts";

/** The death-watch program. */
export const program: DsmProgram = {
  name: "death_watch",
  defaults: { rounds: 100000 },
  limits: { rounds: int(1, 1e9) },
  regions: (_p: Readonly<Params>, shape) => [
    { name: "v", size: shape.nodes * shape.workers * 64, blockSize: 64 },
  ],
  run(ctx: DsmContext): void {
    const v = ctx.region("v");
    const rounds = ctx.params.rounds ?? 0;
    for (let r = 1; r <= rounds; r++) {
      v.storeU32(ctx.rank * 64, r);
      ctx.barrier();
      for (let k = 0; k < ctx.size; k++) {
        const got = v.loadU32(k * 64);
        if (got !== r) throw new DsmError(`WRONG VALUE: rank ${k} word is ${got} in round ${r}`);
      }
      ctx.barrier();
    }
  },
};
