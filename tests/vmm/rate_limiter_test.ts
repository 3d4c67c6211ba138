import assert from "node:assert/strict";
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
