/**
 * Randomized coherence stress with a memory-model checker. In each round every
 * word of a few small blocks gets at most one writer (chosen from the seed), so
 * the program is data-race-free while many nodes write different words of the
 * same blocks. Workers mix stores of several widths, bulk writes, loads,
 * fences and lock-protected counter increments, and check that:
 *
 * - a worker reads its own latest store (even while the store is pending),
 * - a word not written in the round holds the value of the last round that
 *   wrote it (sequential consistency for data-race-free programs),
 * - a lock-protected counter never goes backwards for a worker and ends equal
 *   to the number of increments.
 *
 * Violations are counted in shared memory and returned by `result`.
 *
 * @module
 */

import { type DsmContext, type DsmProgram, intParam as int, type Params } from "../program.ts";
import { hash32, prng } from "./util.ts";

const FINAL = 0xfff;
const REPORT_STRIDE = 64;

function writerOf(seed: number, round: number, word: number, size: number): number {
  return hash32(seed, round, word, 1) % (size + 1); // == size: nobody writes it
}

function expected(seed: number, round: number, word: number, size: number): number {
  for (let r = round; r >= 0; r--) {
    if (writerOf(seed, r, word, size) !== size) return hash32(seed, r, word, FINAL);
  }
  return 0;
}

/** The stress program. */
export const program: DsmProgram = {
  name: "stress",
  defaults: { seed: 1, rounds: 12, words: 96, ops: 300, locks: 3, blockSize: 64 },
  limits: {
    seed: int(0, 2 ** 32 - 1),
    rounds: int(1, 1e6),
    words: int(1, 1 << 24),
    ops: int(0, 1e7),
    locks: int(1, 1 << 16),
    blockSize: int(64, 4096),
  },
  regions: (p: Readonly<Params>, shape) => [
    { name: "data", size: (p.words ?? 0) * 4, blockSize: p.blockSize ?? 64 },
    { name: "counters", size: Math.max(64, (p.locks ?? 1) * 4), blockSize: 64 },
    { name: "report", size: shape.nodes * shape.workers * REPORT_STRIDE, blockSize: 64 },
  ],
  run(ctx: DsmContext): void {
    const { seed = 0, rounds = 0, words = 0, ops = 0, locks = 1 } = ctx.params;
    const data = ctx.region("data");
    const counters = ctx.region("counters");
    const report = ctx.region("report");
    const rand = prng(hash32(seed, ctx.rank, 0x5eed));
    let violations = 0;
    let firstViolation = 0;
    const increments = new Uint32Array(locks);
    const lastSeen = new Uint32Array(locks);
    const mine = new Map<number, number>();
    const bad = (code: number): void => {
      violations++;
      if (firstViolation === 0) firstViolation = code;
    };
    const bytes = new Uint8Array(4);
    for (let r = 0; r < rounds; r++) {
      const writes: number[] = [];
      for (let w = 0; w < words; w++) {
        if (writerOf(seed, r, w, ctx.size) === ctx.rank) writes.push(w);
      }
      mine.clear();
      for (let i = 0; i < ops; i++) {
        const op = rand() % 100;
        if (op < 40 && writes.length > 0) {
          const w = writes[rand() % writes.length] ?? 0;
          const v = rand();
          const how = rand() % 3;
          if (how === 0) data.storeU32(w * 4, v);
          else if (how === 1) {
            data.storeU16(w * 4, v & 0xffff);
            data.storeU16(w * 4 + 2, v >>> 16);
          } else {
            new DataView(bytes.buffer).setUint32(0, v, true);
            data.write(w * 4, bytes);
          }
          mine.set(w, v);
        } else if (op < 75) {
          const w = rand() % words;
          const writer = writerOf(seed, r, w, ctx.size);
          let want: number;
          if (writer === ctx.rank) want = mine.get(w) ?? expected(seed, r - 1, w, ctx.size);
          else if (writer === ctx.size) want = expected(seed, r - 1, w, ctx.size);
          else continue; // written by another worker this round: reading it would be a race
          const got = rand() % 2 === 0
            ? data.loadU32(w * 4)
            : data.loadU16(w * 4) + data.loadU16(w * 4 + 2) * 65536;
          if (got !== want) bad(1 + w);
        } else if (op < 90) {
          const l = rand() % locks;
          ctx.lock(l);
          const c = counters.loadU32(l * 4);
          if (c < (lastSeen[l] ?? 0)) bad(100000 + l);
          counters.storeU32(l * 4, c + 1);
          if (counters.loadU32(l * 4) !== c + 1) bad(200000 + l);
          lastSeen[l] = c + 1;
          increments[l] = (increments[l] ?? 0) + 1;
          ctx.unlock(l);
        } else {
          ctx.fence();
        }
      }
      for (const w of writes) data.storeU32(w * 4, hash32(seed, r, w, FINAL));
      ctx.barrier();
    }
    const base = ctx.rank * REPORT_STRIDE;
    report.storeU32(base, violations);
    report.storeU32(base + 4, firstViolation);
    for (let l = 0; l < Math.min(locks, 12); l++) {
      report.storeU32(base + 8 + l * 4, increments[l] ?? 0);
    }
  },
  result(ctx: DsmContext): Record<string, number> {
    const { seed = 0, rounds = 0, words = 0, locks = 1 } = ctx.params;
    const data = ctx.region("data");
    const counters = ctx.region("counters");
    const report = ctx.region("report");
    let violations = 0;
    let firstViolation = 0;
    let finalMismatches = 0;
    for (let w = 0; w < words; w++) {
      if (data.loadU32(w * 4) !== expected(seed, rounds - 1, w, ctx.size)) finalMismatches++;
    }
    let counterMismatches = 0;
    let increments = 0;
    for (let l = 0; l < Math.min(locks, 12); l++) {
      let sum = 0;
      for (let k = 0; k < ctx.size; k++) sum += report.loadU32(k * REPORT_STRIDE + 8 + l * 4);
      increments += sum;
      if (counters.loadU32(l * 4) !== sum) counterMismatches++;
    }
    for (let k = 0; k < ctx.size; k++) {
      violations += report.loadU32(k * REPORT_STRIDE);
      firstViolation ||= report.loadU32(k * REPORT_STRIDE + 4);
    }
    return { violations, firstViolation, finalMismatches, counterMismatches, increments };
  },
};
