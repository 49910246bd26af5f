// The operator's membership changes (docs/fleet.md, "Membership"), driven by the runner one Raft
// configuration change at a time: add = start the standby replica, add it as a learner, wait until
// it caught up, promote it; remove = move the leadership away first if it leads, remove it, stop it;
// replace = add, then remove. Each step is reconciled against the configuration the current leader
// holds, not against what this driver believes it proposed: a leader that dies mid-change may or may
// not have replicated the entry, and whichever leader follows is asked again only if its log lacks it.
// The consensus rules themselves (one change pending, learners first) stay in RaftNode.
import { BkvError, InputError } from '../../protocol/errors.ts';
import type { MemberView, MemberChange } from '../replica/core.ts';
import type { MemberChangeInProgress, MemberRequest, MemberResult } from './fleet-types.ts';
import type { LocalStatus } from './replica.ts';

export class MemberError extends BkvError {}

export interface MemberDeps {
  /** The runner's member list (mutated in place: status, routing and faults follow it). */
  members: string[];
  /** Tokens that may join: name -> why it stands by (mutated in place). */
  standby: Map<string, 'spare' | 'removed'>;
  statuses(): Promise<Map<string, LocalStatus>>;
  start(name: string): Promise<void>;
  stop(name: string): Promise<void>;
  /** Hands a change to one replica's core (it must lead). */
  propose(name: string, change: MemberChange): Promise<{ ok: true; index: number } | { ok: false; code: string }>;
  /** Writes fleet.json from `members` and `standby` (called only once a change committed). */
  record(): void;
  electionMs: number;
}

/** Codes with which the leader refuses a change for now, not for good: ask again shortly. */
const TRANSIENT = new Set(['NOT_LEADER', 'LEADER_NOT_READY', 'CONF_CHANGE_PENDING', 'LEADER_TRANSFER', 'LEARNER_BEHIND', 'REPLICA_NOT_RESPONDING']);

const NAME = /^[a-z0-9][a-z0-9-]{0,39}$/;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Checks a request's shape; a bad one is an InputError (BAD_MEMBER) and nothing happens. */
export function parseMemberRequest(v: unknown): MemberRequest {
  const o = v as Record<string, unknown> | null;
  const name = (k: string): string => {
    const x = o?.[k];
    if (typeof x !== 'string' || !NAME.test(x)) throw new InputError(`${k} must be a replica name (lower-case letters, digits, '-')`, 'BAD_MEMBER');
    return x;
  };
  if (typeof o !== 'object' || o === null) throw new InputError('body must be JSON {op, name}', 'BAD_MEMBER');
  switch (o.op) {
    case 'add': return { op: 'add', name: name('name') };
    case 'remove': return { op: 'remove', name: name('name') };
    case 'replace': {
      const r = { op: 'replace' as const, old: name('old'), name: name('name') };
      if (r.old === r.name) throw new InputError('replace needs two different replicas', 'BAD_MEMBER');
      return r;
    }
    default: throw new InputError('op must be add, remove or replace', 'BAD_MEMBER');
  }
}

export class MembershipDriver {
  private current: MemberChangeInProgress | null = null;

  constructor(private readonly d: MemberDeps) {}

  /** The change in flight (fleet status shows it). */
  inProgress(): MemberChangeInProgress | null {
    return this.current ? { ...this.current, replicas: [...this.current.replicas] } : null;
  }

  async run(req: MemberRequest, by: string, progress: (line: string) => void = () => {}): Promise<MemberResult> {
    if (this.current) {
      throw new MemberError('CHANGE_IN_FLIGHT', `a membership change is in flight (${this.current.op} ${this.current.replicas.join(' -> ')}, by ${this.current.by}, at: ${this.current.step}); one change at a time`);
    }
    // Every refusal that needs no replica is made before anything changes.
    const isMember = (n: string) => this.d.members.includes(n);
    const joinable = (n: string) => {
      if (isMember(n)) throw new MemberError('ALREADY_MEMBER', `${n} is already a member of the fleet`);
      if (!this.d.standby.has(n)) {
        throw new MemberError('NO_SPARE_TOKEN', `no token for ${n}: a new replica's token must hold the fleet secrets, which never leave a token, so it must have taken part in the key ceremony (\`bkv provision --spares N\`); standby tokens: ${[...this.d.standby.keys()].join(', ') || 'none'}`);
      }
    };
    const leaving = (n: string) => {
      if (!isMember(n)) throw new MemberError('NOT_MEMBER', `${n} is not a member of the fleet (members: ${this.d.members.join(', ')})`);
    };
    if (req.op === 'add') joinable(req.name);
    if (req.op === 'remove') leaving(req.name);
    if (req.op === 'replace') { joinable(req.name); leaving(req.old); }
    const steps: string[] = [];
    this.current = { op: req.op, replicas: req.op === 'replace' ? [req.old, req.name] : [req.name], step: 'starting', since: new Date().toISOString(), by };
    const say = (line: string) => {
      steps.push(line);
      if (this.current) this.current.step = line;
      progress(line);
    };
    try {
      if (req.op === 'add' || req.op === 'replace') await this.add(req.name, say);
      if (req.op === 'remove') await this.remove(req.name, say);
      if (req.op === 'replace') await this.remove(req.old, say);
      const l = await this.leader();
      return { op: req.op, voters: [...(l?.members?.voters ?? [])], learners: [...(l?.members?.learners ?? [])], leader: l?.name ?? null, steps };
    } finally {
      this.current = null;
    }
  }

  private async leader(): Promise<LocalStatus | undefined> {
    const st = await this.d.statuses();
    return [...st.values()].filter((s) => s.role === 'leader' && s.healthy && s.members).sort((a, b) => b.term - a.term)[0];
  }

  private async waitFor<T>(what: string, timeoutMs: number, f: () => Promise<T | undefined>): Promise<T> {
    const end = Date.now() + timeoutMs;
    for (;;) {
      const v = await f();
      if (v !== undefined) return v;
      if (Date.now() > end) throw new MemberError('CHANGE_TIMEOUT', `timed out (${Math.round(timeoutMs / 1000)} s) ${what}`);
      await sleep(Math.max(20, this.d.electionMs / 10));
    }
  }

  /**
   * Brings the leader's configuration to `done`: proposes `change` to each new leader whose log lacks
   * it (a proposal is one entry; a leader that lost it is asked again), returns once it committed.
   */
  private async reconcile(change: MemberChange, done: (c: MemberView) => boolean, what: string, say: (l: string) => void): Promise<LocalStatus> {
    let askedOf: string | undefined;
    return this.waitFor(what, 30 * this.d.electionMs + 30_000, async () => {
      const l = await this.leader();
      if (!l?.members) return undefined;
      if (done(l.members)) return l.members.committed ? l : undefined;
      const who = `${l.name}/${l.term}`;
      if (askedOf === who && !l.members.committed) return undefined;
      const r = await this.d.propose(l.name, change);
      if (r.ok) {
        askedOf = who;
        say(`${what}: proposed by the leader ${l.name} (term ${l.term}) at index ${r.index}`);
        return undefined;
      }
      if (!TRANSIENT.has(r.code)) throw new MemberError(r.code, `${what}: the leader ${l.name} refused (${r.code})`);
      return undefined;
    });
  }

  private async add(name: string, say: (l: string) => void): Promise<void> {
    const l0 = await this.leader();
    if (!l0) throw new MemberError('NO_LEADER', 'the fleet has no leader now; a membership change needs one');
    say(`starting ${name} (${this.d.standby.get(name)} token, holds the fleet secrets) outside the configuration`);
    await this.d.start(name);
    this.d.members.push(name);
    try {
      await this.reconcile({ op: 'addLearner', node: name }, (c) => c.learners.includes(name) || c.voters.includes(name), `adding ${name} as a learner`, say);
    } catch (e) {
      // Nothing committed names it: take it out again, as if it had never started.
      const l = await this.leader();
      if (!l?.members || (!l.members.learners.includes(name) && !l.members.voters.includes(name))) {
        this.d.members.splice(this.d.members.indexOf(name), 1);
        await this.d.stop(name);
      }
      throw e;
    }
    say(`${name} is a learner; catching up (it receives the log, counts for no quorum)`);
    await this.waitFor(`for ${name} to catch up`, 60_000 + 30 * this.d.electionMs, async () => {
      const st = await this.d.statuses();
      const l = [...st.values()].find((s) => s.role === 'leader' && s.healthy);
      const me = st.get(name);
      return l && me && me.healthy && me.appliedIndex + 16 >= l.commitIndex ? true : undefined;
    });
    const done = await this.reconcile({ op: 'addVoter', node: name }, (c) => c.voters.includes(name), `promoting ${name} to voter`, say);
    this.d.standby.delete(name);
    this.d.record();
    say(`${name} is a voter (voters: ${done.members!.voters.join(', ')}); fleet.json updated`);
  }

  private async remove(name: string, say: (l: string) => void): Promise<void> {
    const l0 = await this.leader();
    if (!l0?.members) throw new MemberError('NO_LEADER', 'the fleet has no leader now; a membership change needs one');
    const voters = l0.members.voters;
    if (voters.length === 1 && voters[0] === name) throw new MemberError('LAST_VOTER', `${name} is the only voter; the fleet cannot remove its last one`);
    // The fleet must still have a majority of its new voters up and healthy, or removing one of the
    // healthy ones would leave it without a quorum.
    const st = await this.d.statuses();
    const after = voters.filter((v) => v !== name);
    const up = after.filter((v) => st.get(v)?.healthy && st.get(v)?.role !== 'rejoining').length;
    if (up < Math.floor(after.length / 2) + 1) {
      throw new MemberError('REMOVE_LOSES_QUORUM', `after removing ${name}, ${up} of the ${after.length} remaining voters would be up, short of a quorum of ${Math.floor(after.length / 2) + 1}; bring the others back first`);
    }
    if (l0.name === name) {
      // A removed leader would lead until the removal commits and leave the fleet leaderless for an
      // election timeout after; moving the leadership first avoids the gap.
      const target = after.map((v) => st.get(v)).filter((s): s is LocalStatus => !!s?.healthy).sort((a, b) => b.lastIndex - a.lastIndex)[0]!;
      say(`${name} leads: transferring the leadership to ${target.name} first`);
      // Asked again only after the node would have abandoned the last transfer (an election timeout):
      // asking sooner would restart its timer and keep it refusing proposals meanwhile.
      let asked = 0;
      await this.waitFor(`for the leadership to leave ${name}`, 20 * this.d.electionMs + 10_000, async () => {
        const l = await this.leader();
        if (l && l.name !== name) return l;
        if (l?.name === name && Date.now() - asked > 2 * this.d.electionMs) {
          asked = Date.now();
          await this.d.propose(name, { op: 'transfer', node: target.name });
        }
        return undefined;
      });
    }
    const done = await this.reconcile({ op: 'remove', node: name }, (c) => !c.voters.includes(name) && !c.learners.includes(name), `removing ${name}`, say);
    say(`${name} is out of the configuration (voters: ${done.members!.voters.join(', ')}); stopping it, its token and disk stay`);
    await this.d.stop(name);
    this.d.members.splice(this.d.members.indexOf(name), 1);
    this.d.standby.set(name, 'removed');
    this.d.record();
    say(`${name} stopped; fleet.json updated (standby: removed)`);
  }
}
