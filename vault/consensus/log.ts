// The node's in-memory view of its log: the last snapshot point, the entries after it, which of
// them the host has flushed (stableTo), what is committed and applied. The host's disk mirrors
// this through Ready; the node never reads the disk itself.

import { ConsensusUsageError } from './errors.ts';
import type { Entry, Snapshot } from './types.ts';

export class RaftLog {
  /** Last index/term covered by the snapshot (0/0 when the log starts at index 1). */
  snapIndex = 0;
  snapTerm = 0;
  /** The snapshot this node can send to a lagging peer (null before the first compaction). */
  snapshot: Snapshot | null = null;
  /** A snapshot received from the leader that the host has not flushed yet. */
  pendingSnapshot: Snapshot | null = null;
  entries: Entry[] = [];
  /** Highest index known flushed by the host. */
  stableTo = 0;
  committed = 0;
  applied = 0;

  get firstIndex(): number { return this.snapIndex + 1; }
  get lastIndex(): number { return this.snapIndex + this.entries.length; }
  get lastTerm(): number { return this.term(this.lastIndex)!; }

  /** Term of the entry at i, or undefined when compacted away or not yet present. */
  term(i: number): number | undefined {
    if (i === this.snapIndex) return this.snapTerm;
    if (i < this.snapIndex || i > this.lastIndex) return undefined;
    return this.entries[i - this.snapIndex - 1]!.term;
  }

  entry(i: number): Entry | undefined {
    if (i <= this.snapIndex || i > this.lastIndex) return undefined;
    return this.entries[i - this.snapIndex - 1];
  }

  /** Entries [lo, hi) (hi exclusive), clipped to what is present. */
  slice(lo: number, hi: number): Entry[] {
    const a = Math.max(lo, this.firstIndex) - this.snapIndex - 1;
    const b = Math.min(hi, this.lastIndex + 1) - this.snapIndex - 1;
    return b > a ? this.entries.slice(a, b) : [];
  }

  matchTerm(i: number, t: number): boolean { return this.term(i) === t; }

  isUpToDate(lastIndex: number, lastTerm: number): boolean {
    return lastTerm > this.lastTerm || (lastTerm === this.lastTerm && lastIndex >= this.lastIndex);
  }

  /** Leader-side append of new entries (indices already assigned). */
  append(ents: readonly Entry[]): void {
    if (ents.length === 0) return;
    const first = ents[0]!.index;
    if (first <= this.committed) throw new ConsensusUsageError('append would overwrite committed entries');
    this.truncateFrom(first);
    this.entries.push(...ents);
  }

  /**
   * Follower-side append: keeps the matching prefix, truncates at the first conflict (Raft §5.3).
   * Returns the first index that changed (for config recompute), or null if nothing did.
   */
  appendFollower(ents: readonly Entry[]): number | null {
    for (const e of ents) {
      const t = this.term(e.index);
      if (e.index <= this.snapIndex) continue;
      if (t === e.term) continue;
      // First conflict or first new entry: everything from here replaces our suffix.
      if (e.index <= this.committed) throw new ConsensusUsageError(`leader conflicts with committed entry ${e.index}`);
      const rest = ents.slice(ents.indexOf(e));
      this.truncateFrom(e.index);
      this.entries.push(...rest);
      return e.index;
    }
    return null;
  }

  private truncateFrom(i: number): void {
    if (i <= this.lastIndex) {
      this.entries.length = Math.max(0, i - this.snapIndex - 1);
      if (this.stableTo >= i) this.stableTo = i - 1;
    }
  }

  /** Entries the host has not flushed yet. */
  unstable(): Entry[] { return this.slice(this.stableTo + 1, this.lastIndex + 1); }

  /** Largest index <= i whose term is <= t (etcd's findConflictByTerm): a rejection hint. */
  conflictHint(i: number, t: number): number {
    let j = Math.min(i, this.lastIndex);
    while (j > this.snapIndex) {
      const tj = this.term(j)!;
      if (tj <= t) break;
      j--;
    }
    return j;
  }

  /** Replace everything with a received snapshot. */
  restore(s: Snapshot): void {
    this.snapIndex = s.meta.index;
    this.snapTerm = s.meta.term;
    this.entries = [];
    this.snapshot = s;
    this.pendingSnapshot = s;
    this.committed = s.meta.index;
    this.stableTo = s.meta.index;
  }

  /** Drop entries up to and including s.meta.index (local compaction). */
  compact(s: Snapshot): void {
    const i = s.meta.index;
    this.entries = this.entries.slice(i - this.snapIndex);
    this.snapIndex = i;
    this.snapTerm = s.meta.term;
    this.snapshot = s;
  }
}
