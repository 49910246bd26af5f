// The outside oracle for simulated runs. It sees every replica's state changes and every applied
// entry, and records violations rather than throwing, so a failing seed reports all it broke.

import { sha256 } from '@noble/hashes/sha2.js';
import { bytesToHex } from '@noble/hashes/utils.js';
import type { Entry, NodeId, RaftNode } from '../consensus/index.ts';

interface CommittedEntry { readonly term: number; readonly type: string; readonly hash: string; readonly by: NodeId }

function entryHash(e: Entry): string { return bytesToHex(sha256(e.data)).slice(0, 32); }

export class Checker {
  readonly violations: string[] = [];
  /** term -> the one node that led it. */
  readonly leaders = new Map<number, NodeId>();
  /** index -> the entry every replica applied there. */
  readonly committed = new Map<number, CommittedEntry>();
  private readonly lastApplied = new Map<NodeId, number>();
  maxCommitted = 0;
  /** index -> [term of the leader that committed it, the entry's term], as leaders advance commit. */
  private readonly commitRecord: [number, number][] = [];
  /** Highest index any replica has seen committed. */
  leaderCommitted = 0;

  private fail(msg: string): void {
    if (this.violations.length < 100) this.violations.push(msg);
  }

  /** Called after every event that touched `node`. */
  observe(node: RaftNode, now: number): void {
    const s = node.softState();
    // Record what became committed, and in which term. A leader's term is exact; a follower's is an
    // upper bound (it learned the commit from a leader of its term or older), which only makes the
    // completeness check below skip a few leaders, never accuse one wrongly. (A leader removed from
    // the config steps down in the same step it commits, so followers must be watched too.)
    if (node.commitIndex > this.leaderCommitted) {
      const first = node.status().firstIndex;
      for (let i = this.leaderCommitted + 1; i <= node.commitIndex; i++) {
        const t = node.termAt(i);
        if (t !== undefined) this.commitRecord[i] = [s.term, t];
        else if (s.role === 'leader' && i >= first) this.fail(`t=${now}: leader ${node.id} committed ${i} it does not hold`);
      }
      this.leaderCommitted = node.commitIndex;
    }
    if (s.role === 'leader') {
      const prev = this.leaders.get(s.term);
      if (prev === undefined) {
        this.leaders.set(s.term, node.id);
        this.checkLeaderCompleteness(node, now);
      } else if (prev !== node.id) {
        this.fail(`t=${now}: two leaders in term ${s.term}: ${prev} and ${node.id}`);
      }
    }
    if (node.stats.safetyAlarms > 0) this.fail(`t=${now}: ${node.id} saw a leader overwrite a committed entry`);
  }

  /**
   * Leader Completeness (Raft §5.4): a leader of term L holds every entry committed in a term below
   * L. (A leader elected in an older term, say by a candidate that was paused with its votes in
   * flight, may legitimately lack entries committed later, in higher terms.)
   */
  private checkLeaderCompleteness(node: RaftNode, now: number): void {
    const L = node.currentTerm;
    const first = node.status().firstIndex;
    for (let i = this.leaderCommitted; i >= first; i--) {
      const rec = this.commitRecord[i];
      if (!rec || rec[0] >= L) continue;
      const t = node.termAt(i);
      if (t === undefined) {
        this.fail(`t=${now}: leader ${node.id} of term ${L} lacks entry ${i} committed in term ${rec[0]}`);
        return;
      }
      if (t !== rec[1]) {
        this.fail(`t=${now}: leader ${node.id} holds term ${t} at index ${i}, committed in term ${rec[0]} with term ${rec[1]}`);
        return;
      }
      return; // Log Matching: holding the highest such entry implies holding all below it
    }
  }

  /** A replica restored its state machine from a snapshot at `index`. */
  onRestore(id: NodeId, index: number): void { this.lastApplied.set(id, index); }

  /** A replica applied one committed entry. */
  onApply(id: NodeId, e: Entry, now: number): void {
    const last = this.lastApplied.get(id) ?? 0;
    if (e.index !== last + 1) this.fail(`t=${now}: ${id} applied index ${e.index} after ${last}`);
    this.lastApplied.set(id, e.index);
    const h = { term: e.term, type: e.type, hash: entryHash(e), by: id };
    const c = this.committed.get(e.index);
    if (!c) {
      this.committed.set(e.index, h);
      if (e.index > this.maxCommitted) this.maxCommitted = e.index;
    } else if (c.term !== h.term || c.type !== h.type || c.hash !== h.hash) {
      this.fail(`t=${now}: ${id} applied term ${h.term} at index ${e.index}, ${c.by} applied term ${c.term}`);
    }
  }

  /** Once quiet, every running replica must hold the same applied index and state digest. */
  checkConverged(states: ReadonlyMap<NodeId, { applied: number; digest: string }>, now: number): void {
    const vals = [...states.entries()];
    if (vals.length === 0) return;
    const [id0, s0] = vals[0]!;
    for (const [id, s] of vals.slice(1)) {
      if (s.applied !== s0.applied || s.digest !== s0.digest) {
        this.fail(`t=${now}: not converged: ${id0}@${s0.applied}/${s0.digest.slice(0, 8)} vs ${id}@${s.applied}/${s.digest.slice(0, 8)}`);
      }
    }
  }

  note(msg: string): void { this.fail(msg); }
}
