// Randomized runs: the seed picks the network and disk model, the Raft knobs and a stream of
// faults (crash, restart, pause, partitions, one-way links, leader isolation, transfers,
// membership churn) and client operations; afterwards the fleet is healed and must converge. Every choice
// comes from the cluster's seeded generator, so `randomRun(seed)` replays exactly.

import { SimCluster } from './cluster.ts';
import type { NodeId } from '../consensus/index.ts';

export interface RandomRunOptions {
  readonly seed: number;
  readonly nodes?: number;
  /** Virtual duration of the faulty phase. */
  readonly durationMs?: number;
  /** Allow a majority to be down at once (safety-only; liveness is then not expected during faults). */
  readonly allowMajorityDown?: boolean;
  /** Include membership changes (remove a voter, re-add it as a learner, promote it). */
  readonly membership?: boolean;
}

export interface RandomRunResult {
  readonly cluster: SimCluster;
  readonly violations: string[];
  readonly converged: boolean;
  readonly acked: number;
  readonly traceHash: string;
}

export function randomRun(o: RandomRunOptions): RandomRunResult {
  const names = ['us-east', 'us-west', 'eu-west', 'ap-southeast', 'sa-east', 'eu-north', 'ap-south'].slice(0, o.nodes ?? 5);
  // Pick the model from the seed itself, before the cluster exists.
  const pick = new SimCluster({ seed: o.seed ^ 0x9e3779b9, voters: ['x'] }).rng;
  const choose = <T>(a: readonly T[]): T => a[pick.int(a.length)]!;
  const maxDelay = choose([5, 10, 20, 40]);
  const c = new SimCluster({
    seed: o.seed,
    voters: names,
    maxMsgEntries: choose([1, 3, 64]),
    maxInflight: choose([1, 2, 8]),
    snapshotEvery: choose([0, 7, 25]),
    diskMaxMs: choose([1, 3, 8]),
    net: { minDelayMs: 1, maxDelayMs: maxDelay, dropRate: choose([0, 0.01, 0.05, 0.15]), dupRate: choose([0, 0.02, 0.1]) },
  });
  const rng = c.rng;
  const duration = o.durationMs ?? 4_000;
  const majority = Math.floor(names.length / 2) + 1;
  const maxDown = o.allowMajorityDown ? names.length : names.length - majority;
  const step = 20;
  const removed = new Set<NodeId>();
  for (let t = 0; t < duration; t += step) {
    c.runFor(step);
    const down = c.ids().filter((id) => !c.isUp(id));
    const r = rng.int(1000);
    if (r < 25 && down.length < maxDown) {
      const up = c.upIds();
      c.crash(up[rng.int(up.length)]!);
    } else if (r < 55 && down.length > 0) {
      c.restart(down[rng.int(down.length)]!);
    } else if (r < 70) {
      const ids = c.ids();
      const a: NodeId[] = []; const b: NodeId[] = [];
      for (const id of ids) (rng.int(2) === 0 ? a : b).push(id);
      c.partition(a, b);
    } else if (r < 78) {
      const l = c.leader();
      if (l) c.isolate(l);
    } else if (r < 86) {
      const ids = c.ids();
      c.blockLink(ids[rng.int(ids.length)]!, ids[rng.int(ids.length)]!);
    } else if (r < 125) {
      c.heal();
    } else if (r < 135) {
      const l = c.leader();
      const ids = c.upIds().filter((id) => id !== l && !removed.has(id));
      if (l && ids.length > 0) c.transferLeadership(l, ids[rng.int(ids.length)]!);
    } else if (o.membership && r < 150) {
      membershipStep(c, removed, rng.int(3));
    } else if (r < 160 && down.length < maxDown) {
      // A stopped process (often the leader): it resumes at the next heal, possibly stale.
      const l = c.leader();
      const up = c.upIds();
      c.pause(l !== null && rng.int(2) === 0 ? l : up[rng.int(up.length)]!);
    }
    const k = rng.int(4);
    for (let i = 0; i < k; i++) {
      const which = rng.int(10);
      if (which < 6) c.incr(`k${rng.int(3)}`);
      else if (which < 8) c.put(`r${rng.int(3)}`, `v${t}`);
      else c.read(`k${rng.int(3)}`);
    }
  }
  // Heal: everyone back, every link up; removed replicas come back as members for convergence.
  for (const id of c.ids()) c.restart(id);
  let converged = c.quiesce(20_000);
  // Whatever membership the run ended with (a removal may have been truncated and then committed
  // by a later leader after all), bring every replica back as a voter.
  const l0 = c.leader();
  const missing = l0 ? c.ids().filter((id) => !c.node(l0)!.confState().voters.includes(id)) : [];
  for (const id of missing) readd(c, id);
  if (missing.length > 0) converged = c.quiesce(20_000) && converged;
  c.runFor(200);
  c.checkConverged();
  const l = c.leader();
  if (l) c.checkHistory(c.app(l)!);
  for (const id of c.upIds()) {
    if (c.node(id)!.stats.safetyAlarms > 0) c.checker.note(`${id}: safety alarm`);
  }
  return {
    cluster: c,
    violations: c.violations(),
    converged,
    acked: c.history.filter((h) => h.status === 'ok').length,
    traceHash: c.traceHash(),
  };
}

function membershipStep(c: SimCluster, removed: Set<NodeId>, kind: number): void {
  const l = c.leader();
  if (!l) return;
  const conf = c.node(l)!.confState();
  if (kind === 0 && removed.size === 0 && conf.voters.length > 3) {
    const victims = conf.voters.filter((v) => v !== l);
    const v = victims[c.rng.int(victims.length)]!;
    if (c.proposeConfChange(l, { op: 'remove', node: v }).ok) removed.add(v);
  } else if (kind === 1 && removed.size > 0) {
    const v = [...removed][0]!;
    if (conf.learners.includes(v)) {
      if (c.proposeConfChange(l, { op: 'addVoter', node: v }).ok) removed.delete(v);
    } else if (!conf.voters.includes(v)) {
      c.proposeConfChange(l, { op: 'addLearner', node: v });
    } else {
      removed.delete(v);
    }
  } else if (kind === 2) {
    // Removing the leader itself: it leads until the change commits, then steps down.
    if (removed.size === 0 && conf.voters.length > 3 && c.rng.int(4) === 0) {
      if (c.proposeConfChange(l, { op: 'remove', node: l }).ok) removed.add(l);
    }
  }
}

function readd(c: SimCluster, id: NodeId): void {
  for (let i = 0; i < 50; i++) {
    const l = c.leader();
    if (l) {
      const conf = c.node(l)!.confState();
      if (conf.voters.includes(id)) return;
      c.proposeConfChange(l, conf.learners.includes(id) ? { op: 'addVoter', node: id } : { op: 'addLearner', node: id });
    }
    c.runFor(200);
  }
  c.checker.note(`could not re-add ${id}`);
}
