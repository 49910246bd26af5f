// A tiny replicated application for the simulator: counters and registers keyed by string.
// Commands carry the client operation id so the cluster can match commits to invocations.

import { Packr } from 'msgpackr';
import { sha256 } from '@noble/hashes/sha2.js';
import { bytesToHex } from '@noble/hashes/utils.js';

const packr = new Packr({ useRecords: false, mapsAsObjects: false, moreTypes: false });

export type KvCommand =
  | { readonly op: 'incr'; readonly opId: number; readonly key: string }
  | { readonly op: 'put'; readonly opId: number; readonly key: string; readonly value: string };

export function encodeCommand(c: KvCommand): Uint8Array {
  const b = packr.pack(c.op === 'incr' ? [c.opId, 0, c.key] : [c.opId, 1, c.key, c.value]);
  return new Uint8Array(b);
}

export function decodeCommand(b: Uint8Array): KvCommand {
  const a = packr.unpack(b) as unknown[];
  if (a[1] === 0) return { op: 'incr', opId: a[0] as number, key: a[2] as string };
  return { op: 'put', opId: a[0] as number, key: a[2] as string, value: a[3] as string };
}

export class KvApp {
  private readonly counters = new Map<string, number>();
  private readonly registers = new Map<string, string>();
  /** Operation ids already applied, so the same command committed twice is applied once. */
  private readonly seen = new Set<number>();
  applied = 0;

  /** Apply one committed command; returns the counter value after an incr, or 0. */
  apply(index: number, data: Uint8Array): number {
    this.applied = index;
    const c = decodeCommand(data);
    if (this.seen.has(c.opId)) return c.op === 'incr' ? this.counters.get(c.key) ?? 0 : 0;
    this.seen.add(c.opId);
    if (c.op === 'incr') {
      const v = (this.counters.get(c.key) ?? 0) + 1;
      this.counters.set(c.key, v);
      return v;
    }
    this.registers.set(c.key, c.value);
    return 0;
  }

  /** Applied index without a command (noop or config entries). */
  skip(index: number): void { this.applied = index; }

  counter(key: string): number { return this.counters.get(key) ?? 0; }
  register(key: string): string | undefined { return this.registers.get(key); }

  private image(): unknown[] {
    const sortKv = <V>(m: Map<string, V>) => [...m.entries()].sort((a, b) => (a[0] < b[0] ? -1 : 1));
    return [sortKv(this.counters), sortKv(this.registers), [...this.seen].sort((a, b) => a - b)];
  }

  snapshot(): Uint8Array {
    return new Uint8Array(packr.pack([this.applied, ...this.image()]));
  }

  static restore(b: Uint8Array): KvApp {
    const app = new KvApp();
    const [applied, counters, registers, seen] = packr.unpack(b) as [number, [string, number][], [string, string][], number[]];
    app.applied = applied;
    for (const [k, v] of counters) app.counters.set(k, v);
    for (const [k, v] of registers) app.registers.set(k, v);
    for (const s of seen) app.seen.add(s);
    return app;
  }

  /** A digest of the state (not of how it got there): equal states, equal digests. */
  digest(): string {
    const b = packr.pack(this.image());
    return bytesToHex(sha256(new Uint8Array(b.buffer, b.byteOffset, b.byteLength)));
  }
}
