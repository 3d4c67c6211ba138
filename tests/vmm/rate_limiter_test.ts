import assert from "node:assert/strict";
import { TokenBucket, TokenBucketError } from "../../netguard/token_bucket.ts";
import { RateLimiter } from "../../vmm/devices/virtio/rate_limiter.ts";

Deno.test("a rate limiter without buckets passes everything", () => {
  const rl = new RateLimiter(undefined);
  assert.equal(rl.active, false);
  for (let i = 0; i < 1000; i++) assert.ok(rl.consume(1, 65536, 0));
  const zero = new RateLimiter({ ops: { size: 0, refillTimeMs: 1000 } });
  assert.equal(zero.active, false, "size 0 is no limit, as in Firecracker");
});

Deno.test("the ops bucket caps frames and the bandwidth bucket caps bytes, whichever is tighter", () => {
  const rl = new RateLimiter({
    ops: { size: 10, refillTimeMs: 1000 },
    bandwidth: { size: 10_000, refillTimeMs: 1000 },
  });
  let small = 0;
  while (rl.consume(1, 64, 0)) small++;
  assert.equal(small, 10, "ops bound for small frames");
  const rl2 = new RateLimiter({
    ops: { size: 10, refillTimeMs: 1000 },
    bandwidth: { size: 10_000, refillTimeMs: 1000 },
  });
  let big = 0;
  while (rl2.consume(1, 1500, 0)) big++;
  assert.equal(big, 6, "bandwidth bound for 1500-byte frames");
  assert.equal(rl2.ops?.available(0), 4, "the refused frame's op was given back");
  assert.equal(rl2.throttled, 1);
  assert.equal(rl2.msUntil(1, 1500, 0), 50, "500 more bytes at 10 bytes/ms");
  assert.equal(rl2.consume(1, 1500, 49), false);
  assert.ok(rl2.consume(1, 1500, 50));
});

Deno.test("over a simulated second a limited queue moves size per refill time", () => {
  const rl = new RateLimiter({ bandwidth: { size: 125_000, refillTimeMs: 100 } }); // 10 Mbit/s
  let bytes = 0;
  for (let t = 0; t <= 1000; t += 0.5) {
    while (rl.consume(1, 1514, t)) bytes += 1514;
  }
  // One full bucket at start plus ten refills.
  assert.ok(bytes <= 125_000 * 11 + 1514 && bytes >= 125_000 * 11 - 2 * 1514, `${bytes}`);
});

Deno.test("an update keeps the buckets it leaves out, removes 0-sized ones and carries the budget into new limits", () => {
  const rl = new RateLimiter({
    ops: { size: 10, refillTimeMs: 1000 },
    bandwidth: { size: 10_000, refillTimeMs: 1000 },
  });
  for (let i = 0; i < 6; i++) assert.ok(rl.consume(1, 1000, 0));
  const bandwidth = rl.bandwidth;
  // New ops limits: the 4 ops left are kept (not a fresh full bucket of 100).
  rl.update({ ops: { size: 100, refillTimeMs: 1000 } }, 0);
  assert.equal(rl.bandwidth, bandwidth, "the bandwidth bucket left out is kept as it was");
  assert.equal(rl.ops?.size, 100);
  assert.equal(rl.ops?.available(0), 4, "budget carried over");
  // A smaller bucket caps the budget.
  rl.update({ ops: { size: 2, refillTimeMs: 1000 } }, 0);
  assert.equal(rl.ops?.available(0), 2);
  // 0-sized removes the limit; the other bucket still limits.
  rl.update({ ops: { size: 0, refillTimeMs: 0 } }, 0);
  assert.equal(rl.ops, null);
  assert.equal(rl.active, true);
  assert.equal(rl.bandwidth?.available(0), 4000);
  rl.update({ bandwidth: { size: 5, refillTimeMs: 0 } }, 0);
  assert.equal(rl.active, false, "refill time 0 removes it too");
  for (let i = 0; i < 100; i++) assert.ok(rl.consume(1, 65536, 0));
  // A bucket added to an unlimited direction starts full, one-time burst included.
  rl.update({ ops: { size: 3, oneTimeBurst: 2, refillTimeMs: 1000 } }, 0);
  let n = 0;
  while (rl.consume(1, 1, 0)) n++;
  assert.equal(n, 5);
  assert.throws(() => rl.update({ ops: { size: -1, refillTimeMs: 1000 } }, 0), TokenBucketError);
  const opsNow = (): TokenBucket | null => rl.ops; // not narrowed by the asserts above
  assert.equal(opsNow()?.size, 3, "a refused update changes nothing");
});

Deno.test("a resized bucket owes the debt of the old one and keeps at most the new one-time burst", () => {
  const b = new TokenBucket({ size: 1000, oneTimeBurst: 500, refillTimeMs: 100 });
  b.force(1800, 0); // 500 from the burst, 1300 from the bucket: 300 in debt
  assert.equal(b.available(0), -300);
  const r = b.resized({ size: 2000, oneTimeBurst: 100, refillTimeMs: 100 }, 0);
  assert.equal(r.available(0), -300, "the debt stays owed");
  assert.equal(r.burstLeft, 0, "no burst was left to keep");
  assert.equal(r.available(10), -100, "refilled at the new rate (20 per ms)");
  const fresh = new TokenBucket({ size: 1000, oneTimeBurst: 500, refillTimeMs: 100 });
  fresh.reduce(100, 0);
  assert.equal(fresh.resized({ size: 10, oneTimeBurst: 50, refillTimeMs: 100 }, 0).burstLeft, 50);
});
