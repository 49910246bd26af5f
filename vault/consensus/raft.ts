// Raft as a pure, deterministic state machine (etcd raft style). Inputs: tick(), step(message),
// propose(), readIndex(), proposeConfChange(), transferLeadership(), compact(). Outputs: Ready.
// No I/O, no clock, no ambient randomness: time is counted in ticks, jitter comes from the injected Rng.

import { decodeConfChange, encodeConfChange, validatePersisted } from './codec.ts';
import {
  CodecError, ConfChangePendingError, ConsensusUsageError, InvalidConfChangeError, LeaderNotReadyError,
  LearnerBehindError, NotLeaderError, TransferInProgressError, type ConsensusError,
} from './errors.ts';
import { RaftLog } from './log.ts';
import type { Rng } from './rng.ts';
import type {
  AppendMsg, ConfChange, ConfState, Entry, HardState, Message, NodeId, NodeStatus, PersistedState, ProgressView,
  ProposeResult, ReadState, Ready, Role, Snapshot, SnapshotMsg, SoftState,
} from './types.ts';

export interface NodeOptions {
  readonly id: NodeId;
  /** Exactly what the host flushed: bootstrapStorage(...) for a founding member, emptyStorage() to join. */
  readonly storage: PersistedState;
  readonly rng: Rng;
  /** Followers campaign after a random timeout in [electionTick, 2*electionTick) ticks. Default 10. */
  readonly electionTick?: number;
  /** Leader heartbeat period in ticks. Default 2. */
  readonly heartbeatTick?: number;
  /** Batching: at most this many entries per append message. Default 64. */
  readonly maxMsgEntries?: number;
  /** Pipelining: at most this many unacknowledged appends per follower. Default 8. */
  readonly maxInflight?: number;
  /** A learner may be promoted only when its match is within this many entries of the leader's log. Default 64. */
  readonly promoteMaxLag?: number;
  /** The host state machine's applied index on restart (default: the snapshot index). */
  readonly applied?: number;
}

export type ReadResult = { readonly ok: true } | { readonly ok: false; readonly error: ConsensusError };
export type ForwardResult = { readonly ok: true; readonly to: NodeId } | { readonly ok: false; readonly error: ConsensusError };

export interface NodeStats {
  droppedNonMember: number;
  droppedStaleTerm: number;
  droppedWrongAddressee: number;
  /** Messages that would have broken a safety property (overwrite a committed entry, ack entries we never sent). Must stay 0 with honest peers. */
  safetyAlarms: number;
}

type ProgressState = 'probe' | 'replicate' | 'snapshot';

class Progress {
  match = 0;
  next: number;
  state: ProgressState = 'probe';
  probeSent = false;
  /** Last index of each in-flight append, oldest first. */
  inflight: number[] = [];
  pendingSnapshot = 0;
  snapshotElapsed = 0;
  recentActive = false;
  ackedReadSeq = 0;
  constructor(next: number) { this.next = next; }

  paused(maxInflight: number): boolean {
    if (this.state === 'probe') return this.probeSent;
    if (this.state === 'replicate') return this.inflight.length >= maxInflight;
    return true;
  }
  becomeProbe(): void {
    // After a snapshot, probe from just past it; otherwise from the last known match.
    this.next = this.state === 'snapshot' ? Math.max(this.match, this.pendingSnapshot) + 1 : this.match + 1;
    this.state = 'probe';
    this.probeSent = false;
    this.inflight = [];
    this.pendingSnapshot = 0;
  }
  becomeReplicate(): void {
    this.state = 'replicate';
    this.next = this.match + 1;
    this.inflight = [];
    this.probeSent = false;
  }
  becomeSnapshot(i: number): void {
    this.state = 'snapshot';
    this.pendingSnapshot = i;
    this.snapshotElapsed = 0;
    this.inflight = [];
  }
  maybeUpdate(i: number): boolean {
    let updated = false;
    if (i > this.match) { this.match = i; updated = true; this.probeSent = false; }
    if (this.next < i + 1) this.next = i + 1;
    while (this.inflight.length > 0 && this.inflight[0]! <= i) this.inflight.shift();
    return updated;
  }
  maybeDecrTo(rejected: number, hint: number): boolean {
    if (this.state === 'replicate') {
      if (rejected <= this.match) return false; // stale
      this.next = this.match + 1;
      return true;
    }
    if (this.next - 1 !== rejected) return false; // stale
    this.next = Math.max(1, Math.min(rejected, hint + 1));
    this.probeSent = false;
    return true;
  }
}

interface PendingRead { readonly seq: number; readonly index: number; readonly ctx: Uint8Array }

const EMPTY = new Uint8Array(0);

function sortedUnique(a: Iterable<NodeId>): NodeId[] { return [...new Set(a)].sort(); }

/** Apply one single-server change to a configuration. */
export function applyConfChange(conf: ConfState, cc: ConfChange): ConfState {
  if (cc.op === 'init') return { voters: sortedUnique(cc.conf.voters), learners: sortedUnique(cc.conf.learners) };
  const voters = conf.voters.filter((v) => v !== cc.node);
  const learners = conf.learners.filter((v) => v !== cc.node);
  if (cc.op === 'addVoter') voters.push(cc.node);
  if (cc.op === 'addLearner') learners.push(cc.node);
  return { voters: sortedUnique(voters), learners: sortedUnique(learners) };
}

function sameConf(a: ConfState, b: ConfState): boolean {
  return a.voters.join('\0') === b.voters.join('\0') && a.learners.join('\0') === b.learners.join('\0');
}

const EMPTY_CONF: ConfState = { voters: [], learners: [] };

/** Storage for a founding member: entry 1 is the initial configuration, identical on every founder. */
export function bootstrapStorage(voters: readonly NodeId[]): PersistedState {
  const data = encodeConfChange({ op: 'init', conf: { voters: sortedUnique(voters), learners: [] } });
  return { hardState: { term: 1, vote: null, commit: 1 }, snapshot: null, entries: [{ index: 1, term: 1, type: 'config', data }] };
}

/** Storage for a replica that joins an existing fleet (added as a learner first). */
export function emptyStorage(): PersistedState {
  return { hardState: { term: 0, vote: null, commit: 0 }, snapshot: null, entries: [] };
}

export class RaftNode {
  readonly id: NodeId;
  readonly stats: NodeStats = { droppedNonMember: 0, droppedStaleTerm: 0, droppedWrongAddressee: 0, safetyAlarms: 0 };

  private term = 0;
  private vote: NodeId | null = null;
  private lead: NodeId | null = null;
  private role: Role = 'follower';
  private readonly log = new RaftLog();
  private readonly rng: Rng;
  private readonly electionTick: number;
  private readonly heartbeatTick: number;
  private readonly maxMsgEntries: number;
  private readonly maxInflight: number;
  private readonly promoteMaxLag: number;

  /** Config as of the snapshot, plus indices of config entries after it: config = fold of both. */
  private confBase: ConfState = EMPTY_CONF;
  private confIndexes: number[] = [];
  private conf: ConfState = EMPTY_CONF;
  private pendingConfIndex = 0;

  private prs = new Map<NodeId, Progress>();
  private votes = new Map<NodeId, boolean>();
  private electionElapsed = 0;
  private voteRestriction: { index: number; term: number } | 'none' | null = null;
  /**
   * How far this follower's log is known to match the current leader's: the end of the last append
   * (or snapshot) from it that passed the consistency check, in this term. A heartbeat commits no
   * further: its commit is the leader's belief about our log, and a belief built from another
   * instance's acknowledgements (a fork) or a lost disk's must not commit an entry of ours.
   */
  private verified = { term: -1, lead: null as NodeId | null, index: 0 };
  private heartbeatElapsed = 0;
  private randomizedElectionTimeout = 0;
  private transferee: NodeId | null = null;

  private msgs: Message[] = [];
  private readStates: ReadState[] = [];
  private readSeq = 0;
  private pendingReads: PendingRead[] = [];
  /** Reads asked before this leader committed an entry of its own term (its commit may be stale). */
  private waitingReads: Uint8Array[] = [];

  private prevSoft: SoftState;
  private prevHard: HardState;
  private outstanding: Ready | null = null;

  constructor(opts: NodeOptions) {
    this.id = opts.id;
    this.rng = opts.rng;
    this.electionTick = opts.electionTick ?? 10;
    this.heartbeatTick = opts.heartbeatTick ?? 2;
    this.maxMsgEntries = opts.maxMsgEntries ?? 64;
    this.maxInflight = opts.maxInflight ?? 8;
    this.promoteMaxLag = opts.promoteMaxLag ?? 64;
    if (this.heartbeatTick < 1 || this.electionTick <= this.heartbeatTick) {
      throw new ConsensusUsageError('need 1 <= heartbeatTick < electionTick');
    }
    const st = validatePersisted(opts.storage);
    if (st.snapshot) {
      this.log.snapIndex = st.snapshot.meta.index;
      this.log.snapTerm = st.snapshot.meta.term;
      this.log.snapshot = st.snapshot;
      this.confBase = st.snapshot.meta.conf;
    }
    this.log.entries = [...st.entries];
    this.log.stableTo = this.log.lastIndex;
    if (st.hardState.commit > this.log.lastIndex) throw new CodecError('persisted commit beyond the log');
    this.log.committed = Math.max(st.hardState.commit, this.log.snapIndex);
    this.log.applied = Math.min(Math.max(opts.applied ?? this.log.snapIndex, this.log.snapIndex), this.log.committed);
    this.term = st.hardState.term;
    this.vote = st.hardState.vote;
    this.confIndexes = this.log.entries.filter((e) => e.type === 'config').map((e) => e.index);
    this.conf = this.confAt(this.log.lastIndex);
    this.resetRandomizedTimeout();
    this.prevSoft = this.softState();
    this.prevHard = this.hardState();
  }

  // ------------------------------------------------------------------ queries

  softState(): SoftState { return { leader: this.lead, role: this.role, term: this.term }; }
  hardState(): HardState { return { term: this.term, vote: this.vote, commit: this.log.committed }; }
  get isLeader(): boolean { return this.role === 'leader'; }
  get leader(): NodeId | null { return this.lead; }
  get currentTerm(): number { return this.term; }
  get commitIndex(): number { return this.log.committed; }
  /** The prefix of this follower's log known to match its current leader's (committed entries included). */
  get verifiedIndex(): number {
    const v = this.verified;
    return Math.max(this.log.committed, v.term === this.term && v.lead === this.lead ? v.index : 0);
  }
  get lastIndex(): number { return this.log.lastIndex; }
  /** Term of the entry at index i as this node holds it (undefined if compacted or absent). */
  termAt(i: number): number | undefined { return this.log.term(i); }
  /** The entry at index i if held in memory (for checkers and debugging). */
  entryAt(i: number): Entry | undefined { return this.log.entry(i); }
  confState(): ConfState { return this.conf; }
  /** Index of the config entry in effect (0: the snapshot's); it is committed once commitIndex reaches it. */
  get confIndex(): number { return this.confIndexes.at(-1) ?? 0; }

  status(): NodeStatus {
    let progress: Map<NodeId, ProgressView> | null = null;
    if (this.role === 'leader') {
      progress = new Map();
      for (const [id, pr] of this.prs) {
        progress.set(id, { match: pr.match, next: pr.next, state: pr.state, learner: this.conf.learners.includes(id), recentActive: pr.recentActive });
      }
    }
    return {
      id: this.id, soft: this.softState(), hard: this.hardState(), applied: this.log.applied,
      firstIndex: this.log.firstIndex, lastIndex: this.log.lastIndex, conf: this.conf, progress, transferee: this.transferee,
    };
  }

  private isVoter(id: NodeId): boolean { return this.conf.voters.includes(id); }
  private isMember(id: NodeId): boolean { return this.conf.voters.includes(id) || this.conf.learners.includes(id); }
  private get promotable(): boolean { return this.isVoter(this.id); }
  private quorum(): number { return Math.floor(this.conf.voters.length / 2) + 1; }

  // ------------------------------------------------------------------ config

  private confAt(index: number): ConfState {
    let c = this.confBase;
    for (const i of this.confIndexes) {
      if (i > index) break;
      c = applyConfChange(c, decodeConfChange(this.log.entry(i)!.data));
    }
    return c;
  }

  /**
   * A config takes effect as soon as it is in the log (appended), and reverts if truncated.
   * `from` is the first log index that changed.
   */
  private refreshConf(from: number): void {
    this.confIndexes = this.confIndexes.filter((i) => i < from);
    for (const e of this.log.slice(from, this.log.lastIndex + 1)) if (e.type === 'config') this.confIndexes.push(e.index);
    const next = this.confAt(this.log.lastIndex);
    if (sameConf(next, this.conf)) return;
    this.conf = next;
    if (this.role === 'leader') {
      for (const id of [...this.conf.voters, ...this.conf.learners]) {
        if (!this.prs.has(id)) this.prs.set(id, new Progress(this.log.lastIndex + 1));
      }
      for (const id of [...this.prs.keys()]) if (!this.isMember(id) && id !== this.id) this.prs.delete(id);
      if (this.transferee !== null && !this.isVoter(this.transferee)) this.transferee = null;
      this.maybeCommit();
      this.checkReads();
    }
  }

  // ------------------------------------------------------------------ roles

  private resetRandomizedTimeout(): void {
    this.randomizedElectionTimeout = this.electionTick + this.rng.int(this.electionTick);
  }

  private reset(term: number): void {
    if (this.term !== term) {
      this.term = term;
      this.vote = null;
      // Unsent replies of an older term are stale, and an append ack among them may cover entries
      // the new term is about to truncate before they ever reach disk: drop them (a loss the
      // network could cause anyway).
      this.msgs = this.msgs.filter((m) => m.term >= term);
    }
    this.lead = null;
    this.electionElapsed = 0;
    this.heartbeatElapsed = 0;
    this.resetRandomizedTimeout();
    this.votes.clear();
    this.transferee = null;
    this.pendingReads = [];
    this.waitingReads = [];
    this.prs = new Map();
    for (const id of [...this.conf.voters, ...this.conf.learners]) {
      const pr = new Progress(this.log.lastIndex + 1);
      if (id === this.id) pr.match = this.log.lastIndex;
      this.prs.set(id, pr);
    }
  }

  private becomeFollower(term: number, lead: NodeId | null): void {
    this.reset(term);
    this.lead = lead;
    this.role = 'follower';
  }

  private becomePreCandidate(): void {
    // No term bump and no vote: a pre-vote that fails leaves no trace (Ongaro §9.6).
    this.votes.clear();
    this.lead = null;
    this.role = 'preCandidate';
  }

  private becomeCandidate(): void {
    this.reset(this.term + 1);
    this.vote = this.id;
    this.role = 'candidate';
  }

  private becomeLeader(): void {
    this.reset(this.term);
    this.lead = this.id;
    this.role = 'leader';
    for (const pr of this.prs.values()) pr.recentActive = true;
    // No config change until the no-op below commits: that is the leader's first entry of its
    // term, which closes the single-server-change hole Ongaro described in 2015.
    this.pendingConfIndex = this.log.lastIndex + 1;
    this.appendEntries([{ type: 'noop', data: EMPTY }]);
    this.bcastAppend();
  }

  /** Start an election now (host-driven: tests, or an operator). Honours pre-vote. */
  campaign(): void {
    if (this.role === 'leader') return;
    this.hup(false);
  }

  /**
   * A voter that lost the log it acknowledged (a refused disk, re-replicating). 'none': it grants no
   * vote. A floor (the last position it ever acknowledged, index and term): it grants only to
   * candidates at least as up to date as that position, as its lost log would have demanded. Either
   * way it never campaigns. null: an ordinary voter again.
   */
  restrictVotes(r: { index: number; term: number } | 'none' | null): void {
    this.voteRestriction = r;
  }

  private hup(transfer: boolean): void {
    if (!this.promotable || this.voteRestriction !== null) return;
    if (transfer) this.startElection(false, true);
    else this.startElection(true, false);
  }

  private startElection(pre: boolean, transfer: boolean): void {
    let voteTerm: number;
    if (pre) { this.becomePreCandidate(); voteTerm = this.term + 1; } else { this.becomeCandidate(); voteTerm = this.term; }
    if (this.poll(this.id, true) === 'won') {
      if (pre) this.startElection(false, transfer); else this.becomeLeader();
      return;
    }
    for (const id of this.conf.voters) {
      if (id === this.id) continue;
      const base = { from: this.id, to: id, term: voteTerm, lastIndex: this.log.lastIndex, lastTerm: this.log.lastTerm };
      this.send(pre ? { type: 'preVote', ...base } : { type: 'vote', ...base, transfer });
    }
  }

  private poll(id: NodeId, granted: boolean): 'won' | 'lost' | 'pending' {
    if (!this.votes.has(id)) this.votes.set(id, granted);
    let yes = 0;
    let no = 0;
    for (const v of this.conf.voters) {
      const g = this.votes.get(v);
      if (g === true) yes++; else if (g === false) no++;
    }
    const q = this.quorum();
    if (yes >= q) return 'won';
    if (no > this.conf.voters.length - q) return 'lost';
    return 'pending';
  }

  // ------------------------------------------------------------------ time

  /** Advance logical time by one tick. */
  tick(): void {
    if (this.role === 'leader') this.tickLeader(); else this.tickElection();
  }

  private tickElection(): void {
    this.electionElapsed++;
    if (this.promotable && this.electionElapsed >= this.randomizedElectionTimeout) {
      this.electionElapsed = 0;
      this.hup(false);
    }
  }

  private tickLeader(): void {
    this.heartbeatElapsed++;
    this.electionElapsed++;
    for (const pr of this.prs.values()) {
      if (pr.state === 'snapshot' && ++pr.snapshotElapsed > this.electionTick) pr.becomeProbe(); // snapshot lost: retry
    }
    if (this.electionElapsed >= this.electionTick) {
      this.electionElapsed = 0;
      // Check quorum: a leader that has not heard from a majority in an election timeout steps
      // down, so a leader cut off with a minority stops serving before a new one is elected.
      let active = 0;
      for (const v of this.conf.voters) {
        const pr = this.prs.get(v);
        if (v === this.id || pr?.recentActive) active++;
      }
      for (const [id, pr] of this.prs) if (id !== this.id) pr.recentActive = false;
      if (active < this.quorum()) {
        this.becomeFollower(this.term, null);
        return;
      }
      this.transferee = null; // a transfer that did not finish within an election timeout is abandoned
    }
    if (this.heartbeatElapsed >= this.heartbeatTick) {
      this.heartbeatElapsed = 0;
      this.bcastHeartbeat();
    }
  }

  // ------------------------------------------------------------------ proposals

  private appendEntries(items: readonly { type: Entry['type']; data: Uint8Array }[]): Entry[] {
    let i = this.log.lastIndex;
    const ents = items.map((it) => ({ index: ++i, term: this.term, type: it.type, data: it.data }));
    this.log.append(ents);
    this.prs.get(this.id)?.maybeUpdate(this.log.lastIndex);
    if (ents.some((e) => e.type === 'config')) this.refreshConf(ents[0]!.index);
    this.maybeCommit();
    return ents;
  }

  private checkCanPropose(): ConsensusError | null {
    if (this.role !== 'leader') return new NotLeaderError(this.lead === this.id ? null : this.lead);
    if (this.transferee !== null) return new TransferInProgressError();
    return null;
  }

  /** Append opaque application bytes (leader only). The entry is not committed yet. */
  propose(data: Uint8Array): ProposeResult {
    const err = this.checkCanPropose();
    if (err) return { ok: false, error: err };
    const [e] = this.appendEntries([{ type: 'normal', data: new Uint8Array(data) }]);
    this.bcastAppend();
    return { ok: true, index: e!.index, term: e!.term };
  }

  /** A follower hands proposals to the leader it knows; the outcome shows up in the committed log. */
  forward(data: readonly Uint8Array[]): ForwardResult {
    if (this.role === 'leader') {
      for (const d of data) { const r = this.propose(d); if (!r.ok) return r; }
      return { ok: true, to: this.id };
    }
    if (this.lead === null) return { ok: false, error: new NotLeaderError(null) };
    if (data.length === 0) return { ok: true, to: this.lead };
    this.send({ type: 'propose', from: this.id, to: this.lead, term: this.term, data: data.map((d) => new Uint8Array(d)) });
    return { ok: true, to: this.lead };
  }

  /** One single-server membership change; it takes effect when appended, one at a time. */
  proposeConfChange(cc: ConfChange): ProposeResult {
    const err = this.checkCanPropose();
    if (err) return { ok: false, error: err };
    if (this.log.term(this.log.committed) !== this.term) return { ok: false, error: new LeaderNotReadyError() };
    if (this.pendingConfIndex > this.log.committed) return { ok: false, error: new ConfChangePendingError() };
    const invalid = (m: string): ProposeResult => ({ ok: false, error: new InvalidConfChangeError(m) });
    if (cc.op === 'init') return invalid('init is only valid at bootstrap');
    const isV = this.isVoter(cc.node);
    const isL = this.conf.learners.includes(cc.node);
    if (cc.op === 'addVoter' && isV) return invalid(`${cc.node} is already a voter`);
    if (cc.op === 'addLearner' && isL) return invalid(`${cc.node} is already a learner`);
    if (cc.op === 'remove' && !isV && !isL) return invalid(`${cc.node} is not a member`);
    const next = applyConfChange(this.conf, cc);
    if (next.voters.length === 0) return invalid('the fleet needs at least one voter');
    if (cc.op === 'addVoter' && isL) {
      const pr = this.prs.get(cc.node);
      if (!pr || pr.match + this.promoteMaxLag < this.log.lastIndex) return { ok: false, error: new LearnerBehindError(cc.node) };
    }
    const [e] = this.appendEntries([{ type: 'config', data: encodeConfChange(cc) }]);
    this.pendingConfIndex = e!.index;
    this.bcastAppend();
    return { ok: true, index: e!.index, term: e!.term };
  }

  /**
   * Ask for a linearizable read point. The ReadState (index, ctx) appears in a later Ready once a
   * majority confirmed this node was still leader after the request; the host answers once it
   * has applied that index. Nothing is appended to the log.
   */
  readIndex(ctx: Uint8Array): ReadResult {
    if (this.role !== 'leader') return { ok: false, error: new NotLeaderError(this.lead) };
    const c = new Uint8Array(ctx);
    if (this.log.term(this.log.committed) !== this.term) { this.waitingReads.push(c); return { ok: true }; }
    this.registerRead(c);
    return { ok: true };
  }

  private registerRead(ctx: Uint8Array): void {
    const seq = ++this.readSeq;
    this.pendingReads.push({ seq, index: this.log.committed, ctx });
    if (this.quorum() === 1 && this.isVoter(this.id)) { this.checkReads(); return; }
    this.bcastHeartbeat();
  }

  private checkReads(): void {
    if (this.role !== 'leader' || this.pendingReads.length === 0) return;
    const acks = this.conf.voters.map((v) => (v === this.id ? Number.MAX_SAFE_INTEGER : this.prs.get(v)?.ackedReadSeq ?? 0)).sort((a, b) => b - a);
    const confirmed = acks[this.quorum() - 1] ?? 0;
    while (this.pendingReads.length > 0 && this.pendingReads[0]!.seq <= confirmed) {
      const r = this.pendingReads.shift()!;
      this.readStates.push({ index: r.index, ctx: r.ctx });
    }
  }

  /**
   * Leader: member `id` says (authenticated, out of band) that it restarted and may have lost
   * entries it acknowledged before (a host that restored an old disk). Forget its match so its old
   * acknowledgements stop counting toward commits, and find its real log end by probing. Lowers
   * only the leader's view, so it can never commit more than before. (Added for the fleet agent.)
   */
  resetPeer(id: NodeId): boolean {
    if (this.role !== 'leader' || id === this.id || !this.prs.has(id)) return false;
    const pr = new Progress(this.log.lastIndex + 1);
    pr.recentActive = true;
    this.prs.set(id, pr);
    this.sendAppend(id);
    return true;
  }

  /** Hand leadership to `to` (a voter): catch it up, then tell it to campaign at once (TimeoutNow). */
  transferLeadership(to: NodeId): ReadResult {
    if (this.role !== 'leader') return { ok: false, error: new NotLeaderError(this.lead) };
    if (to === this.id) return { ok: true };
    if (!this.isVoter(to)) return { ok: false, error: new InvalidConfChangeError(`${to} is not a voter`) };
    this.transferee = to;
    this.electionElapsed = 0;
    const pr = this.prs.get(to)!;
    if (pr.match === this.log.lastIndex) this.send({ type: 'timeoutNow', from: this.id, to, term: this.term });
    else this.sendAppend(to);
    return { ok: true };
  }

  /**
   * Local compaction: the host hands the state-machine image as of `index` (<= applied). Returns
   * the snapshot to persist; the host then drops its stored entries up to `index`.
   */
  compact(index: number, data: Uint8Array): Snapshot {
    if (index > this.log.applied) throw new ConsensusUsageError('cannot compact past the applied index');
    if (index <= this.log.snapIndex) throw new ConsensusUsageError('already compacted to that index');
    const term = this.log.term(index)!;
    const snap: Snapshot = { meta: { index, term, conf: this.confAt(index) }, data: new Uint8Array(data) };
    this.confBase = snap.meta.conf;
    this.confIndexes = this.confIndexes.filter((i) => i > index);
    this.log.compact(snap);
    return snap;
  }

  // ------------------------------------------------------------------ messages in

  /** Feed one (already authenticated and decoded) peer message. Never throws on peer input. */
  step(m: Message): void {
    if (m.to !== this.id || m.from === this.id) { this.stats.droppedWrongAddressee++; return; }
    const leaderMsg = m.type === 'append' || m.type === 'heartbeat' || m.type === 'snapshot';
    // Non-members are ignored, except a leader this node does not know yet (it is behind on the
    // config, or is joining): such a message still has to carry a term >= ours.
    // A restricted voter whose log (and with it the configuration) is gone cannot tell members apart;
    // its peers are authenticated fleet replicas, and a grant from a non-member counts for no one.
    const confLost = this.voteRestriction !== null && this.conf.voters.length === 0 && (m.type === 'vote' || m.type === 'preVote');
    if (!this.isMember(m.from) && !(leaderMsg && m.term >= this.term) && !confLost) { this.stats.droppedNonMember++; return; }
    if ((m.type === 'vote' || m.type === 'preVote') && !this.isVoter(m.from) && !confLost) { this.stats.droppedNonMember++; return; }

    if (m.term > this.term) {
      if (m.type === 'vote' || m.type === 'preVote') {
        // Leader lease (check-quorum): while we hear from a leader, a disrupting candidate is ignored.
        const inLease = this.lead !== null && this.electionElapsed < this.electionTick;
        if (inLease && !(m.type === 'vote' && m.transfer)) { this.stats.droppedStaleTerm++; return; }
      }
      if (m.type === 'preVote') {
        // a pre-vote never changes our term
      } else if (m.type === 'preVoteResp' && !m.reject) {
        // granted pre-votes carry the future term; the term moves when we really campaign
      } else {
        this.becomeFollower(m.term, leaderMsg ? m.from : null);
      }
    } else if (m.term < this.term) {
      if (leaderMsg) {
        // Tell a stale leader about the newer term so it steps down (pre-vote would otherwise stall it).
        this.send({ type: 'appendResp', from: this.id, to: m.from, term: this.term, index: 0, reject: true, hint: 0 });
      } else if (m.type === 'preVote') {
        this.send({ type: 'preVoteResp', from: this.id, to: m.from, term: this.term, reject: true });
      }
      this.stats.droppedStaleTerm++;
      return;
    }

    switch (m.type) {
      case 'preVote': case 'vote': {
        const pre = m.type === 'preVote';
        const canVote = this.vote === m.from || (this.vote === null && this.lead === null) || (pre && m.term > this.term);
        const r = this.voteRestriction;
        const aboveFloor = r === null || (r !== 'none' && (m.lastTerm > r.term || (m.lastTerm === r.term && m.lastIndex >= r.index)));
        if (canVote && aboveFloor && this.log.isUpToDate(m.lastIndex, m.lastTerm)) {
          this.send({ type: pre ? 'preVoteResp' : 'voteResp', from: this.id, to: m.from, term: m.term, reject: false });
          if (!pre) { this.electionElapsed = 0; this.vote = m.from; }
        } else {
          this.send({ type: pre ? 'preVoteResp' : 'voteResp', from: this.id, to: m.from, term: this.term, reject: true });
        }
        return;
      }
      default:
    }
    if (this.role === 'leader') this.stepLeader(m);
    else if (this.role === 'follower') this.stepFollower(m);
    else this.stepCandidate(m);
  }

  private stepFollower(m: Message): void {
    switch (m.type) {
      case 'append': this.electionElapsed = 0; this.lead = m.from; this.handleAppend(m); return;
      case 'heartbeat':
        this.electionElapsed = 0; this.lead = m.from;
        this.commitTo(Math.min(m.commit, this.log.lastIndex, this.verifiedIndex));
        this.send({ type: 'heartbeatResp', from: this.id, to: m.from, term: this.term, readSeq: m.readSeq });
        return;
      case 'snapshot': this.electionElapsed = 0; this.lead = m.from; this.handleSnapshot(m); return;
      case 'timeoutNow': if (this.promotable) this.hup(true); return;
      default: return; // forwarded proposals are not re-forwarded (no loops); stale responses ignored
    }
  }

  private stepCandidate(m: Message): void {
    const pre = this.role === 'preCandidate';
    switch (m.type) {
      case 'append': case 'heartbeat': case 'snapshot':
        this.becomeFollower(this.term, m.from);
        this.stepFollower(m);
        return;
      case 'preVoteResp': case 'voteResp': {
        if ((m.type === 'preVoteResp') !== pre) return;
        const r = this.poll(m.from, !m.reject);
        if (r === 'won') { if (pre) this.startElection(false, false); else { this.becomeLeader(); } }
        else if (r === 'lost') this.becomeFollower(this.term, null);
        return;
      }
      default: return;
    }
  }

  private stepLeader(m: Message): void {
    switch (m.type) {
      case 'propose': {
        if (this.transferee !== null) return;
        this.appendEntries(m.data.map((d) => ({ type: 'normal' as const, data: d })));
        this.bcastAppend();
        return;
      }
      case 'appendResp': {
        const pr = this.prs.get(m.from);
        if (!pr) return;
        // An acknowledgement past our own log is impossible from an honest peer: never count it.
        if (!m.reject && m.index > this.log.lastIndex) { this.stats.safetyAlarms++; return; }
        pr.recentActive = true;
        if (m.reject) {
          if (pr.maybeDecrTo(m.index, m.hint)) {
            if (pr.state === 'replicate') pr.becomeProbe();
            this.sendAppend(m.from);
          }
          return;
        }
        const wasPaused = pr.paused(this.maxInflight);
        if (pr.maybeUpdate(m.index)) {
          if (pr.state === 'probe') pr.becomeReplicate();
          else if (pr.state === 'snapshot' && pr.match >= pr.pendingSnapshot) { pr.becomeProbe(); pr.becomeReplicate(); }
          if (this.maybeCommit()) this.bcastAppend();
          else if (wasPaused) this.sendAppend(m.from);
          while (this.role === 'leader' && this.sendAppend(m.from, false)) { /* pipeline until paused or caught up */ }
          if (m.from === this.transferee && pr.match === this.log.lastIndex) {
            this.send({ type: 'timeoutNow', from: this.id, to: m.from, term: this.term });
          }
        } else if (wasPaused && pr.state === 'probe') {
          this.sendAppend(m.from);
        }
        return;
      }
      case 'heartbeatResp': {
        const pr = this.prs.get(m.from);
        if (!pr) return;
        pr.recentActive = true;
        pr.probeSent = false;
        // A lost append may have filled the window: free one slot so replication resumes.
        if (pr.state === 'replicate' && pr.inflight.length >= this.maxInflight) pr.inflight.shift();
        if (pr.match < this.log.lastIndex) this.sendAppend(m.from);
        if (m.readSeq > pr.ackedReadSeq && this.isVoter(m.from)) { pr.ackedReadSeq = m.readSeq; this.checkReads(); }
        return;
      }
      default: return;
    }
  }

  private handleAppend(m: AppendMsg): void {
    if (m.prevIndex < this.log.committed) {
      // Already have (and committed) everything up to our commit; report that as our match.
      this.markVerified(m.from, this.log.committed);
      this.send({ type: 'appendResp', from: this.id, to: m.from, term: this.term, index: this.log.committed, reject: false, hint: 0 });
      return;
    }
    if (!this.log.matchTerm(m.prevIndex, m.prevTerm)) {
      const hint = this.log.conflictHint(Math.min(m.prevIndex, this.log.lastIndex), m.prevTerm);
      this.send({ type: 'appendResp', from: this.id, to: m.from, term: this.term, index: m.prevIndex, reject: true, hint });
      return;
    }
    // The leader would overwrite one of our committed entries: impossible with honest peers, so
    // refuse and count it rather than corrupt the state machine.
    const conflict = m.entries.find((e) => e.index <= this.log.committed && e.index > this.log.snapIndex && this.log.term(e.index) !== e.term);
    if (conflict) { this.stats.safetyAlarms++; return; }
    const changed = this.log.appendFollower(m.entries);
    if (changed !== null) this.refreshConf(changed);
    const lastNew = m.prevIndex + m.entries.length;
    this.markVerified(m.from, lastNew);
    this.commitTo(Math.min(m.commit, lastNew));
    this.send({ type: 'appendResp', from: this.id, to: m.from, term: this.term, index: lastNew, reject: false, hint: 0 });
  }

  private markVerified(lead: NodeId, index: number): void {
    const v = this.verified;
    if (v.term !== this.term || v.lead !== lead) this.verified = { term: this.term, lead, index };
    else v.index = Math.max(v.index, index);
  }

  private handleSnapshot(m: SnapshotMsg): void {
    const s = m.snapshot;
    if (s.meta.index <= this.log.committed) {
      this.send({ type: 'appendResp', from: this.id, to: m.from, term: this.term, index: this.log.committed, reject: false, hint: 0 });
      return;
    }
    if (this.log.matchTerm(s.meta.index, s.meta.term)) {
      // We hold that entry already: just fast-forward the commit.
      this.commitTo(s.meta.index);
    } else {
      this.log.restore(s);
      this.confBase = s.meta.conf;
      this.confIndexes = [];
      this.conf = s.meta.conf;
    }
    this.markVerified(m.from, s.meta.index);
    this.send({ type: 'appendResp', from: this.id, to: m.from, term: this.term, index: this.log.lastIndex, reject: false, hint: 0 });
  }

  // ------------------------------------------------------------------ commit

  private commitTo(i: number): void {
    if (i > this.log.committed) this.log.committed = i;
  }

  /** Commit the majority-replicated index, but only if it is from the current term (Raft §5.4.2). */
  private maybeCommit(): boolean {
    if (this.role !== 'leader' || this.conf.voters.length === 0) return false;
    const matches = this.conf.voters.map((v) => (v === this.id ? this.log.lastIndex : this.prs.get(v)?.match ?? 0)).sort((a, b) => b - a);
    const q = matches[this.quorum() - 1]!;
    if (q <= this.log.committed || this.log.term(q) !== this.term) return false;
    this.commitTo(q);
    this.afterLeaderCommit();
    return true;
  }

  private afterLeaderCommit(): void {
    if (this.waitingReads.length > 0 && this.log.term(this.log.committed) === this.term) {
      const w = this.waitingReads;
      this.waitingReads = [];
      for (const c of w) this.registerRead(c);
    }
    // A leader removed from the voters leads until that change is committed, then steps down.
    if (!this.isVoter(this.id) && this.pendingConfIndex <= this.log.committed) {
      this.bcastAppend();
      this.becomeFollower(this.term, null);
    }
  }

  // ------------------------------------------------------------------ messages out

  private send(m: Message): void { this.msgs.push(m); }

  private bcastAppend(): void {
    for (const id of this.prs.keys()) if (id !== this.id) this.sendAppend(id);
  }

  private bcastHeartbeat(): void {
    for (const [id, pr] of this.prs) {
      if (id === this.id) continue;
      // Never tell a follower to commit past what it is known to hold.
      const commit = Math.min(pr.match, this.log.committed);
      this.send({ type: 'heartbeat', from: this.id, to: id, term: this.term, commit, readSeq: this.readSeq });
    }
  }

  /** Send the next batch to `to`, or a snapshot if it is behind our log. Returns whether it sent. */
  private sendAppend(to: NodeId, sendIfEmpty = true): boolean {
    const pr = this.prs.get(to);
    if (!pr || pr.paused(this.maxInflight)) return false;
    const prevIndex = pr.next - 1;
    const prevTerm = this.log.term(prevIndex);
    if (prevTerm === undefined) {
      const snap = this.log.snapshot;
      if (!snap) return false;
      pr.becomeSnapshot(snap.meta.index);
      this.send({ type: 'snapshot', from: this.id, to, term: this.term, snapshot: snap });
      return true;
    }
    const entries = this.log.slice(pr.next, pr.next + this.maxMsgEntries);
    if (entries.length === 0 && !sendIfEmpty) return false;
    this.send({ type: 'append', from: this.id, to, term: this.term, prevIndex, prevTerm, entries, commit: this.log.committed });
    if (pr.state === 'replicate') {
      if (entries.length > 0) {
        const last = entries.at(-1)!.index;
        pr.next = last + 1; // optimistic: pipeline the next batch without waiting
        pr.inflight.push(last);
      }
    } else {
      pr.probeSent = true;
    }
    return true;
  }

  // ------------------------------------------------------------------ Ready

  hasReady(): boolean {
    if (this.outstanding) return false;
    const s = this.softState();
    const h = this.hardState();
    return this.msgs.length > 0 || this.readStates.length > 0 || this.log.pendingSnapshot !== null
      || this.log.unstable().length > 0 || this.log.committed > this.log.applied
      || s.leader !== this.prevSoft.leader || s.role !== this.prevSoft.role || s.term !== this.prevSoft.term
      || h.term !== this.prevHard.term || h.vote !== this.prevHard.vote || h.commit !== this.prevHard.commit;
  }

  /** Take the next batch of work. Call advance(ready) after handling it before the next ready(). */
  ready(): Ready {
    if (this.outstanding) throw new ConsensusUsageError('previous Ready not advanced');
    const s = this.softState();
    const h = this.hardState();
    const softChanged = s.leader !== this.prevSoft.leader || s.role !== this.prevSoft.role || s.term !== this.prevSoft.term;
    const hardChanged = h.term !== this.prevHard.term || h.vote !== this.prevHard.vote || h.commit !== this.prevHard.commit;
    const snapshot = this.log.pendingSnapshot;
    const from = Math.max(this.log.applied, snapshot ? snapshot.meta.index : 0) + 1;
    const rd: Ready = {
      softState: softChanged ? s : null,
      hardState: hardChanged ? h : null,
      snapshot,
      entries: this.log.unstable(),
      messages: this.msgs,
      committed: this.log.slice(from, this.log.committed + 1),
      readStates: this.readStates,
    };
    this.msgs = [];
    this.readStates = [];
    this.prevSoft = s;
    this.prevHard = h;
    this.outstanding = rd;
    return rd;
  }

  /** The host flushed, sent and applied `rd`. */
  advance(rd: Ready): void {
    if (rd !== this.outstanding) throw new ConsensusUsageError('advance() of a Ready that is not outstanding');
    this.outstanding = null;
    if (rd.snapshot && this.log.pendingSnapshot === rd.snapshot) {
      this.log.pendingSnapshot = null;
      this.log.applied = Math.max(this.log.applied, rd.snapshot.meta.index);
    }
    const last = rd.entries.at(-1);
    // Only if that entry is still ours: the log may have been truncated while the host flushed.
    if (last && this.log.matchTerm(last.index, last.term) && last.index > this.log.stableTo) this.log.stableTo = last.index;
    const lastApplied = rd.committed.at(-1);
    if (lastApplied && lastApplied.index > this.log.applied) this.log.applied = lastApplied.index;
  }

  /** Test/debug: whether a Ready is handed out and not yet advanced. */
  get readyOutstanding(): boolean { return this.outstanding !== null; }
}
