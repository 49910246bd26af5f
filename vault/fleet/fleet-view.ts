// What the fleet's status says beyond each replica's own word (pure: statuses and links in, a
// verdict per replica out). A replica's `healthy` is local ("my disk and token are fine"); a
// partitioned or leaderless fleet is full of healthy replicas that serve nothing. So this decides,
// per replica, whether a device request entering there is served now, and if not, why: from what
// every replica heard from its peers lately (the replicas' own observation, on any host) and, where
// the host enforces the network faults itself (threads), from the link table those faults set.
import type { ReplicaStatus } from './fleet-types.ts';

/** What the view needs of one running replica's own report. */
export interface ReplicaReport {
  role: ReplicaStatus['role'];
  term: number;
  healthy: boolean;
  reason: string;
  leader: string | null;
  heardMsAgo: Record<string, number>;
}

export interface FleetViewInput {
  names: readonly string[];
  /** Reports of the replicas that answered (a running replica that did not is NOT_RESPONDING). */
  reports: ReadonlyMap<string, ReplicaReport>;
  running(name: string): boolean;
  /** The host's link table (one-way cuts, loss), where it has one; undefined over TCP. */
  links?: { blocked(from: string, to: string): boolean; lossRate(name: string): number };
  /** Contact older than this is lost (Raft's own measure: a follower campaigns after it). */
  electionMs: number;
  /** The voters of the leader's configuration, where known: learners count for no quorum. Default: `names`. */
  voters?: readonly string[];
}

export interface ReplicaVerdict {
  serves: boolean;
  servesNot: string;
  reachesLeader: boolean | null;
  reachable: number | null;
}

export interface FleetView {
  /** The leader serving the fleet: the highest-term healthy leader in two-way contact with a quorum. */
  leader: string | null;
  /** The highest-term replica that says it leads, quorum or not (a cut-off leader before it steps down). */
  claimedLeader: string | null;
  quorum: number;
  verdicts: Map<string, ReplicaVerdict>;
}

export function fleetView(i: FleetViewInput): FleetView {
  const voting = i.voters?.length ? i.voters.filter((v) => i.names.includes(v)) : i.names;
  const n = voting.length || i.names.length;
  const quorum = Math.floor(n / 2) + 1;
  const rep = (x: string) => i.reports.get(x);
  // Link state as the host enforces it; with no table (TCP) the links are whatever the network does,
  // and only what the replicas heard tells.
  const wire = (a: string, b: string) => !i.links || (!i.links.blocked(a, b) && i.links.lossRate(a) < 1 && i.links.lossRate(b) < 1);
  const heard = (a: string, b: string) => {
    const ms = rep(a)?.heardMsAgo[b];
    return ms !== undefined && ms <= i.electionMs;
  };
  // Two-way contact: both links up and each side heard the other within an election timeout.
  const contact = (a: string, b: string) => a === b || (!!rep(a) && !!rep(b) && wire(a, b) && wire(b, a) && heard(a, b) && heard(b, a));
  const voter = (x: string) => { const r = rep(x); return voting.includes(x) && !!r && r.healthy && r.role !== 'rejoining' && r.role !== 'down'; };
  const reachable = (x: string): number | null => {
    if (!i.links) return null;
    return i.names.filter((y) => y === x || (i.running(y) && wire(x, y) && wire(y, x))).length;
  };

  const claimants = i.names.filter((x) => rep(x)?.role === 'leader' && rep(x)!.healthy).sort((a, b) => rep(b)!.term - rep(a)!.term);
  const claimedLeader = claimants[0] ?? null;
  const backing = (l: string) => i.names.filter((x) => voter(x) && contact(l, x)).length;
  const leader = claimedLeader !== null && backing(claimedLeader) >= quorum ? claimedLeader : null;

  const verdicts = new Map<string, ReplicaVerdict>();
  for (const x of i.names) {
    const r = rep(x);
    const reach = reachable(x);
    const v = (servesNot: string, reachesLeader: boolean | null): ReplicaVerdict => ({ serves: servesNot === '', servesNot, reachesLeader, reachable: reach });
    const minority = reach !== null && reach < quorum ? `; in a minority: reaches ${reach} of ${n} replicas, a quorum is ${quorum}` : '';
    if (!r) { verdicts.set(x, v(i.running(x) ? 'NOT_RESPONDING' : 'CRASHED', null)); continue; }
    if (!r.healthy) { verdicts.set(x, v(r.reason || 'UNHEALTHY', leader === null ? null : contact(x, leader))); continue; }
    if (r.role === 'rejoining') { verdicts.set(x, v(r.reason || 'ROLLED_BACK: re-replicating', leader === null ? null : contact(x, leader))); continue; }
    if (leader === null) {
      if (claimedLeader !== null) {
        verdicts.set(x, v(`NO_QUORUM: ${claimedLeader} leads term ${rep(claimedLeader)!.term} but is in contact with ${backing(claimedLeader)} of ${n} voting replicas, a quorum is ${quorum}${x === claimedLeader ? '; it steps down within an election timeout' : ''}`, x === claimedLeader ? true : contact(x, claimedLeader)));
      } else if (reach !== null && reach < quorum) {
        verdicts.set(x, v(`NO_QUORUM: reaches ${reach} of ${n} replicas, a quorum is ${quorum}; no leader can be elected here`, null));
      } else {
        verdicts.set(x, v('NO_LEADER: no replica leads (an election is under way, or too few voting replicas are in contact)', null));
      }
      continue;
    }
    if (x === leader) { verdicts.set(x, v('', true)); continue; }
    if (r.role === 'leader') {
      verdicts.set(x, v(`STALE_LEADER: still leads term ${r.term}, the fleet follows ${leader} (term ${rep(leader)!.term}); it steps down within an election timeout${minority}`, contact(x, leader)));
      continue;
    }
    if (!contact(x, leader)) {
      const cut = i.links && (i.links.blocked(x, leader) || i.links.blocked(leader, x))
        ? `the link ${i.links.blocked(leader, x) ? `${leader} -> ${x}` : `${x} -> ${leader}`} is cut`
        : heard(x, leader) ? `${leader} has not heard from it within ${i.electionMs} ms` : `nothing heard from ${leader} within ${i.electionMs} ms`;
      verdicts.set(x, v(`CANNOT_REACH_LEADER: ${cut}${minority}`, false));
      continue;
    }
    if (r.leader !== leader) { verdicts.set(x, v(`NO_LEADER: follows ${r.leader ?? 'no leader'} yet (the fleet's is ${leader})`, true)); continue; }
    verdicts.set(x, v('', true));
  }
  return { leader, claimedLeader, quorum, verdicts };
}
