import assert from "node:assert/strict";
import {
  CusumDetector,
  Metric,
  prng,
  SlidingCounters,
  ThresholdDetector,
  TopK,
  Transition,
} from "../../netguard/mod.ts";

Deno.test("sliding counters give the rate over the window and forget what fell out of it", () => {
  const c = new SlidingCounters(100, 10);
  c.rotateTo(0);
  for (let b = 0; b < 10; b++) {
    c.rotateTo(b);
    c.add(Metric.packets, 5);
  }
  assert.equal(c.sum(Metric.packets), 50);
  assert.equal(c.rate(Metric.packets), 500);
  c.rotateTo(14);
  assert.equal(c.sum(Metric.packets), 25, "buckets 0..4 left the window");
  c.rotateTo(1000);
  assert.equal(c.sum(Metric.packets), 0);
});

Deno.test("top-k finds the heavy sources of a flood from many random addresses in bounded memory (seeded)", () => {
  const seed = 1234;
  const rnd = prng(seed);
  const top = new TopK(16, 4);
  const label = new Uint8Array(4);
  const heavy = [0x0a000001, 0x0a000002, 0x0a000003];
  for (let i = 0; i < 100_000; i++) {
    const r = rnd();
    // 30% from three heavy sources, the rest from ~4 billion random ones.
    const key = r < 0.3 ? (heavy[Math.floor(r * 10)] ?? 0) : Math.floor(rnd() * 0xffffffff);
    new DataView(label.buffer).setUint32(0, key >>> 0, false);
    top.offer(key, 1, label, 0, 4);
  }
  assert.equal(top.size, 16, "never more than capacity keys");
  const best = top.top(3).map((e) => e.key).sort();
  assert.deepEqual(best, [...heavy].sort(), `seed ${seed}`);
  const first = top.top(1)[0];
  assert.ok(
    first !== undefined && first.count - first.error <= 10_500 && first.count >= 9_500,
    `seed ${seed}`,
  );
});

Deno.test("a threshold must be exceeded for N ms before it raises, and clears only after staying low", () => {
  const d = new ThresholdDetector(30, 0.5, 100);
  const step = (t: number, v: number) => d.update(t, v, v >= 1000, v < 500);
  assert.equal(step(0, 2000), Transition.none);
  assert.equal(step(10, 2000), Transition.none);
  assert.equal(step(20, 100), Transition.none, "a dip resets the persistence timer");
  assert.equal(step(30, 2000), Transition.none);
  assert.equal(step(50, 2000), Transition.none);
  assert.equal(step(60, 2000), Transition.raised);
  // Between the clear level and the threshold: stays raised (hysteresis).
  for (let t = 70; t < 400; t += 10) assert.equal(step(t, 700), Transition.none);
  assert.equal(d.active, true);
  assert.equal(step(400, 100), Transition.none);
  assert.equal(
    step(450, 800),
    Transition.none,
    "going back above the clear level restarts the clear timer",
  );
  assert.equal(step(460, 100), Transition.none);
  assert.equal(step(550, 100), Transition.none);
  assert.equal(step(560, 100), Transition.cleared);
  assert.equal(d.clearedAt, 560);
});

Deno.test("a rate oscillating around the threshold does not make the detector flap", () => {
  const d = new ThresholdDetector(30, 0.5, 200);
  let transitions = 0;
  for (let t = 0; t < 5000; t += 10) {
    const v = (t / 10) % 2 === 0 ? 1100 : 900;
    if (d.update(t, v, v >= 1000, v < 500) !== Transition.none) transitions++;
  }
  assert.equal(transitions, 0, "alternating samples never stay over for 30 ms");
  const e = new ThresholdDetector(0, 0.5, 200);
  transitions = 0;
  for (let t = 0; t < 5000; t += 10) {
    const v = (t / 10) % 2 === 0 ? 1100 : 900;
    if (e.update(t, v, v >= 1000, v < 500) !== Transition.none) transitions++;
  }
  assert.equal(transitions, 1, "raised once, then held by hysteresis");
});

Deno.test("CUSUM learns a noisy baseline, stays quiet on it, and raises on a step (seeded)", () => {
  const seed = 99;
  const rnd = prng(seed);
  const d = new CusumDetector(0.02, 3, 30, 1000, 1000, 200);
  let t = 0;
  for (; t < 20_000; t += 10) {
    const v = 3000 + (rnd() - 0.5) * 600;
    assert.equal(d.update(t, v), Transition.none, `false alarm at ${t} ms, seed ${seed}`);
  }
  let raisedAt = -1;
  for (; t < 21_000; t += 10) {
    if (d.update(t, 9000 + (rnd() - 0.5) * 600) === Transition.raised) {
      raisedAt = t;
      break;
    }
  }
  assert.ok(raisedAt >= 20_000 && raisedAt <= 20_100, `raised at ${raisedAt}, seed ${seed}`);
  let clearedAt = -1;
  for (t = raisedAt + 10; t < raisedAt + 5000; t += 10) {
    if (d.update(t, t < raisedAt + 1000 ? 9000 : 3000) === Transition.cleared) {
      clearedAt = t;
      break;
    }
  }
  assert.ok(
    clearedAt >= raisedAt + 1200 && clearedAt <= raisedAt + 1300,
    `cleared at ${clearedAt}`,
  );
});

Deno.test("CUSUM does not raise below its absolute floor however unusual the rate", () => {
  const d = new CusumDetector(0.02, 3, 30, 1000, 100, 200);
  for (let t = 0; t < 2000; t += 10) d.update(t, 0);
  for (let t = 2000; t < 4000; t += 10) assert.equal(d.update(t, 900), Transition.none);
});
