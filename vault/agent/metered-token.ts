// A Token that times and counts every call it passes to the real one (latency buckets and failures
// per operation), for /metrics. The host's clock is fine here: the numbers only ever leave as
// metrics, never into the firmware's decisions. Labels and data are never recorded.
import type { HmacAlg, Token, TokenDescription } from '../../hsm-adapter/token.ts';
import { emptyBuckets, observeInto, type ReplicaMetrics } from '../../protocol/metrics-wire.ts';

export class MeteredToken implements Token {
  private readonly stats: ReplicaMetrics['token'] = {};

  constructor(private readonly inner: Token) {}

  get label(): string { return this.inner.label; }

  /** Calls so far, per operation (a copy). */
  report(): ReplicaMetrics['token'] {
    return structuredClone(this.stats);
  }

  private timed<T>(op: string, f: () => T): T {
    const s = (this.stats[op] ??= { seconds: emptyBuckets(), errors: 0 });
    const t0 = performance.now();
    try {
      return f();
    } catch (e) {
      s.errors++;
      throw e;
    } finally {
      observeInto(s.seconds, (performance.now() - t0) / 1000);
    }
  }

  describe(): TokenDescription { return this.inner.describe(); }
  seal(keyLabel: string, plaintext: Uint8Array, aad: Uint8Array): Uint8Array { return this.timed('seal', () => this.inner.seal(keyLabel, plaintext, aad)); }
  open(keyLabel: string, sealed: Uint8Array, aad: Uint8Array): Uint8Array { return this.timed('open', () => this.inner.open(keyLabel, sealed, aad)); }
  hmac(keyLabel: string, alg: HmacAlg, data: Uint8Array): Uint8Array { return this.timed('hmac', () => this.inner.hmac(keyLabel, alg, data)); }
  sign(keyLabel: string, data: Uint8Array): Uint8Array { return this.timed('sign', () => this.inner.sign(keyLabel, data)); }
  verify(publicKey: Uint8Array, data: Uint8Array, signature: Uint8Array): boolean { return this.timed('verify', () => this.inner.verify(publicKey, data, signature)); }
  publicKey(keyLabel: string): Uint8Array { return this.timed('publicKey', () => this.inner.publicKey(keyLabel)); }
  readData(label: string): Uint8Array { return this.timed('readData', () => this.inner.readData(label)); }
  writeData(label: string, value: Uint8Array): void { this.timed('writeData', () => this.inner.writeData(label, value)); }
  random(length: number): Uint8Array { return this.timed('random', () => this.inner.random(length)); }
  close(): void { this.inner.close(); }
}
