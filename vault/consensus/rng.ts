// The one source of randomness the consensus sees (election timeout jitter). Injected so a seed
// replays a run; the host may back it with crypto randomness, the simulator with a seed.

export interface Rng {
  /** Uniform integer in [0, n). */
  int(n: number): number;
}

/** xoshiro128** seeded through splitmix32: small, fast, and identical on every platform. */
export class SeededRng implements Rng {
  private s0: number; private s1: number; private s2: number; private s3: number;
  constructor(seed: number) {
    let x = seed >>> 0;
    const next = (): number => {
      x = (x + 0x9e3779b9) >>> 0;
      let z = x;
      z = Math.imul(z ^ (z >>> 16), 0x85ebca6b) >>> 0;
      z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35) >>> 0;
      return (z ^ (z >>> 16)) >>> 0;
    };
    this.s0 = next(); this.s1 = next(); this.s2 = next(); this.s3 = next();
  }
  /** Uniform 32-bit unsigned integer. */
  u32(): number {
    const r = Math.imul(rotl(Math.imul(this.s1, 5) >>> 0, 7), 9) >>> 0;
    const t = (this.s1 << 9) >>> 0;
    this.s2 ^= this.s0; this.s3 ^= this.s1; this.s1 ^= this.s2; this.s0 ^= this.s3;
    this.s2 = (this.s2 ^ t) >>> 0;
    this.s3 = rotl(this.s3 >>> 0, 11);
    this.s0 >>>= 0; this.s1 >>>= 0; this.s2 >>>= 0;
    return r;
  }
  int(n: number): number {
    if (!(n >= 1)) return 0;
    return Math.floor((this.u32() / 4294967296) * n);
  }
  /** Uniform float in [0, 1). */
  float(): number { return this.u32() / 4294967296; }
  /** A child stream, so adding draws in one component doesn't shift another's sequence. */
  fork(): SeededRng { return new SeededRng(this.u32() ^ 0x5bd1e995); }
}

function rotl(x: number, k: number): number {
  return ((x << k) | (x >>> (32 - k))) >>> 0;
}
