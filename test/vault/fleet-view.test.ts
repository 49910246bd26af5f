// The fleet's verdict on each replica (vault/fleet/fleet-view.ts): healthy replicas that are
// partitioned, leaderless or behind a cut link must be reported as not serving, with the reason;
// a leader counts only with a quorum in two-way contact; over TCP (no link table) the verdict rests
// on what the replicas heard.
import { describe, expect, it } from 'vitest';
import { fleetView, type ReplicaReport } from '../../vault/fleet/fleet-view.ts';
import { LinkTable } from '../../vault/fleet/wan.ts';

const NAMES = ['a', 'b', 'c', 'd', 'e'];
const ELECTION = 1000;

/** Reports where every pair in contact heard each other 50 ms ago; `silent` pairs (from, to) never. */
function reports(roles: Record<string, ReplicaReport['role']>, leader: string | null, links?: LinkTable, term = 3): Map<string, ReplicaReport> {
  const m = new Map<string, ReplicaReport>();
  for (const [n, role] of Object.entries(roles)) {
    const heard: Record<string, number> = {};
    for (const p of NAMES) if (p !== n && p in roles && !(links?.blocked(p, n))) heard[p] = 50;
    m.set(n, { role, term, healthy: true, reason: '', leader: role === 'leader' ? n : leader, heardMsAgo: heard });
  }
  return m;
}
const tableOf = (l: LinkTable) => ({ blocked: (a: string, b: string) => l.blocked(a, b), lossRate: (n: string) => l.degradation(n).lossRate });

describe('fleetView', () => {
  it('all connected: the leader and every follower serve', () => {
    const links = new LinkTable(NAMES);
    const v = fleetView({ names: NAMES, reports: reports({ a: 'leader', b: 'follower', c: 'follower', d: 'follower', e: 'follower' }, 'a', links), running: () => true, links: tableOf(links), electionMs: ELECTION });
    expect(v.leader).toBe('a');
    for (const n of NAMES) expect(v.verdicts.get(n), n).toEqual({ serves: true, servesNot: '', reachesLeader: true, reachable: 5 });
  });

  it('a 3|2 partition: the majority side serves, the minority is healthy but cut off and says so', () => {
    const links = new LinkTable(NAMES);
    links.partition([['a', 'b', 'c'], ['d', 'e']]);
    const r = reports({ a: 'leader', b: 'follower', c: 'follower', d: 'preCandidate', e: 'preCandidate' }, 'a', links);
    r.get('d')!.leader = null; r.get('e')!.leader = null;
    const v = fleetView({ names: NAMES, reports: r, running: () => true, links: tableOf(links), electionMs: ELECTION });
    expect(v.leader).toBe('a');
    expect(['a', 'b', 'c'].map((n) => v.verdicts.get(n)!.serves)).toEqual([true, true, true]);
    const d = v.verdicts.get('d')!;
    expect(d).toMatchObject({ serves: false, reachesLeader: false, reachable: 2 });
    expect(d.servesNot).toMatch(/^CANNOT_REACH_LEADER: the link a -> d is cut; in a minority: reaches 2 of 5 replicas, a quorum is 3$/);
  });

  it('no majority anywhere (2|2|1): every replica healthy, none serves, each says NO_QUORUM', () => {
    const links = new LinkTable(NAMES);
    links.partition([['a', 'b'], ['c', 'd'], ['e']]);
    const r = reports({ a: 'preCandidate', b: 'preCandidate', c: 'preCandidate', d: 'preCandidate', e: 'preCandidate' }, null, links);
    const v = fleetView({ names: NAMES, reports: r, running: () => true, links: tableOf(links), electionMs: ELECTION });
    expect(v.leader).toBeNull();
    for (const n of NAMES) {
      expect(v.verdicts.get(n)!.serves, n).toBe(false);
      expect(v.verdicts.get(n)!.servesNot, n).toMatch(/^NO_QUORUM: reaches [12] of 5 replicas, a quorum is 3; no leader can be elected here$/);
    }
  });

  it('an isolated old leader that has not stepped down yet is no leader of the fleet: STALE_LEADER beside the new one', () => {
    const links = new LinkTable(NAMES);
    links.isolate('a');
    const r = reports({ a: 'leader', b: 'leader', c: 'follower', d: 'follower', e: 'follower' }, 'b', links, 4);
    r.get('a')!.term = 3;
    const v = fleetView({ names: NAMES, reports: r, running: () => true, links: tableOf(links), electionMs: ELECTION });
    expect(v.leader).toBe('b');
    expect(v.verdicts.get('a')!.servesNot).toMatch(/^STALE_LEADER: still leads term 3, the fleet follows b \(term 4\).*in a minority: reaches 1 of 5/);
    expect(v.verdicts.get('c')!.serves).toBe(true);
  });

  it('a leader alone with its claim (its followers crashed) does not count: NO_QUORUM, and the crashed say CRASHED', () => {
    const r = reports({ a: 'leader', b: 'follower' }, 'a');
    const v = fleetView({ names: NAMES, reports: r, running: (n) => n === 'a' || n === 'b', links: tableOf(new LinkTable(NAMES)), electionMs: ELECTION });
    expect(v.leader).toBeNull();
    expect(v.claimedLeader).toBe('a');
    expect(v.verdicts.get('a')!.servesNot).toMatch(/^NO_QUORUM: a leads term 3 but is in contact with 2 of 5 voting replicas, a quorum is 3; it steps down/);
    expect(v.verdicts.get('c')!.servesNot).toBe('CRASHED');
  });

  it('a one-way block (leader -> follower) and a fully lossy data center both cut contact', () => {
    const links = new LinkTable(NAMES);
    links.block('a', 'b');
    links.degrade('c', { lossRate: 1 });
    const r = reports({ a: 'leader', b: 'follower', c: 'follower', d: 'follower', e: 'follower' }, 'a', links);
    const v = fleetView({ names: NAMES, reports: r, running: () => true, links: tableOf(links), electionMs: ELECTION });
    expect(v.leader).toBe('a');
    expect(v.verdicts.get('b')!.servesNot).toBe('CANNOT_REACH_LEADER: the link a -> b is cut');
    expect(v.verdicts.get('c')).toMatchObject({ serves: false, reachesLeader: false });
    expect(v.verdicts.get('d')!.serves).toBe(true);
  });

  it('over TCP (no link table) the verdict rests on what was heard: silence past the election timeout is lost contact', () => {
    const r = reports({ a: 'leader', b: 'follower', c: 'follower' }, 'a');
    r.get('c')!.heardMsAgo = { a: 5000 };
    const names = ['a', 'b', 'c'];
    const v = fleetView({ names, reports: r, running: () => true, electionMs: ELECTION });
    expect(v.leader).toBe('a');
    expect(v.verdicts.get('b')).toEqual({ serves: true, servesNot: '', reachesLeader: true, reachable: null });
    expect(v.verdicts.get('c')).toMatchObject({ serves: false, reachesLeader: false, reachable: null });
    expect(v.verdicts.get('c')!.servesNot).toMatch(/^CANNOT_REACH_LEADER: .*within 1000 ms$/);
  });

  it('a rejoining replica serves nothing and is not counted toward the quorum', () => {
    const r = reports({ a: 'leader', b: 'rejoining', c: 'rejoining', d: 'follower', e: 'follower' }, 'a');
    r.get('b')!.reason = 'ROLLED_BACK: disk below its anchor at 9';
    const v = fleetView({ names: NAMES, reports: r, running: () => true, electionMs: ELECTION });
    expect(v.leader).toBe('a');
    expect(v.verdicts.get('b')!.servesNot).toBe('ROLLED_BACK: disk below its anchor at 9');
    const r2 = reports({ a: 'leader', b: 'rejoining', c: 'rejoining', d: 'rejoining', e: 'follower' }, 'a');
    expect(fleetView({ names: NAMES, reports: r2, running: () => true, electionMs: ELECTION }).leader).toBeNull();
  });

  it('learners count for no quorum: the leader with two of three voters leads, with one of them it does not', () => {
    // Voters a, b, c; d and e are learners (a membership change under way).
    const links = new LinkTable(NAMES);
    links.partition([['a', 'd', 'e'], ['b', 'c']]);
    const r = reports({ a: 'leader', b: 'follower', c: 'follower', d: 'follower', e: 'follower' }, 'a', links);
    // Without the configuration the five look like voters: a, d, e are a majority of five.
    expect(fleetView({ names: NAMES, reports: r, running: () => true, links: tableOf(links), electionMs: ELECTION }).leader).toBe('a');
    const v = fleetView({ names: NAMES, reports: r, running: () => true, links: tableOf(links), electionMs: ELECTION, voters: ['a', 'b', 'c'] });
    expect(v.quorum).toBe(2);
    expect(v.leader).toBeNull();
    links.heal();
    links.partition([['a', 'b'], ['c', 'd', 'e']]);
    const r2 = reports({ a: 'leader', b: 'follower', c: 'follower', d: 'follower', e: 'follower' }, 'a', links);
    expect(fleetView({ names: NAMES, reports: r2, running: () => true, links: tableOf(links), electionMs: ELECTION, voters: ['a', 'b', 'c'] }).leader).toBe('a');
  });
});
