// The RaftNode on its own: the Ready contract, typed refusals, membership filtering, restart from
// persisted state. Cluster behaviour is covered in the sim-* suites.

import { describe, expect, it } from 'vitest';
import {
  CodecError, ConsensusUsageError, NotLeaderError, RaftNode, SeededRng, bootstrapStorage, emptyStorage,
  type Message, type PersistedState, type Ready,
} from '../../vault/consensus/index.ts';

const VOTERS = ['a', 'b', 'c'];

function mk(id: string, storage: PersistedState = bootstrapStorage(VOTERS), seed = 1): RaftNode {
  return new RaftNode({ id, storage, rng: new SeededRng(seed) });
}

/** Drain one Ready the way a host does and return it. */
function drain(n: RaftNode): Ready {
  const rd = n.ready();
  n.advance(rd);
  return rd;
}

/** A minimal host that records what it flushed. */
function persist(st: PersistedState, rd: Ready): PersistedState {
  let entries = [...st.entries];
  let snapshot = st.snapshot;
  if (rd.snapshot) { snapshot = rd.snapshot; entries = []; }
  if (rd.entries.length) {
    const base = snapshot?.meta.index ?? 0;
    entries = entries.slice(0, rd.entries[0]!.index - base - 1).concat(rd.entries);
  }
  return { hardState: rd.hardState ?? st.hardState, snapshot, entries };
}

describe('RaftNode', () => {
  it('a granted vote leaves in the same Ready as the hard state recording it (flush, then send)', () => {
    const n = mk('b');
    drain(n);
    n.step({ type: 'vote', from: 'a', to: 'b', term: 2, lastIndex: 1, lastTerm: 1, transfer: false });
    const rd = n.ready();
    expect(rd.hardState).toEqual({ term: 2, vote: 'a', commit: 1 });
    expect(rd.messages).toEqual([{ type: 'voteResp', from: 'b', to: 'a', term: 2, reject: false }]);
    // A second candidate in the same term is refused, even after a restart from the flushed state.
    n.advance(rd);
    const restarted = mk('b', persist(bootstrapStorage(VOTERS), rd));
    restarted.step({ type: 'vote', from: 'c', to: 'b', term: 2, lastIndex: 1, lastTerm: 1, transfer: false });
    const rd2 = restarted.ready();
    expect(rd2.messages[0]).toMatchObject({ type: 'voteResp', reject: true });
  });

  it('appended entries and their acknowledgement come out in one Ready', () => {
    const n = mk('b');
    drain(n);
    const entries = [{ index: 2, term: 2, type: 'normal' as const, data: new Uint8Array([7]) }];
    n.step({ type: 'append', from: 'a', to: 'b', term: 2, prevIndex: 1, prevTerm: 1, entries, commit: 1 });
    const rd = n.ready();
    expect(rd.entries.map((e) => e.index)).toEqual([2]);
    expect(rd.messages[0]).toMatchObject({ type: 'appendResp', index: 2, reject: false });
    expect(rd.softState).toMatchObject({ leader: 'a', role: 'follower', term: 2 });
  });

  it('enforces ready/advance pairing', () => {
    const n = mk('a');
    n.campaign();
    const rd = n.ready();
    expect(() => n.ready()).toThrow(ConsensusUsageError);
    expect(n.hasReady()).toBe(false);
    expect(() => n.advance({ ...rd })).toThrow(ConsensusUsageError);
    n.advance(rd);
    expect(() => n.advance(rd)).toThrow(ConsensusUsageError);
  });

  it('refuses proposals, reads and transfers on a follower with NotLeader and a leader hint', () => {
    const n = mk('b');
    n.step({ type: 'heartbeat', from: 'a', to: 'b', term: 2, commit: 1, readSeq: 0 });
    const r = n.propose(new Uint8Array([1]));
    expect(r.ok).toBe(false);
    if (!r.ok) {
      expect(r.error).toBeInstanceOf(NotLeaderError);
      expect((r.error as NotLeaderError).leaderHint).toBe('a');
      expect(r.error.code).toBe('NOT_LEADER');
    }
    expect(n.readIndex(new Uint8Array()).ok).toBe(false);
    expect(n.transferLeadership('c').ok).toBe(false);
    // Forwarding goes to the known leader as a typed message.
    expect(n.forward([new Uint8Array([5])])).toEqual({ ok: true, to: 'a' });
    const rd = n.ready();
    expect(rd.messages.find((m) => m.type === 'propose')).toMatchObject({ to: 'a', term: 2 });
    expect(mk('c').forward([new Uint8Array([5])]).ok).toBe(false);
  });

  it('ignores messages from non-members and does not let them move its term', () => {
    const n = mk('b');
    drain(n);
    const before = n.hardState();
    n.step({ type: 'vote', from: 'mallory', to: 'b', term: 50, lastIndex: 99, lastTerm: 49, transfer: true });
    n.step({ type: 'preVote', from: 'mallory', to: 'b', term: 50, lastIndex: 99, lastTerm: 49 });
    n.step({ type: 'appendResp', from: 'mallory', to: 'b', term: 50, index: 1, reject: false, hint: 0 });
    n.step({ type: 'timeoutNow', from: 'mallory', to: 'b', term: 50 });
    n.step({ type: 'vote', from: 'a', to: 'someone-else', term: 50, lastIndex: 99, lastTerm: 49, transfer: true });
    expect(n.hardState()).toEqual(before);
    expect(n.stats.droppedNonMember).toBe(4);
    expect(n.stats.droppedWrongAddressee).toBe(1);
    expect(n.hasReady()).toBe(false);
  });

  it('a joining replica (empty disk) accepts a leader it does not know yet, and never campaigns', () => {
    const n = mk('d', emptyStorage());
    for (let i = 0; i < 100; i++) n.tick();
    expect(n.softState().role).toBe('follower');
    n.step({ type: 'append', from: 'a', to: 'd', term: 3, prevIndex: 5, prevTerm: 3, entries: [], commit: 5 });
    const rd = n.ready();
    expect(rd.messages[0]).toMatchObject({ type: 'appendResp', reject: true, hint: 0 });
    expect(n.leader).toBe('a');
  });

  it('a single voter commits its own proposals and answers reads at once', () => {
    const n = mk('a', bootstrapStorage(['a']));
    n.campaign();
    expect(n.isLeader).toBe(true);
    const p = n.propose(new Uint8Array([42]));
    expect(p).toEqual({ ok: true, index: 3, term: 2 });
    expect(n.readIndex(new Uint8Array([9])).ok).toBe(true);
    const rd = drain(n);
    expect(rd.committed.map((e) => [e.index, e.type])).toEqual([[1, 'config'], [2, 'noop'], [3, 'normal']]);
    expect(rd.readStates).toEqual([{ index: 3, ctx: new Uint8Array([9]) }]);
    expect(rd.entries.map((e) => e.index)).toEqual([2, 3]);
    // Compaction: only up to what was applied.
    expect(() => n.compact(4, new Uint8Array())).toThrow(ConsensusUsageError);
    const snap = n.compact(3, new Uint8Array([1, 2]));
    expect(snap.meta).toEqual({ index: 3, term: 2, conf: { voters: ['a'], learners: [] } });
    expect(n.status().firstIndex).toBe(4);
  });

  it('election timeouts come from the injected generator only', () => {
    const firstCampaign = (seed: number): number => {
      const n = mk('a', bootstrapStorage(VOTERS), seed);
      for (let t = 1; t < 100; t++) { n.tick(); if (n.softState().role !== 'follower') return t; }
      return -1;
    };
    const runs = [1, 2, 3, 4, 5, 6, 7, 8].map(firstCampaign);
    expect(runs.map((t, i) => firstCampaign(i + 1) === t).every(Boolean)).toBe(true);
    expect(runs.every((t) => t >= 10 && t < 20)).toBe(true);
    expect(new Set(runs).size).toBeGreaterThan(1);
  });

  it('rejects a corrupt persisted state with a CodecError', () => {
    const good = bootstrapStorage(VOTERS);
    const gap = { ...good, entries: [...good.entries, { index: 3, term: 1, type: 'normal' as const, data: new Uint8Array() }] };
    expect(() => mk('a', gap)).toThrow(CodecError);
    expect(() => mk('a', { ...good, hardState: { term: 1, vote: null, commit: 9 } })).toThrow(CodecError);
    expect(() => mk('a', { ...good, hardState: { term: 0, vote: null, commit: 1 } })).toThrow(CodecError);
  });

  it('a stale leader learns the newer term from a follower and steps down', () => {
    const n = mk('a');
    n.campaign();
    const pre = n.ready();
    n.advance(pre);
    for (const m of pre.messages) expect(m.type).toBe('preVote');
    const grant = (m: Message): Message => ({ type: 'preVoteResp', from: m.to, to: 'a', term: m.term, reject: false });
    n.step(grant(pre.messages[0]!));
    const votes = drain(n).messages;
    n.step({ type: 'voteResp', from: votes[0]!.to, to: 'a', term: votes[0]!.term, reject: false });
    expect(n.isLeader).toBe(true);
    n.step({ type: 'appendResp', from: 'b', to: 'a', term: n.currentTerm + 3, index: 0, reject: true, hint: 0 });
    expect(n.isLeader).toBe(false);
    expect(n.currentTerm).toBe(votes[0]!.term + 3);
  });
});
