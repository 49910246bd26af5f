// Token buckets keyed by account or client address. Pure apart from the injected clock, so tests can
// drive time. Idle buckets that have refilled completely carry no information and are dropped, which
// bounds memory under a flood of distinct addresses.

export interface BucketLimit {
  /** Largest burst: the bucket's size. */
  burst: number;
  /** Sustained rate: tokens added per second. */
  perSecond: number;
}

export type Verdict = { ok: true } | { ok: false; retryAfterMs: number };

interface Bucket {
  tokens: number;
  at: number;
}

export class RateLimiter {
  private readonly buckets = new Map<string, Bucket>();

  constructor(
    readonly limit: BucketLimit,
    private readonly now: () => number = () => performance.now(),
    private readonly maxKeys = 100_000,
  ) {
    if (!(limit.burst >= 1) || !(limit.perSecond > 0)) {
      throw new RangeError('a rate limit needs burst >= 1 and perSecond > 0');
    }
  }

  /** Takes one token for `key`, or says how long until one is available. */
  take(key: string): Verdict {
    const t = this.now();
    let b = this.buckets.get(key);
    if (b) {
      b.tokens = Math.min(this.limit.burst, b.tokens + ((t - b.at) / 1000) * this.limit.perSecond);
      b.at = t;
    } else {
      if (this.buckets.size >= this.maxKeys) this.sweep(t);
      b = { tokens: this.limit.burst, at: t };
      this.buckets.set(key, b);
    }
    if (b.tokens >= 1) {
      b.tokens -= 1;
      return { ok: true };
    }
    return { ok: false, retryAfterMs: Math.ceil(((1 - b.tokens) / this.limit.perSecond) * 1000) };
  }

  get size(): number {
    return this.buckets.size;
  }

  private sweep(t: number): void {
    const full = (this.limit.burst / this.limit.perSecond) * 1000;
    for (const [k, b] of this.buckets) if (t - b.at >= full) this.buckets.delete(k);
    // Still full of active keys: forget the oldest tenth rather than grow without bound (which also
    // makes the next sweep at least maxKeys/10 insertions away).
    if (this.buckets.size >= this.maxKeys) {
      const drop = this.buckets.size - Math.floor(this.maxKeys * 0.9);
      let i = 0;
      for (const k of this.buckets.keys()) {
        if (i++ >= drop) break;
        this.buckets.delete(k);
      }
    }
  }
}
