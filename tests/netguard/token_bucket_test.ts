import assert from "node:assert/strict";
import { TokenBucket, TokenBucketError } from "../../netguard/token_bucket.ts";

Deno.test("a packets-per-second bucket passes one second's burst, then the refill rate", () => {
  const b = new TokenBucket(100);
  let passed = 0;
  for (let i = 0; i < 150; i++) if (b.take(1000)) passed++;
  assert.equal(passed, 100);
  assert.equal(b.take(1000), false);
  assert.equal(b.take(1010), true, "10 ms refill one token at 100 pps");
  assert.equal(b.take(1010), false);
  assert.equal(b.ratePps, 100);
});

Deno.test("a Firecracker bucket spends its one-time burst first and refills size per refill time", () => {
  const b = new TokenBucket({ size: 1000, oneTimeBurst: 500, refillTimeMs: 100 });
  assert.equal(b.reduce(1400, 0), "ok", "500 from the burst, 900 from the bucket");
  assert.equal(b.available(0), 100);
  assert.equal(b.reduce(200, 0), "empty");
  assert.equal(b.available(0), 100, "a refused request takes nothing");
  assert.equal(b.msUntil(200, 0), 10);
  assert.equal(b.reduce(200, 10), "ok");
  assert.equal(b.available(1000), 1000, "never more than full");
});

Deno.test("a request larger than the bucket passes only from a full bucket and leaves it in debt", () => {
  const b = new TokenBucket({ size: 100, refillTimeMs: 1000 });
  assert.equal(b.reduce(50, 0), "ok");
  assert.equal(b.reduce(300, 0), "empty", "not full: refused");
  assert.equal(b.reduce(300, 500), "overdraft");
  assert.equal(b.available(500), -200);
  assert.equal(b.msUntil(1, 500), 2010);
  assert.equal(b.reduce(1, 2000), "empty");
  assert.equal(b.reduce(1, 2510), "ok");
});

Deno.test("a bucket given back tokens is never fuller than its size; bad sizes are refused", () => {
  const b = new TokenBucket({ size: 10, refillTimeMs: 1 });
  b.reduce(4, 0);
  b.replenish(100);
  assert.equal(b.available(0), 10);
  for (const bad of [0, -1, NaN, Infinity]) {
    assert.throws(() => new TokenBucket({ size: bad, refillTimeMs: 1 }), TokenBucketError);
  }
  assert.throws(() => new TokenBucket({ size: 1, refillTimeMs: 0 }), TokenBucketError);
});
