import { describe, expect, it } from 'vitest';
import { RateLimiter } from '../../chatd/rate-limit.ts';

describe('RateLimiter', () => {
  it('allows a burst, then refills at the sustained rate, per key', () => {
    let t = 0;
    const rl = new RateLimiter({ burst: 3, perSecond: 2 }, () => t);
    expect([rl.take('a'), rl.take('a'), rl.take('a')].every((v) => v.ok)).toBe(true);
    expect(rl.take('a')).toEqual({ ok: false, retryAfterMs: 500 });
    expect(rl.take('b').ok).toBe(true); // other keys have their own bucket
    t = 250;
    expect(rl.take('a')).toEqual({ ok: false, retryAfterMs: 250 });
    t = 500;
    expect(rl.take('a').ok).toBe(true);
    expect(rl.take('a').ok).toBe(false);
    t = 100_000; // never more than the burst, however long the pause
    expect([1, 2, 3, 4].map(() => rl.take('a').ok)).toEqual([true, true, true, false]);
  });

  it('bounds memory: idle full buckets are dropped, and the oldest keys go when all are busy', () => {
    let t = 0;
    const rl = new RateLimiter({ burst: 2, perSecond: 1 }, () => t, 100);
    for (let i = 0; i < 100; i++) rl.take(`k${i}`);
    t = 5_000;
    rl.take('new');
    expect(rl.size).toBe(1);
    for (let i = 0; i < 300; i++) rl.take(`busy${i}`);
    expect(rl.size).toBeLessThanOrEqual(100);
  });

  it('refuses nonsense limits', () => {
    expect(() => new RateLimiter({ burst: 0, perSecond: 1 })).toThrow(RangeError);
    expect(() => new RateLimiter({ burst: 1, perSecond: 0 })).toThrow(RangeError);
  });
});
