// The known hard cases of Raft, each staged in the deterministic cluster. Every test ends with the
// oracle's verdict (one leader per term, committed entries never change, same entry at each index
// everywhere, convergence) on top of its own assertions.

import { describe, expect, it } from 'vitest';
import { SimCluster } from '../../vault/sim/cluster.ts';
import { encodeCommand } from '../../vault/sim/kv.ts';
import { encodeMessage, type Message, type NodeId } from '../../vault/consensus/index.ts';

const FIVE = ['s1', 's2', 's3', 's4', 's5'];

function clean(c: SimCluster): void {
  expect(c.violations()).toEqual([]);
}

function settle(c: SimCluster): void {
  for (const id of c.ids()) c.restart(id);
  expect(c.quiesce(20_000)).toBe(true);
  c.runFor(100);
  c.checkConverged();
  const l = c.leader();
  expect(l).not.toBeNull();
  c.checkHistory(c.app(l!)!);
  clean(c);
}

/** Crash and restart: the replica keeps its disk but forgets the leader it followed (no lease). */
function bounce(c: SimCluster, ...ids: NodeId[]): void {
  for (const id of ids) { c.crash(id); c.restart(id); }
}

/** With autoTick off, campaign until `id` leads (pre-vote may need a round to learn the term). */
function elect(c: SimCluster, id: NodeId): void {
  for (let i = 0; i < 5 && !c.node(id)!.isLeader; i++) { c.campaign(id); c.runFor(60); }
  expect(c.node(id)!.isLeader).toBe(true);
}

describe('elections', () => {
  it('recovers from a split vote in a later term', () => {
    const c = new SimCluster({ seed: 11, voters: ['a', 'b', 'c', 'd'] });
    // c hears a first, d hears b first: two candidates, two votes each.
    c.setLinkDelay('a', 'c', 1, 1); c.setLinkDelay('b', 'c', 8, 8);
    c.setLinkDelay('b', 'd', 1, 1); c.setLinkDelay('a', 'd', 8, 8);
    c.campaign('a'); c.campaign('b');
    c.runFor(40);
    const t2 = c.node('a')!.currentTerm;
    expect(c.node('b')!.currentTerm).toBe(t2);
    expect(c.leader()).toBeNull();
    expect(c.checker.leaders.has(t2)).toBe(false);
    c.heal();
    const l = c.waitLeader(3_000);
    expect(c.node(l)!.currentTerm).toBeGreaterThan(t2);
    settle(c);
  });

  it('pre-vote: a partitioned replica rejoining does not bump the term or depose the leader', () => {
    const c = new SimCluster({ seed: 12, voters: FIVE });
    const l = c.waitLeader();
    const term = c.node(l)!.currentTerm;
    const f = FIVE.find((x) => x !== l)!;
    c.isolate(f);
    c.runFor(2_000); // twenty election timeouts alone
    expect(c.node(f)!.currentTerm).toBe(term);
    expect(c.node(f)!.softState().role).toBe('preCandidate');
    c.heal();
    c.runFor(500);
    expect(c.leader()).toBe(l);
    expect(c.node(l)!.currentTerm).toBe(term);
    for (const id of FIVE) expect(c.node(id)!.currentTerm).toBe(term);
    settle(c);
  });
});

describe('a leader isolated with a minority', () => {
  it('stops serving, the majority elects a new leader, and its uncommitted entries are overwritten', () => {
    const c = new SimCluster({ seed: 21, voters: FIVE });
    const old = c.waitLeader();
    for (let i = 0; i < 5; i++) c.incr('n');
    expect(c.quiesce()).toBe(true);
    const buddy = FIVE.find((x) => x !== old)!;
    c.partition([old, buddy]);
    const lost = [c.incr('n')!, c.incr('n')!, c.put('r', 'lost')!];
    const staleRead = c.read('n', old)!;
    expect(lost.every((o) => o !== null)).toBe(true);
    const oldTerm = c.node(old)!.currentTerm;
    // Check-quorum: within two election timeouts the isolated leader steps down on its own.
    expect(c.runUntil(() => !c.node(old)!.isLeader, 250)).toBe(true);
    expect(c.node(old)!.propose(new Uint8Array([1])).ok).toBe(false);
    const fresh = c.waitLeader(3_000);
    expect(fresh).not.toBe(old);
    expect(c.node(fresh)!.currentTerm).toBeGreaterThan(oldTerm);
    const won = c.incr('n')!;
    expect(c.runUntil(() => won.status === 'ok', 1_000)).toBe(true);
    expect(won.result).toBe(6);
    c.heal();
    settle(c);
    expect(lost.every((o) => o.status === 'pending')).toBe(true);
    expect(staleRead.status).toBe('pending');
    for (const id of FIVE) {
      expect(c.app(id)!.counter('n')).toBe(6);
      expect(c.app(id)!.register('r')).toBeUndefined();
    }
  });

  it('a leader cut off one-way (it can send, not hear) steps down too', () => {
    const c = new SimCluster({ seed: 22, voters: FIVE });
    const l = c.waitLeader();
    for (const id of FIVE) if (id !== l) c.blockLink(id, l);
    expect(c.runUntil(() => !c.node(l)!.isLeader, 300)).toBe(true);
    c.heal();
    settle(c);
  });
});

describe('a paused leader', () => {
  it('resumes after an election as a stale leader: it serves nothing and steps down', () => {
    const c = new SimCluster({ seed: 23, voters: FIVE });
    const old = c.waitLeader();
    for (let i = 0; i < 3; i++) c.incr('p');
    expect(c.quiesce()).toBe(true);
    const staleRead = c.read('p', old)!;
    const staleWrite = c.incr('p')!;
    c.pause(old);
    expect(c.runUntil(() => c.leader() !== old, 3_000)).toBe(true);
    const fresh = c.leader()!;
    const w = [c.incr('p')!, c.incr('p')!];
    expect(c.runUntil(() => w.every((o) => o.status === 'ok'), 1_000)).toBe(true);
    expect(c.node(old)!.isLeader).toBe(true); // it has not noticed anything yet
    c.resume(old);
    expect(c.runUntil(() => !c.node(old)!.isLeader, 200)).toBe(true);
    settle(c);
    // Its read could not be confirmed by a quorum of its old term: never answered.
    expect(staleRead.status).toBe('pending');
    expect(staleWrite.status).toBe('pending');
    expect(c.app(fresh)!.counter('p')).toBe(5);
  });
});

describe('commit rules', () => {
  it('Figure 8: an old-term entry on a majority is not committed until a current-term entry is', () => {
    const c = new SimCluster({ seed: 31, voters: FIVE, autoTick: false, maxMsgEntries: 1 });
    elect(c, 's1');
    c.runFor(100);
    const base = c.node('s1')!.lastIndex;
    expect(c.node('s1')!.commitIndex).toBe(base);
    // (a) s1 (term 2) replicates X only to s2, then crashes.
    c.partition(['s1', 's2'], ['s3', 's4', 's5']);
    const x = c.proposeAt('s1', encodeCommand({ op: 'put', opId: 999_001, key: 'fig8', value: 'X' }));
    expect(x.ok).toBe(true);
    const xTerm = c.node('s1')!.currentTerm;
    expect(c.runUntil(() => c.node('s2')!.lastIndex === base + 1, 100)).toBe(true);
    c.crash('s1');
    // (b) s5 wins term 3 with s3, s4 and appends its no-op at the same index, replicating nothing.
    bounce(c, 's3', 's4');
    c.filter = (m: Message) => !(m.from === 's5' && m.type === 'append' && m.entries.length > 0);
    elect(c, 's5');
    expect(c.node('s5')!.termAt(base + 1)).toBeGreaterThan(xTerm);
    expect(c.node('s3')!.lastIndex).toBe(base);
    c.crash('s5');
    // (c) s1 returns and leads term 4; X reaches s3, so X sits on a majority (s1, s2, s3) -- but
    // s1's own term-4 no-op must not reach anyone.
    c.restart('s1');
    c.heal();
    c.partition(['s1', 's2', 's3'], ['s4', 's5']);
    bounce(c, 's2', 's3');
    // s3 may see s1's appends but must never accept the term-4 no-op.
    c.filter = (m: Message) => !(m.type === 'append' && m.from === 's1' && m.to === 's3'
      && m.entries.some((e) => e.term > xTerm) && c.node('s3')!.termAt(m.prevIndex) === m.prevTerm);
    elect(c, 's1');
    const t4 = c.node('s1')!.currentTerm;
    for (let i = 0; i < 8; i++) { c.tick('s1'); c.runFor(20); } // heartbeats re-probe after drops
    expect(c.node('s3')!.termAt(base + 1)).toBe(xTerm);
    expect(c.node('s3')!.lastIndex).toBe(base + 1);
    expect(c.node('s1')!.status().progress!.get('s3')!.match).toBe(base + 1);
    expect(c.node('s1')!.status().progress!.get('s2')!.match).toBe(base + 2);
    for (const id of ['s1', 's2', 's3']) expect(c.node(id)!.termAt(base + 1)).toBe(xTerm);
    expect(c.node('s1')!.commitIndex).toBe(base); // §5.4.2: majority-replicated but not committed
    // (d) s1 crashes; s5 (last term 3) can win and overwrite X everywhere -- legal, as X never committed.
    c.crash('s1');
    c.filter = null;
    c.heal();
    c.restart('s5');
    bounce(c, 's2', 's3', 's4');
    elect(c, 's5');
    expect(c.node('s5')!.currentTerm).toBeGreaterThan(t4);
    c.runFor(200);
    for (const id of ['s2', 's3', 's4', 's5']) expect(c.node(id)!.termAt(base + 1)).not.toBe(xTerm);
    expect(c.checker.committed.get(base + 1)?.term).not.toBe(xTerm);
    c.restart('s1');
    for (let i = 0; i < 6; i++) { c.tick('s5'); c.runFor(30); }
    expect(c.node('s1')!.termAt(base + 1)).not.toBe(xTerm);
    expect(c.node('s1')!.commitIndex).toBeGreaterThanOrEqual(base + 1);
    for (const id of FIVE) expect(c.app(id)!.register('fig8')).toBeUndefined();
    clean(c);
  });

  it('Figure 8 continued: once the leader commits a current-term entry, the old-term entry commits with it', () => {
    const c = new SimCluster({ seed: 32, voters: FIVE, autoTick: false });
    elect(c, 's1');
    c.runFor(100);
    const base = c.node('s1')!.lastIndex;
    c.partition(['s1', 's2'], ['s3', 's4', 's5']);
    c.proposeAt('s1', encodeCommand({ op: 'put', opId: 999_002, key: 'fig8', value: 'X' }));
    expect(c.runUntil(() => c.node('s2')!.lastIndex === base + 1, 100)).toBe(true);
    c.crash('s1'); c.restart('s1');
    c.heal();
    bounce(c, 's2', 's3', 's4', 's5');
    elect(c, 's1');
    c.runFor(200);
    // The new no-op (current term) commits on a majority and carries X (older term) with it.
    expect(c.node('s1')!.commitIndex).toBeGreaterThanOrEqual(base + 2);
    for (const id of FIVE) expect(c.app(id)!.register('fig8')).toBe('X');
    clean(c);
  });
});

describe('log divergence and repair', () => {
  it('a leader that appended many entries alone has them replaced by the majority log, across terms', () => {
    const c = new SimCluster({ seed: 41, voters: ['a', 'b', 'c'], maxMsgEntries: 3, maxInflight: 2 });
    for (let round = 0; round < 3; round++) {
      const l = c.waitLeader();
      c.isolate(l);
      const doomed = Array.from({ length: 15 }, () => c.incr('d'));
      expect(doomed.every((o) => o !== null)).toBe(true);
      c.runFor(300);
      const l2 = c.waitLeader();
      expect(l2).not.toBe(l);
      for (let i = 0; i < 25; i++) { c.incr('d'); c.runFor(3); }
      c.heal();
      expect(c.quiesce()).toBe(true);
      expect(doomed.every((o) => o!.status === 'pending')).toBe(true);
    }
    settle(c);
    const a = c.node('a')!;
    for (let i = 1; i <= a.lastIndex; i++) {
      expect(c.node('b')!.termAt(i)).toBe(a.termAt(i));
      expect(c.node('c')!.termAt(i)).toBe(a.termAt(i));
    }
    expect(c.app('a')!.counter('d')).toBe(75);
  });
});

describe('snapshots', () => {
  it('a lagging replica is caught up with InstallSnapshot after the leader compacted its log', () => {
    const c = new SimCluster({ seed: 51, voters: ['a', 'b', 'c'], snapshotEvery: 10 });
    const l = c.waitLeader();
    const lag = ['a', 'b', 'c'].find((x) => x !== l)!;
    c.crash(lag);
    for (let i = 0; i < 60; i++) { c.incr('s'); c.runFor(2); }
    expect(c.quiesce()).toBe(true);
    expect(c.node(l)!.status().firstIndex).toBeGreaterThan(c.durable(lag).entries.length + 1);
    let snapshotsToLag = 0;
    c.filter = (m: Message) => { if (m.to === lag && m.type === 'snapshot') snapshotsToLag++; return true; };
    c.restart(lag);
    expect(c.quiesce()).toBe(true);
    expect(snapshotsToLag).toBeGreaterThan(0);
    expect(c.durable(lag).snapshot).not.toBeNull();
    expect(c.app(lag)!.counter('s')).toBe(60);
    settle(c);
  });

  it('a snapshot message lost on the way is sent again', () => {
    const c = new SimCluster({ seed: 52, voters: ['a', 'b', 'c'], snapshotEvery: 5 });
    const l = c.waitLeader();
    const lag = ['a', 'b', 'c'].find((x) => x !== l)!;
    c.crash(lag);
    for (let i = 0; i < 30; i++) { c.incr('s'); c.runFor(2); }
    expect(c.quiesce()).toBe(true);
    let dropped = 0;
    c.restart(lag);
    c.filter = (m: Message) => { if (m.type === 'snapshot' && dropped < 2) { dropped++; return false; } return true; };
    expect(c.runUntil(() => c.app(lag)!.counter('s') === 30, 5_000)).toBe(true);
    expect(dropped).toBe(2);
    settle(c);
  });
});

describe('membership', () => {
  it('a new replica joins as a learner from a snapshot, is promoted, and counts in the quorum', () => {
    const c = new SimCluster({ seed: 61, voters: ['a', 'b', 'c'], snapshotEvery: 8 });
    let l = c.waitLeader();
    for (let i = 0; i < 30; i++) { c.incr('m'); c.runFor(2); }
    c.addNode('d');
    expect(c.quiesce()).toBe(true);
    l = c.leader()!;
    // Promotion before it has caught up is refused.
    expect(c.proposeConfChange(l, { op: 'addLearner', node: 'd' }).ok).toBe(true);
    const early = c.proposeConfChange(l, { op: 'addVoter', node: 'd' });
    expect(early.ok).toBe(false);
    expect(!early.ok && early.error.code).toBe('CONF_CHANGE_PENDING');
    expect(c.quiesce()).toBe(true);
    expect(c.app('d')!.counter('m')).toBe(30);
    l = c.leader()!;
    expect(c.proposeConfChange(l, { op: 'addVoter', node: 'd' }).ok).toBe(true);
    expect(c.quiesce()).toBe(true);
    for (const id of ['a', 'b', 'c', 'd']) expect(c.node(id)!.confState().voters).toEqual(['a', 'b', 'c', 'd']);
    // With four voters the quorum is three: two down stalls commits.
    const others = ['a', 'b', 'c', 'd'].filter((x) => x !== c.leader());
    c.crash(others[0]!); c.crash(others[1]!);
    const stuck = c.incr('m')!;
    c.runFor(500);
    expect(stuck.status).toBe('pending');
    settle(c);
  });

  it('membership change while the leader crashes: the change is either kept or dropped, never half', () => {
    for (const seed of [62, 63, 64, 65, 66, 67]) {
      const c = new SimCluster({ seed, voters: FIVE });
      c.addNode('s6');
      const l = c.waitLeader();
      c.runFor(100);
      expect(c.proposeConfChange(l, { op: 'addLearner', node: 's6' }).ok).toBe(true);
      c.runFor(c.rng.int(6)); // crash somewhere between appended and committed everywhere
      c.crash(l);
      const l2 = c.waitLeader(3_000);
      c.runFor(300);
      const conf = c.node(l2)!.confState();
      if (!conf.learners.includes('s6')) expect(c.proposeConfChange(l2, { op: 'addLearner', node: 's6' }).ok).toBe(true);
      expect(c.quiesce()).toBe(true);
      const l3 = c.leader()!;
      const r = c.proposeConfChange(l3, { op: 'remove', node: l3 });
      expect(r.ok).toBe(true);
      c.runFor(c.rng.int(8));
      c.crash(l3); // the leader removing itself crashes mid-change
      c.waitLeader(3_000);
      c.restart(l3);
      expect(c.quiesce()).toBe(true);
      const l4 = c.leader()!;
      const confs = c.upIds().map((id) => JSON.stringify(c.node(id)!.confState()));
      expect(new Set(confs).size).toBe(1);
      if (c.node(l4)!.confState().voters.includes(l3)) {
        expect(c.proposeConfChange(l4, { op: 'remove', node: l3 }).ok).toBe(true);
      }
      expect(c.quiesce()).toBe(true);
      expect(c.node(c.leader()!)!.confState().voters).not.toContain(l3);
      c.incr('after');
      expect(c.quiesce()).toBe(true);
      c.checkConverged();
      clean(c);
    }
  });

  it('a removed leader steps down once its removal commits, and the rest carry on', () => {
    const c = new SimCluster({ seed: 68, voters: FIVE });
    const l = c.waitLeader();
    c.runFor(100);
    expect(c.proposeConfChange(l, { op: 'remove', node: l }).ok).toBe(true);
    expect(c.runUntil(() => !c.node(l)!.isLeader, 500)).toBe(true);
    const l2 = c.waitLeader(3_000);
    expect(l2).not.toBe(l);
    const op = c.incr('z')!;
    expect(c.runUntil(() => op.status === 'ok', 1_000)).toBe(true);
    // The removed replica knows it is out: it never campaigns again, and the fleet goes on without it.
    c.runFor(1_000);
    expect(c.node(l)!.softState().role).toBe('follower');
    expect(c.node(c.leader()!)!.confState().voters).not.toContain(l);
    expect(c.node(c.leader()!)!.confState().voters).toHaveLength(4);
    clean(c);
  });

  it('only one change may be pending, and a new leader waits for its own first commit', () => {
    const c = new SimCluster({ seed: 69, voters: ['a', 'b', 'c'], autoTick: false });
    c.addNode('d'); c.addNode('e');
    c.campaign('a');
    // Before its no-op commits the leader refuses a change (Ongaro's fix).
    c.runUntil(() => c.node('a')!.isLeader, 100);
    const early = c.proposeConfChange('a', { op: 'addLearner', node: 'd' });
    expect(!early.ok && early.error.code).toBe('LEADER_NOT_READY');
    c.runFor(50);
    expect(c.proposeConfChange('a', { op: 'addLearner', node: 'd' }).ok).toBe(true);
    const second = c.proposeConfChange('a', { op: 'addLearner', node: 'e' });
    expect(!second.ok && second.error.code).toBe('CONF_CHANGE_PENDING');
    c.runFor(50);
    expect(c.proposeConfChange('a', { op: 'addLearner', node: 'e' }).ok).toBe(true);
    c.runFor(50);
    const bad = c.proposeConfChange('a', { op: 'remove', node: 'zz' });
    expect(!bad.ok && bad.error.code).toBe('INVALID_CONF_CHANGE');
    clean(c);
  });
});

describe('leadership transfer', () => {
  it('hands over to a chosen voter within one election timeout, catching it up first', () => {
    const c = new SimCluster({ seed: 71, voters: FIVE });
    const l = c.waitLeader();
    const target = FIVE.find((x) => x !== l)!;
    c.crash(target);
    for (let i = 0; i < 20; i++) { c.incr('t'); c.runFor(2); }
    c.restart(target);
    const term = c.node(l)!.currentTerm;
    const t0 = c.now;
    expect(c.transferLeadership(l, target)).toBe(true);
    const during = c.node(l)!.propose(new Uint8Array([1]));
    expect(!during.ok && during.error.code).toBe('LEADER_TRANSFER');
    expect(c.runUntil(() => c.leader() === target, 1_000)).toBe(true);
    expect(c.now - t0).toBeLessThan(100); // well under an election timeout (100-200 ms)
    expect(c.node(target)!.currentTerm).toBe(term + 1);
    // The old leader learns of the new term from the next message it gets.
    expect(c.runUntil(() => !c.node(l)!.isLeader, 100)).toBe(true);
    settle(c);
    expect(c.app(target)!.counter('t')).toBe(20);
  });
});

describe('reads', () => {
  it('ReadIndex answers only after a heartbeat quorum and reflects every acknowledged write', () => {
    const c = new SimCluster({ seed: 81, voters: FIVE });
    const l = c.waitLeader();
    const w = c.incr('x')!;
    expect(c.runUntil(() => w.status === 'ok', 500)).toBe(true);
    const r = c.read('x')!;
    expect(c.runUntil(() => r.status === 'ok', 500)).toBe(true);
    expect(r.result).toBe(1);
    // Cut the leader off: its read must never be answered.
    c.isolate(l);
    const r2 = c.read('x', l)!;
    c.runFor(1_000);
    expect(r2.status).toBe('pending');
    const f = FIVE.find((x) => x !== l)!;
    const nr = c.node(f)!.readIndex(new Uint8Array([1]));
    expect(nr.ok).toBe(false);
    settle(c);
  });
});

describe('hostile peer traffic', () => {
  it('garbled, mis-attributed and non-member messages are dropped without changing any state', () => {
    const c = new SimCluster({ seed: 91, voters: ['a', 'b', 'c'] });
    const l = c.waitLeader();
    for (let i = 0; i < 5; i++) c.incr('h');
    expect(c.quiesce()).toBe(true);
    const f = ['a', 'b', 'c'].find((x) => x !== l)!;
    const before = c.node(f)!.hardState();
    const term = before.term;
    c.injectRaw(l, f, new Uint8Array([0x95, 0x01, 0xff, 0x00]));
    c.injectRaw(l, f, encodeMessage({ type: 'timeoutNow', from: 'zz', to: f, term }));
    // A replica that is not a member asks for votes with a huge term and pushes a bogus log.
    c.injectRaw('zz', f, encodeMessage({ type: 'vote', from: 'zz', to: f, term: term + 100, lastIndex: 1_000, lastTerm: term + 99, transfer: true }));
    c.injectRaw('zz', f, encodeMessage({ type: 'preVote', from: 'zz', to: f, term: term + 100, lastIndex: 1_000, lastTerm: term + 99 }));
    c.injectRaw('zz', f, encodeMessage({ type: 'appendResp', from: 'zz', to: l, term, index: 1_000, reject: false, hint: 0 }));
    c.runFor(50);
    expect(c.counts.malformed).toBe(2);
    expect(c.node(f)!.hardState().term).toBe(term);
    expect(c.node(f)!.stats.droppedNonMember).toBeGreaterThanOrEqual(2);
    expect(c.leader()).toBe(l);
    expect(c.node(l)!.commitIndex).toBe(c.node(f)!.commitIndex);
    settle(c);
  });
});
