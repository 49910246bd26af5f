// One fleet replica inside its trust boundary, as a deterministic state machine: step(input) -> outputs.
// It owns the firmware (behind its session gate), the Raft node, and every rule that keeps the guess
// limit across the fleet: sealing and chaining what the host stores, the token anchor and vote, the
// rejoin of a refused disk, forwarding to the leader, the read barrier, retries. The host only
// carries bytes and time: it performs the outputs (persist, compact, wipe, send, reply) and feeds
// back completions. Threads, processes and the simulator host this same class.
//
// The Ready contract, in order (docs/consensus.md):
//   1. seal and chain the Ready's snapshot, entries and hard state; output `persist`; the host writes
//      and flushes, then steps `persisted`. Term and vote also go to the token (a rolled-back disk
//      must never let us vote twice in a term);
//   2. write the token anchor over what is now on disk (one per Ready, whatever its size);
//   3. only then output its messages: no acknowledgement or vote leaves for state the anchor does not
//      cover, so a restart can always tell whether its disk still holds what it promised;
//   4. advance; hand the committed entries to the firmware (they are anchored: committed <= persisted);
//      answer reads once applied; then compaction.
// Pipelined: Ready N is applied while the host flushes N+1 (`resume` after `persist`).
//
// At start the disk is judged against the anchor: at or past it, the replica votes and acks at once;
// below it, forked from it, blank or unverifiable, it re-replicates as a non-voter and never votes
// before its commit passes the anchor (docs/fleet.md).
import { pack, unpack } from 'msgpackr';
import type { Token } from '../../hsm-adapter/token.ts';
import { BkvError } from '../../protocol/errors.ts';
import type { Opaque } from '../../protocol/opaque/index.ts';
import type { WireSuite } from '../../protocol/wire.ts';
import { emptyBuckets, observeInto, type ReplicaMetrics } from '../../protocol/metrics-wire.ts';
import {
  RaftNode, bootstrapStorage, decodeEntry, decodeHardState, decodeMessage, decodeSnapshot, emptyStorage,
  encodeEntry, encodeHardState, encodeMessage, encodeSnapshot,
  type ConfChange, type Entry, type HardState, type Message, type PersistedState, type Ready, type Rng, type Snapshot, type SoftState,
} from '../consensus/index.ts';
import { FirmwareError } from '../firmware/errors.ts';
import type { FirmwareInput, FirmwareOutput, Policy } from '../firmware/firmware.ts';
import { SessionGate } from '../firmware/gate.ts';
import { GENESIS_HASH, SealedStorage, chainHash, type ChainPoint } from '../firmware/storage.ts';
import { decodePeer, encodePeer, type PeerMessage } from './peer-wire.ts';

/** Token data object holding this replica's sealed {term, vote}. */
export const VOTE_LABEL = 'raft-vote';

/** The code of a proposal refused before it reached the log: nothing can commit from it, retry is free. */
export const NOT_APPENDED = 'NOT_APPENDED';

export type Outcome = { ok: true; body: Uint8Array } | { ok: false; code: string };

/** What the host read from its disk (all sealed by this replica's token; the core verifies it). */
export interface StoredDisk {
  snapshot?: Uint8Array;
  entries: Array<{ index: number; sealed: Uint8Array }>;
  hardState?: Uint8Array;
}

/** One atomic, flushed disk write. */
export interface DiskWrite {
  /** Replaces the whole stored log (a snapshot installed from the leader). */
  snapshot?: Uint8Array;
  /** Sealed entries; the first one replaces the stored entry at its index and everything after it. */
  entries: Array<{ index: number; sealed: Uint8Array }>;
  hardState?: Uint8Array;
}

export type ReplicaRole = 'leader' | 'follower' | 'candidate' | 'preCandidate' | 'rejoining' | 'down';

/** An operator's change: a configuration entry, or moving the leadership first (before removing the leader). */
export type MemberChange = ConfChange | { op: 'transfer'; node: string };

/** The configuration this replica holds (in effect once appended) and whether its entry is committed. */
export interface MemberView { voters: string[]; learners: string[]; committed: boolean; index: number }

export type CoreInput =
  /** The disk as the host read it; `unreadable` when it did not even read (a refused file). */
  | { kind: 'start'; now: number; disk: StoredDisk; unreadable?: string }
  | { kind: 'tick'; now: number }
  /** A device request that reached this replica; answered by a `reply` output with the same rid. */
  | { kind: 'request'; now: number; rid: number; user: string; body: Uint8Array }
  /** Bytes from an authenticated peer (the channel named `from`). */
  | { kind: 'peer'; now: number; from: string; bytes: Uint8Array }
  /** The host finished a `persist` output: written and flushed. */
  | { kind: 'persisted'; now: number; id: number }
  /** The host started the I/O of the outputs before `resume`: do the deferred work. */
  | { kind: 'resume'; now: number }
  /** A disk operation failed: the replica stops serving. */
  | { kind: 'diskFailed'; now: number; code: string; reason: string }
  /** An operator's membership change (add a learner, promote it, remove a member), on the leader. */
  | { kind: 'membership'; now: number; change: MemberChange };

export type CoreOutput =
  /** Write and flush, then step `persisted` with this id. Disk outputs are performed in order. */
  | { kind: 'persist'; id: number; write: DiskWrite }
  /** Replace entries up to `index` with this sealed snapshot (no completion needed; in order). */
  | { kind: 'compact'; index: number; snapshot: Uint8Array }
  /** Forget the stored log (a refused disk). */
  | { kind: 'wipe' }
  | { kind: 'send'; to: string; bytes: Uint8Array }
  | { kind: 'reply'; rid: number; outcome: Outcome }
  | { kind: 'health'; healthy: boolean; code: string; reason: string }
  | { kind: 'leader'; term: number }
  /** The role or the leader this replica follows changed (an operator's audit line, not a rule). */
  | { kind: 'role'; role: ReplicaRole; term: number; leader: string | null }
  | { kind: 'rejoined'; index: number }
  | { kind: 'log'; line: string }
  /** Step `resume` once the outputs before this one are under way. */
  | { kind: 'resume' }
  /** The answer to a membership input: proposed at `index` (it takes effect once committed), or why not. */
  | { kind: 'membership'; ok: true; index: number } | { kind: 'membership'; ok: false; code: string };

/** What the core needs of a firmware (a test may wrap the real gate to break it on purpose). */
export interface FirmwareLike {
  step(input: FirmwareInput): FirmwareOutput[];
  digest(): string;
  readonly appliedIndex: number;
  inspect(user: string): { state: string; used: number; limit: number; hasK: boolean } | undefined;
}

/**
 * Bugs the chaos checkers must catch, switched on one at a time by the mutation check
 * (test/vault/sim-mutations.test.ts, `bkv chaos sim|live --mutation`); ke2-before-commit lives in the
 * firmware. A host sets one only from the test-only BKV_TEST_MUTATION (`bkv chaos live`); every use is
 * a single guarded line.
 */
export const MUTATIONS = ['vote-while-rejoining', 'skip-anchor', 'apply-uncommitted', 'accept-forged-peer', 'ignore-fork', 'ke2-before-commit'] as const;
export type Mutation = (typeof MUTATIONS)[number];

/** Read-only windows for the simulator's oracle and checker (no effect on behaviour). */
export interface CoreObserver {
  /** An entry about to reach the firmware (configuration entries too, which it skips). */
  applying?(e: Entry): void;
  /** The same entry, once the firmware applied it. */
  applied?(e: Entry): void;
  /** A snapshot restored into the firmware. */
  restored?(index: number): void;
  /** The firmware proposed an entry (before the node takes it); `request` is the device request it serves, if any. */
  proposing?(entry: Uint8Array, request?: Uint8Array): void;
  /** The firmware replied to a request (before the host sees it). */
  replied?(requestId: number, user: string, request: Uint8Array, reply: Uint8Array): void;
}

export interface CoreConfig {
  id: string;
  /** The founding voters (used only when the disk is empty and this is the fleet's first start). */
  voters: readonly string[];
  token: Token;
  opaque: Partial<Record<WireSuite, Opaque>>;
  policy?: Partial<Policy>;
  /** The firmware's randomness. */
  rng: (n: number) => Uint8Array;
  raftRng: Rng;
  electionTick?: number;
  heartbeatTick?: number;
  /** How long a request waits for a leader that can serve it before NO_LEADER. */
  leaderWaitMs: number;
  /** How long a request forwarded to the leader may stay unanswered (then TIMEOUT). */
  forwardTtlMs?: number;
  /** How often a re-replicating replica repeats its rejoin announcement. */
  rejoinEveryMs: number;
  /** Receives the gate's inner replies (simulator oracle). */
  observeGate?: (requestId: number, inner: Uint8Array) => void;
  observer?: CoreObserver;
  wrapFirmware?: (gate: SessionGate) => FirmwareLike;
  mutation?: Mutation;
}

export class CoreInvariantError extends BkvError {
  constructor(message: string) { super('INVARIANT', message); }
}

function assert(cond: boolean, what: string): asserts cond {
  if (!cond) throw new CoreInvariantError(what);
}

/** A device request this replica holds: from a device (rid) or forwarded by a peer (from, fid). */
interface Req { rid?: number; from?: string; fid?: number; user: string; body: Uint8Array; deadline: number }

const BOOT_WRITE = 0;
const td = new TextDecoder();
const te = new TextEncoder();
const isVoteMessage = (m: Message) => m.type === 'vote' || m.type === 'preVote' || m.type === 'voteResp' || m.type === 'preVoteResp';

export class ReplicaCore {
  readonly gate: SessionGate;
  readonly firmware: FirmwareLike;
  private readonly sealed: SealedStorage;
  private node?: RaftNode;
  private phase: 'new' | 'booting' | 'running' | 'failed' = 'new';
  private now = 0;
  private out: CoreOutput[] = [];

  // --- storage bookkeeping
  private readonly hashes = new Map<number, Uint8Array>();
  private applied = 0;
  private booted?: PersistedState;
  private tokenTerm = 0;
  private tokenVote: string | null = null;
  private diskTerm = -1;
  private diskVote: string | null = null;
  private pendingHs?: HardState;
  private anchoredTo = 0;
  private anchoredHash?: Uint8Array;
  /**
   * What this instance believes the token's anchor is (null: none; 'foreign': one of another seal
   * domain, a solo vault's): anything else means a fork.
   */
  private expectAnchor: ChainPoint | null | 'foreign' = null;
  /** The sealed vote this instance last wrote. */
  private voteSealed?: Uint8Array;
  /** The sealed bytes of expectAnchor as the token held them when this instance wrote or checked it. */
  private anchorSealed?: Uint8Array;
  private nextWrite = 1;
  private inFlight?: { id: number; rd: Ready };
  private toApply?: Ready;
  private wantCompact?: { index: number; state: Uint8Array };

  // --- rejoin
  private rejoining = false;
  private floor = 0;
  /** The term at the floor (from the anchor), when the anchor records it: votes above it are safe. */
  private floorTerm?: number;
  private refusedFor = '';
  private diskNote = '';
  private lastAnnounce = -Infinity;
  private lastCorrection = -Infinity;

  // --- requests
  private soft: SoftState = { leader: null, role: 'follower', term: 0 };
  /**
   * When an authenticated message last came from each peer (this core's clock): what this replica
   * itself observes of the network, whatever the host claims about its links (fleet status).
   */
  private readonly lastHeard = new Map<string, number>();
  private health = { healthy: true, code: '', reason: '' };
  private parked: Req[] = [];
  private readonly waiting = new Map<number, Req>();
  private readonly proposals = new Map<number, { term: number; tag: number; at: number }>();
  /** Leader side: append-to-apply time of this instance's own proposals (metrics; never a decision). */
  private readonly commitBuckets = emptyBuckets();
  private readonly reads = new Map<string, { index: number; body: Uint8Array; req: Req }>();
  private readonly forwarded = new Map<number, { to: string; req: Req; expires: number }>();
  private readSeq = 0;
  private nextRequest = 1;
  private nextForward = 1;
  /** The firmware request being served right now, and the reply it gave at once (read barrier). */
  private serving?: { requestId: number; immediate?: { body: Uint8Array; hint?: string } };

  readonly stats = {
    readies: 0, flushes: 0, anchors: 0, sent: 0, filtered: 0, snapshotsInstalled: 0, compactions: 0, rereplicated: false,
    commitOnlyDeferred: 0, forwardedOut: 0, forwardedIn: 0, badPeer: 0, retries: 0, forgedPeer: 0,
  };

  constructor(private readonly c: CoreConfig) {
    this.gate = new SessionGate({
      replicaId: c.id, token: c.token, opaque: c.opaque, rng: c.rng, policy: c.policy, observe: c.observeGate,
      mutation: c.mutation === 'ke2-before-commit' ? c.mutation : undefined,
    });
    this.firmware = c.wrapFirmware ? c.wrapFirmware(this.gate) : this.gate;
    this.sealed = new SealedStorage(c.token, `${c.id}/raft`);
  }

  // ---------------------------------------------------------------- reading the core

  get id(): string { return this.c.id; }
  get raft(): RaftNode | undefined { return this.node; }
  get appliedIndex(): number { return this.applied; }
  get isRejoining(): boolean { return this.rejoining; }
  get isHealthy(): boolean { return this.health.healthy; }
  get healthState(): { healthy: boolean; code: string; reason: string } { return { ...this.health }; }
  /** Leading as far as the firmware knows: the node leads and its soft state reached the firmware. */
  get leading(): boolean { return this.soft.role === 'leader' && !!this.node?.isLeader; }

  /** Why this replica does not vote yet, in one line; '' when it votes. */
  get rejoinReason(): string {
    if (!this.rejoining) return '';
    const what = this.refusedFor === 'TAMPERED' ? 'disk refused (TAMPERED)' : 'disk below its anchor';
    const votes = this.floorTerm === undefined ? 'not voting' : `voting only for a replica that holds ${this.floor}`;
    return `ROLLED_BACK: ${what} at ${this.floor}; re-replicating, ${votes} until the fleet's commit passes ${this.floor} (waiting for a replica that holds it)`;
  }

  /** This core's part of the replica's metrics report (commit latency, applied effects). */
  metrics(): Pick<ReplicaMetrics, 'commit' | 'effects'> {
    return { commit: structuredClone(this.commitBuckets), effects: { ...this.gate.effects } };
  }

  status(): { role: ReplicaRole; term: number; commitIndex: number; lastIndex: number; appliedIndex: number; healthy: boolean; reason: string; leader: string | null; digest: string; heardMsAgo: Record<string, number>; members?: MemberView } {
    const n = this.node;
    const role: ReplicaRole = !n ? 'down' : this.rejoining ? 'rejoining' : n.softState().role;
    const h = this.health;
    const heardMsAgo: Record<string, number> = {};
    for (const [peer, at] of this.lastHeard) heardMsAgo[peer] = Math.max(0, this.now - at);
    return {
      role, term: n?.currentTerm ?? 0, commitIndex: n?.commitIndex ?? 0, lastIndex: n?.lastIndex ?? 0, appliedIndex: this.applied,
      healthy: h.healthy, leader: n?.leader ?? null, digest: this.firmware.digest(), heardMsAgo,
      ...(n ? { members: { voters: [...n.confState().voters], learners: [...n.confState().learners], committed: n.commitIndex >= n.confIndex, index: n.confIndex } } : {}),
      reason: !h.healthy ? `${h.code}: ${h.reason}` : this.rejoining && this.diskNote ? `${this.diskNote}; ${this.rejoinReason}` : this.rejoinReason,
    };
  }

  // ---------------------------------------------------------------- the step

  step(input: CoreInput): CoreOutput[] {
    return this.stepAll([input]);
  }

  /**
   * Several inputs in arrival order, then one Ready: how a host hands over what arrived in one turn
   * of its event loop, so that concurrent requests and acknowledgements share one seal, one disk
   * write and one anchor (group commit) instead of a Ready each.
   */
  stepAll(inputs: readonly CoreInput[]): CoreOutput[] {
    this.out = [];
    for (const input of inputs) {
      this.now = Math.max(this.now, input.now);
      try {
        this.input(input);
      } catch (e) {
        this.fail(e);
      }
    }
    try {
      if (this.phase === 'running') {
        this.serveParked();
        this.pump();
        this.checkInvariants();
      }
    } catch (e) {
      this.fail(e);
    }
    const out = this.out;
    this.out = [];
    return out;
  }

  private input(i: CoreInput): void {
    if (this.phase === 'failed') {
      if (i.kind === 'request') this.answer({ rid: i.rid, user: i.user, body: i.body, deadline: 0 }, { ok: false, code: this.health.code || 'UNHEALTHY' });
      return;
    }
    switch (i.kind) {
      case 'start': return this.start(i.disk, i.unreadable);
      case 'tick': return this.tick();
      case 'request': return this.request({ rid: i.rid, user: i.user, body: i.body, deadline: this.now + this.c.leaderWaitMs });
      case 'peer': return this.peer(i.from, i.bytes);
      case 'persisted': return this.persisted(i.id);
      case 'resume': return this.resume();
      case 'diskFailed': throw new BkvError(i.code, i.reason);
      case 'membership': return this.membership(i.change);
    }
  }

  // ---------------------------------------------------------------- start

  private start(disk: StoredDisk, unreadable?: string): void {
    assert(this.phase === 'new', 'started twice');
    this.runFw({ kind: 'leadership', leader: false });
    this.runFw({ kind: 'tick', now: this.now });
    this.readVote();
    let persisted: PersistedState;
    try {
      if (unreadable) throw new FirmwareError('TAMPERED', unreadable);
      persisted = this.load(disk);
    } catch (e0) {
      // Anything that opened and chained but does not decode as our Raft log is foreign data too.
      const e = e0 instanceof BkvError && e0.code === 'BAD_PEER_MESSAGE' ? new FirmwareError('TAMPERED', 'stored log is not a Raft log') : e0;
      const code = e instanceof BkvError ? e.code : '';
      if (code !== 'ROLLBACK_DETECTED' && code !== 'TAMPERED') throw e;
      // The host handed back a disk we cannot vouch for. Do not serve from it: forget it and fetch
      // the fleet's committed log again, as a non-voter, at least up to the anchored position.
      this.say(`stored log refused (${code}); re-replicating from peers`);
      if (unreadable) this.diskNote = unreadable;
      try {
        const a = this.sealed.readAnchor();
        this.expectAnchorAs(a ?? null);
        if (a) { this.floor = a.index; this.floorTerm = a.term; }
      } catch (e) {
        // An anchor that does not open (another seal domain) protects nothing here; a token that
        // fails to answer is another matter: without the floor this replica must not start at all.
        if ((e as { code?: string }).code !== 'TAMPERED') throw e;
        this.expectAnchorAs('foreign');
      }
      this.out.push({ kind: 'wipe' });
      this.refusedFor = code;
      // The token keeps the old anchor until the new log passes it: a crash while catching up is
      // refused again, and every acknowledgement sent meanwhile (all at or below it) stays covered.
      this.anchoredTo = this.floor;
      this.anchoredHash = undefined;
      this.stats.rereplicated = true;
      this.rejoining = true;
      this.hashes.clear();
      this.hashes.set(0, GENESIS_HASH);
      persisted = { ...emptyStorage(), hardState: { term: this.tokenTerm, vote: this.tokenVote, commit: 0 } };
    }
    if (this.booted) {
      // The founding configuration must be on disk before the node acts on it.
      const e = persisted.entries[0]!;
      const { sealed, hash } = this.sealed.sealEntry(e.index, GENESIS_HASH, encodeEntry(e));
      this.hashes.set(e.index, hash);
      this.booted = persisted;
      this.phase = 'booting';
      this.out.push({ kind: 'persist', id: BOOT_WRITE, write: { entries: [{ index: e.index, sealed }], hardState: this.sealHardState(persisted.hardState) } });
      return;
    }
    this.run(persisted);
  }

  private run(persisted: PersistedState): void {
    // A disk ahead of its anchor (a crash between the flush and the anchor write): those entries were
    // never acknowledged, but the node will treat them as persisted from its first message on, so
    // the anchor must cover them before it runs. (A founding member's first entry likewise.)
    const last = persisted.entries.at(-1);
    const head = last?.index ?? persisted.snapshot?.meta.index ?? 0;
    if (!this.rejoining && head > this.anchoredTo) this.anchor(head, last?.term ?? persisted.snapshot?.meta.term ?? 0);
    this.diskTerm = persisted.hardState.term;
    this.diskVote = persisted.hardState.vote;
    this.node = new RaftNode({
      id: this.c.id, storage: persisted, rng: this.c.raftRng, electionTick: this.c.electionTick ?? 10, heartbeatTick: this.c.heartbeatTick ?? 2,
    });
    this.phase = 'running';
    if (this.rejoining) {
      const floor = this.c.mutation === 'vote-while-rejoining' ? { index: 0, term: 0 } : this.floorTerm === undefined ? 'none' : { index: this.floor, term: this.floorTerm };
      this.node.restrictVotes(floor);
    }
    if (persisted.snapshot) {
      this.applied = persisted.snapshot.meta.index;
      this.runFw({ kind: 'restore', index: persisted.snapshot.meta.index, state: splitSnapData(persisted.snapshot.data).state });
      this.c.observer?.restored?.(this.applied);
    }
    this.say(`replica ${this.c.id} started${this.rejoining ? ` (${this.rejoinReason})` : ''}`);
    if (this.rejoining) this.announceRejoin();
  }

  /** Verify the sealed disk and turn it into what the node was flushed with. */
  private load(items: StoredDisk): PersistedState {
    const v = this.sealed.verify(items);
    this.anchoredTo = v.anchor?.index ?? 0;
    this.anchoredHash = v.anchor?.hash;
    this.expectAnchorAs(v.anchor ?? null);
    if (!v.snapshot && v.entries.length === 0 && !items.hardState) {
      if (v.anchor && v.anchor.index > 0) throw new FirmwareError('ROLLBACK_DETECTED', `empty disk but the token anchor is at ${v.anchor.index}`);
      // A founding member's first start: entry 1 is the initial configuration on every founder.
      const boot = bootstrapStorage(this.c.voters);
      this.hashes.set(0, GENESIS_HASH);
      const p = { ...boot, hardState: this.mergeVote(boot.hardState) };
      this.booted = p;
      return p;
    }
    let snapshot: Snapshot | null = null;
    let prev: Uint8Array = GENESIS_HASH;
    if (v.snapshot) {
      snapshot = decodeSnapshot(v.snapshot.state);
      if (snapshot.meta.index !== v.snapshot.index) throw new FirmwareError('TAMPERED', 'snapshot index mismatch');
      prev = v.snapshot.head;
    }
    const base = snapshot?.meta.index ?? 0;
    this.hashes.set(base, prev);
    const entries: Entry[] = [];
    for (const e of v.entries) {
      const re = decodeEntry(e.entry);
      if (re.index !== e.index) throw new FirmwareError('TAMPERED', `entry ${e.index} holds index ${re.index}`);
      prev = chainHash(prev, e.index, e.entry);
      this.hashes.set(e.index, prev);
      entries.push(re);
    }
    let hs: HardState = { term: 0, vote: null, commit: 0 };
    if (items.hardState) hs = decodeHardState(this.openSealed(items.hardState, 'hard state'));
    const last = entries.at(-1)?.index ?? base;
    if (hs.commit > last) throw new FirmwareError('TAMPERED', 'hard state commits past the stored log');
    // Paired with the write side: what was read back chains without a gap from the snapshot.
    assert(entries.every((e, i) => e.index === base + 1 + i), 'stored entries are not contiguous after verification');
    return { hardState: this.mergeVote({ ...hs, commit: Math.max(hs.commit, base) }), snapshot, entries };
  }

  private aad(what: string): Uint8Array {
    return te.encode(`bkv raft ${what} v1\0${this.sealed.replicaId}`);
  }

  private sealHardState(h: HardState): Uint8Array {
    return this.c.token.seal('record-key', encodeHardState(h), this.aad('hard state'));
  }

  private openSealed(sealed: Uint8Array, what: string): Uint8Array {
    try {
      return this.c.token.open('record-key', sealed, this.aad(what));
    } catch (e) {
      // Only a seal that does not open is the disk's fault; a token error (lost session, device
      // error) must not make the replica throw a good disk away.
      if ((e as { code?: string }).code !== 'SEAL_OPEN_FAILED') throw e;
      throw new FirmwareError('TAMPERED', `${what} does not open under this replica's seal`);
    }
  }

  private readVote(known?: Uint8Array): void {
    let raw: Uint8Array;
    try {
      raw = this.c.token.readData(VOTE_LABEL);
    } catch (e) {
      if ((e as { code?: string }).code === 'KEY_NOT_FOUND') return;
      throw e;
    }
    // The very bytes this instance wrote need no opening: same seal, same vote.
    if (known && sameBytes(raw, known)) return;
    const v = unpack(this.openSealed(raw, 'vote')) as unknown;
    if (!Array.isArray(v) || typeof v[0] !== 'number' || !(v[1] === null || typeof v[1] === 'string')) throw new FirmwareError('TAMPERED', 'vote record has a bad shape');
    this.tokenTerm = v[0];
    this.tokenVote = v[1];
  }

  /**
   * Two instances under one identity (a fork: the host runs a copy beside the replica) share its
   * token. Only this instance writes the vote and the anchor, so before each write they must read
   * back as it left them; otherwise another instance made promises in this identity's name, and
   * this one fails closed rather than vote twice in a term or acknowledge from a diverged disk.
   */
  private checkVoteNotForked(): void {
    if (this.c.mutation === 'ignore-fork') return;
    const before = { term: this.tokenTerm, vote: this.tokenVote };
    this.readVote(this.voteSealed);
    if (this.tokenTerm !== before.term || this.tokenVote !== before.vote) {
      throw new BkvError('FORKED', `another instance of replica ${this.c.id} wrote its vote (term ${this.tokenTerm}); this one stops`);
    }
  }

  private checkAnchorNotForked(): void {
    if (this.c.mutation === 'ignore-fork') return;
    const e = this.expectAnchor;
    let a: ChainPoint | null;
    let raw: Uint8Array | undefined;
    try {
      raw = this.sealed.readAnchorSealed();
      // The very bytes this instance wrote (or last checked) need no opening: same seal, same anchor.
      if (raw && this.anchorSealed && sameBytes(raw, this.anchorSealed)) return;
      a = raw ? this.sealed.openAnchor(raw) : null;
    } catch (err) {
      if ((err as { code?: string }).code === 'TAMPERED' && e === 'foreign') return; // still the one we found
      throw err;
    }
    if (a === null && e === null) return;
    if (a && e && e !== 'foreign' && a.index === e.index && sameBytes(a.hash, e.hash)) { this.anchorSealed = raw; return; }
    throw new BkvError('FORKED', `another instance of replica ${this.c.id} moved its token anchor (to ${a?.index ?? 'none'}); this one stops`);
  }

  /** What the token's anchor must read back as, and (when this instance wrote it) its sealed bytes. */
  private expectAnchorAs(a: ChainPoint | null | 'foreign', sealed?: Uint8Array): void {
    this.expectAnchor = a;
    this.anchorSealed = sealed;
  }

  /** The token's term/vote wins over an older disk: never vote twice in one term. */
  private mergeVote(h: HardState): HardState {
    if (this.tokenTerm > h.term) return { term: this.tokenTerm, vote: this.tokenVote, commit: h.commit };
    if (this.tokenTerm === h.term && h.vote === null) return { ...h, vote: this.tokenVote };
    return h;
  }

  // ---------------------------------------------------------------- time and peers

  private tick(): void {
    this.runFw({ kind: 'tick', now: this.now });
    for (const [fid, f] of this.forwarded) {
      if (f.expires > this.now) continue;
      this.forwarded.delete(fid);
      this.answer(f.req, { ok: false, code: 'TIMEOUT' });
    }
    if (this.phase !== 'running') return;
    // A re-replicating replica ticks too (its leader lease must expire), but its node never
    // campaigns and votes only above the floor (RaftNode.restrictVotes).
    if (this.rejoining && this.now - this.lastAnnounce >= this.c.rejoinEveryMs) this.announceRejoin();
    this.node!.tick();
  }

  /**
   * While re-replicating after a refused disk: tell the leader (or, knowing none, every voter) that
   * this replica's old acknowledgements are void, so it probes the real log end instead of trusting
   * a match index the lost disk made. Repeated until caught up (a message may be lost).
   */
  private announceRejoin(): void {
    this.lastAnnounce = this.now;
    const lead = this.node?.leader;
    const targets = lead ? [lead] : this.c.voters.filter((v) => v !== this.c.id);
    const lastIndex = this.node?.lastIndex ?? 0;
    for (const t of targets) this.send(t, { kind: 'rejoin', lastIndex });
  }

  private peer(from: string, bytes: Uint8Array): void {
    if (this.phase !== 'running') return;
    let m: PeerMessage;
    try {
      m = decodePeer(bytes);
    } catch {
      this.stats.badPeer++;
      return;
    }
    this.lastHeard.set(from, this.now);
    switch (m.kind) {
      case 'raft': {
        let rm: Message;
        try {
          rm = decodeMessage(m.bytes);
        } catch {
          this.stats.badPeer++;
          return;
        }
        // The channel vouches for the link, not for what the bytes claim: a message in another
        // replica's name (replayed, relayed, rewritten) would count a vote or an ack it never gave.
        if ((rm.from !== from || rm.to !== this.c.id) && this.c.mutation !== 'accept-forged-peer') { this.stats.forgedPeer++; return; }
        this.node!.step(rm);
        // A heartbeat commits only as far as this log is known to match the leader's (RaftNode's
        // verified prefix); one that asks for more means the leader counts acknowledgements this
        // log may not have (another instance of this identity made them, a disk that is gone, or
        // this incarnation's log is simply not checked yet): tell it how far we vouch, as a
        // rejoining replica does, so it probes instead of waiting forever.
        const vouched = this.node!.verifiedIndex;
        if (rm.type === 'heartbeat' && rm.commit > vouched && this.now - this.lastCorrection >= this.c.rejoinEveryMs) {
          this.lastCorrection = this.now;
          this.send(from, { kind: 'rejoin', lastIndex: vouched });
        }
        return;
      }
      case 'forward': {
        this.stats.forwardedIn++;
        const req: Req = { from, fid: m.id, user: m.user, body: m.body, deadline: this.now + this.c.leaderWaitMs };
        if (!this.health.healthy) return this.answer(req, { ok: false, code: this.health.code || 'UNHEALTHY' });
        if (!this.leading) return this.answer(req, { ok: false, code: 'NOT_LEADER' });
        this.parked.push(req);
        return;
      }
      case 'forwardReply': {
        const f = this.forwarded.get(m.id);
        if (!f || f.to !== from) return;
        this.forwarded.delete(m.id);
        if (m.ok) return this.answer(f.req, { ok: true, body: m.body });
        // Not processed there: safe to try again (here, or at the next leader) until the deadline.
        if (m.code === 'NOT_LEADER') { this.stats.retries++; this.parked.push(f.req); return; }
        return this.answer(f.req, { ok: false, code: m.code });
      }
      case 'rejoin': {
        // Its acknowledgements from before may cover entries its refused disk no longer has.
        const n = this.node!;
        if (!n.isLeader) return;
        const pr = n.status().progress?.get(from);
        if (!pr || pr.match <= m.lastIndex) return;
        if (n.resetPeer(from)) this.say(`${from} re-replicates from ${m.lastIndex}: forgot its old acknowledgements`);
        return;
      }
    }
  }

  private send(to: string, m: PeerMessage): void {
    this.out.push({ kind: 'send', to, bytes: encodePeer(m) });
  }

  /** Only the leader changes the configuration; a change is one entry, committed like any other. */
  private membership(change: MemberChange): void {
    if (this.phase !== 'running' || !this.leading) { this.out.push({ kind: 'membership', ok: false, code: 'NOT_LEADER' }); return; }
    if (change.op === 'transfer') {
      // The node checks the target is a voter; the transfer then runs on its own (timeoutNow).
      const t = this.node!.transferLeadership(change.node);
      this.out.push(t.ok ? { kind: 'membership', ok: true, index: this.node!.lastIndex } : { kind: 'membership', ok: false, code: t.error.code });
      return;
    }
    const r = this.node!.proposeConfChange(change);
    this.out.push(r.ok ? { kind: 'membership', ok: true, index: r.index } : { kind: 'membership', ok: false, code: r.error.code });
  }

  // ---------------------------------------------------------------- device requests

  private request(req: Req): void {
    if (!this.health.healthy) return this.answer(req, { ok: false, code: this.health.code || 'UNHEALTHY' });
    this.parked.push(req);
  }

  private answer(req: Req, o: Outcome): void {
    if (req.rid !== undefined) { this.out.push({ kind: 'reply', rid: req.rid, outcome: o }); return; }
    this.send(req.from!, o.ok ? { kind: 'forwardReply', id: req.fid!, ok: true, body: o.body } : { kind: 'forwardReply', id: req.fid!, ok: false, code: o.code });
  }

  /**
   * Every held request, after every input: the leader serves it once an entry of its own term
   * committed and everything committed is applied (a new leader's commit may lag its predecessor's);
   * a follower forwards it to the leader it knows; with none, it waits until its deadline.
   */
  private serveParked(): void {
    if (this.parked.length === 0) return;
    const held = this.parked;
    this.parked = [];
    const n = this.node!;
    for (const req of held) {
      if (!this.health.healthy) { this.answer(req, { ok: false, code: this.health.code || 'UNHEALTHY' }); continue; }
      if (this.leading) {
        if (n.termAt(n.commitIndex) === n.currentTerm && this.applied >= n.commitIndex) { this.serve(req); continue; }
      } else if (req.from !== undefined) {
        this.answer(req, { ok: false, code: 'NOT_LEADER' });
        continue;
      } else if (n.leader && n.leader !== this.c.id) {
        this.forward(n.leader, req);
        continue;
      }
      if (this.now > req.deadline) { this.answer(req, { ok: false, code: req.from !== undefined ? 'NOT_LEADER' : 'NO_LEADER' }); continue; }
      this.parked.push(req);
    }
  }

  private forward(to: string, req: Req): void {
    const fid = this.nextForward++;
    this.stats.forwardedOut++;
    this.forwarded.set(fid, { to, req, expires: this.now + (this.c.forwardTtlMs ?? (this.c.policy?.requestTtlMs ?? 15_000) + 2_000) });
    this.send(to, { kind: 'forward', id: fid, user: req.user, body: req.body });
  }

  /**
   * On the leader. Replies the firmware gives at once (Status, WrongPassword, Locked, errors: they
   * read replicated state without proposing) wait for a ReadIndex asked in the same step: so such a
   * reply is never older than the fleet's commit when it arrived, and a deposed leader never gives
   * one. Replies that follow a commit (KE2, Released, Registered...) leave when the firmware sees the
   * entry committed.
   */
  private serve(req: Req): void {
    const requestId = this.nextRequest++;
    this.waiting.set(requestId, req);
    this.runFw({ kind: 'tick', now: this.now });
    this.serving = { requestId };
    try {
      this.runFw({ kind: 'request', requestId, user: req.user, body: req.body });
    } finally {
      const s = this.serving;
      this.serving = undefined;
      const imm = s.immediate;
      if (imm) {
        if (imm.hint === NOT_APPENDED) { this.stats.retries++; this.parked.push(req); }
        else {
          const ctx = String(++this.readSeq);
          const r = this.node!.readIndex(te.encode(ctx));
          if (!r.ok) this.answer(req, { ok: false, code: 'UNAVAILABLE' });
          else this.reads.set(ctx, { index: Infinity, body: imm.body, req });
        }
      }
    }
  }

  // ---------------------------------------------------------------- the firmware

  private runFw(input: FirmwareInput): void {
    for (const o of this.firmware.step(input)) {
      switch (o.kind) {
        case 'reply': this.onFwReply(o.requestId, o.body, o.hint); break;
        case 'propose': this.propose(o.tag, o.entry); break;
        case 'snapshot':
          if (!this.wantCompact || this.wantCompact.index < o.index) this.wantCompact = { index: o.index, state: o.state };
          break;
        case 'health':
          this.health = { healthy: o.healthy, code: o.code, reason: o.reason };
          this.say(o.healthy ? 'healthy' : `UNHEALTHY ${o.code}: ${o.reason}`);
          this.out.push({ kind: 'health', healthy: o.healthy, code: o.code, reason: o.reason });
          break;
      }
    }
  }

  private onFwReply(requestId: number, body: Uint8Array, hint?: string): void {
    const req = this.waiting.get(requestId);
    this.waiting.delete(requestId);
    if (req) this.c.observer?.replied?.(requestId, req.user, req.body, body);
    if (this.serving?.requestId === requestId) { this.serving.immediate = { body, hint }; return; }
    if (!req) return;
    if (hint === NOT_APPENDED) { this.stats.retries++; this.parked.push(req); return; }
    this.answer(req, { ok: true, body });
  }

  private propose(tag: number, entry: Uint8Array): void {
    this.c.observer?.proposing?.(entry, this.serving ? this.waiting.get(this.serving.requestId)?.body : undefined);
    const r = this.node ? this.node.propose(entry) : undefined;
    // Refused before it reached the log: nothing can commit from it, so the request may be tried
    // again on the new leader. (Lost later means "appended, outcome unknown": NOT_LEADER.)
    if (!r || !r.ok) { this.runFw({ kind: 'proposalFailed', tag, code: NOT_APPENDED }); return; }
    this.proposals.set(r.index, { term: r.term, tag, at: this.now });
  }

  // ---------------------------------------------------------------- the Ready loop

  private pump(): void {
    const n = this.node!;
    for (;;) {
      if (this.inFlight || this.phase !== 'running') return;
      if (!n.hasReady()) {
        if (!this.toApply) return;
        const rd = this.toApply;
        this.toApply = undefined;
        this.apply(rd);
        this.serveParked();
        continue;
      }
      const rd = n.ready();
      // A snapshot replaces the chain hashes the previous Ready's anchor needs, and a role change
      // must reach the firmware after what was committed before it: apply the previous one first.
      if (this.toApply && (rd.snapshot || rd.softState)) { const p = this.toApply; this.toApply = undefined; this.apply(p); }
      const write = this.seal(rd);
      if (!write) { this.completed(rd); continue; }
      const id = this.nextWrite++;
      this.inFlight = { id, rd };
      this.out.push({ kind: 'persist', id, write });
      if (this.toApply) this.out.push({ kind: 'resume' });
      return;
    }
  }

  private resume(): void {
    if (this.phase !== 'running' || !this.toApply) return;
    const rd = this.toApply;
    this.toApply = undefined;
    this.apply(rd);
  }

  private persisted(id: number): void {
    if (this.phase === 'booting' && id === BOOT_WRITE) {
      const p = this.booted!;
      this.booted = undefined;
      return this.run(p);
    }
    const f = this.inFlight;
    assert(!!f && f.id === id, `persisted ${id} is not the write in flight`);
    this.inFlight = undefined;
    this.completed(f.rd);
  }

  /** Step 1: seal and chain; undefined when this Ready need not touch the disk. */
  private seal(rd: Ready): DiskWrite | undefined {
    this.stats.readies++;
    let snapshot: Uint8Array | undefined;
    if (rd.snapshot) {
      const { head } = splitSnapData(rd.snapshot.data);
      this.hashes.clear();
      this.hashes.set(rd.snapshot.meta.index, head);
      snapshot = this.sealed.sealSnapshot(rd.snapshot.meta.index, head, encodeSnapshot(rd.snapshot));
    }
    const entries: DiskWrite['entries'] = [];
    if (rd.entries.length > 0) {
      const first = rd.entries[0]!.index;
      assert(first > this.applied, `a Ready rewrites entry ${first}, already applied`);
      for (const k of [...this.hashes.keys()]) if (k >= first) this.hashes.delete(k);
      for (const e of rd.entries) {
        const prev = this.hashes.get(e.index - 1);
        assert(!!prev, `no chain hash before entry ${e.index}`);
        const { sealed, hash } = this.sealed.sealEntry(e.index, prev, encodeEntry(e));
        this.hashes.set(e.index, hash);
        entries.push({ index: e.index, sealed });
      }
    }
    // Raft's commit index is volatile state: a hard state whose term and vote are unchanged need
    // not be flushed before this Ready's messages (as etcd's MustSync). It rides with the next
    // write; a disk whose commit lags only makes a restart re-learn the commit from the leader.
    if (rd.hardState) this.pendingHs = rd.hardState;
    const mustSync = !!rd.hardState && (rd.hardState.term !== this.diskTerm || rd.hardState.vote !== this.diskVote);
    if (!snapshot && entries.length === 0 && !mustSync) {
      if (rd.hardState) this.stats.commitOnlyDeferred++;
      return undefined;
    }
    const h = this.pendingHs;
    this.pendingHs = undefined;
    if (h) { this.diskTerm = h.term; this.diskVote = h.vote; }
    this.stats.flushes++;
    return { snapshot, entries, hardState: h ? this.sealHardState(h) : undefined };
  }

  /** Steps 2 to 4, once the Ready is on disk. */
  private completed(rd: Ready): void {
    // Applied in order: the previous Ready's entries reach the firmware before this one's.
    if (this.toApply) { const p = this.toApply; this.toApply = undefined; this.apply(p); }
    const t = this.c.token;
    if (rd.hardState && (rd.hardState.term !== this.tokenTerm || rd.hardState.vote !== this.tokenVote)) {
      // A vote stands on the log this identity acknowledged: neither its vote nor its anchor may have moved under it.
      this.checkVoteNotForked();
      if (this.c.mutation !== 'skip-anchor') this.checkAnchorNotForked();
      const sealed = t.seal('record-key', pack([rd.hardState.term, rd.hardState.vote]), this.aad('vote'));
      t.writeData(VOTE_LABEL, sealed);
      this.voteSealed = sealed;
      this.tokenTerm = rd.hardState.term;
      this.tokenVote = rd.hardState.vote;
    }
    // 2. anchor what the disk now holds, before anything that promises it leaves
    const last = rd.entries.at(-1);
    if (last) this.anchor(last.index, last.term);
    else if (rd.snapshot) this.anchor(rd.snapshot.meta.index, rd.snapshot.meta.term);
    // 3. send
    for (const m of rd.messages) {
      // Defence in depth: while re-replicating, no campaign leaves, and no vote without a floor to judge it by.
      if (this.rejoining && isVoteMessage(m) && this.c.mutation !== 'vote-while-rejoining' && (m.type === 'vote' || m.type === 'preVote' || this.floorTerm === undefined)) { this.stats.filtered++; continue; }
      this.stats.sent++;
      this.send(m.to, { kind: 'raft', bytes: encodeMessage(m) });
    }
    if (rd.softState) this.onSoft(rd.softState);
    // 4. the node only needs applied for compaction bounds and the next committed slice; the
    // firmware gets these entries next (right away, or while the next Ready flushes).
    this.node!.advance(rd);
    this.toApply = rd;
    this.runCompaction();
  }

  /** The firmware gets the committed entries (anchored when persisted); reads are answered. */
  private apply(rd: Ready): void {
    const n = this.node!;
    if (rd.snapshot && rd.snapshot.meta.index > this.applied) {
      const idx = rd.snapshot.meta.index;
      this.runFw({ kind: 'restore', index: idx, state: splitSnapData(rd.snapshot.data).state });
      this.stats.snapshotsInstalled++;
      this.applied = idx;
      this.c.observer?.restored?.(idx);
    }
    let list = rd.committed;
    if (this.c.mutation === 'apply-uncommitted') list = [...list, ...rd.entries.filter((e) => e.index > (list.at(-1)?.index ?? this.applied))];
    const last = list.at(-1);
    if (last && this.c.mutation !== 'apply-uncommitted') {
      // What is applied was persisted and anchored first (committed <= anchored head).
      assert(last.index <= this.anchoredTo || (this.rejoining && last.index <= this.floor), `entry ${last.index} applied past the anchor at ${this.anchoredTo}`);
      assert(last.index <= n.commitIndex, `entry ${last.index} applied past the commit at ${n.commitIndex}`);
    }
    for (const e of list) {
      if (e.index <= this.applied) continue; // covered by a snapshot installed in this Ready
      assert(e.index === this.applied + 1, `applied ${e.index} after ${this.applied}`);
      this.applied = e.index;
      this.c.observer?.applying?.(e);
      if (e.type === 'normal') this.runFw({ kind: 'committed', index: e.index, entry: e.data });
      this.c.observer?.applied?.(e);
      const p = this.proposals.get(e.index);
      if (p) {
        this.proposals.delete(e.index);
        // Another term's entry took the index: our proposal is gone (an Attempt that did commit elsewhere stays charged).
        if (p.term !== e.term) this.runFw({ kind: 'proposalFailed', tag: p.tag, code: 'NOT_LEADER' });
        else observeInto(this.commitBuckets, Math.max(0, this.now - p.at) / 1000);
      }
    }
    for (const rs of rd.readStates) {
      const r = this.reads.get(td.decode(rs.ctx));
      if (r) r.index = rs.index;
    }
    for (const [ctx, r] of this.reads) {
      if (r.index <= this.applied) { this.reads.delete(ctx); this.answer(r.req, { ok: true, body: r.body }); }
    }
    if (this.rejoining && n.commitIndex >= this.floor && this.applied >= this.floor) {
      this.rejoining = false;
      n.restrictVotes(null);
      this.say(`caught up past the anchor at ${this.floor}: voting again`);
      this.out.push({ kind: 'rejoined', index: this.applied });
    }
  }

  /**
   * Move the token anchor to the persisted head `index`. It follows the head, also down when a new
   * leader replaced an uncommitted tail (the disk then holds the new head, and nothing committed was
   * lost: a committed entry is never replaced). While re-replicating below the refused disk's anchor,
   * that anchor stays: a crash meanwhile is refused again, and every acknowledgement sent meanwhile
   * is for an index below it.
   */
  private anchor(index: number, term: number): void {
    if (this.rejoining && index < this.floor) return;
    const hash = this.hashes.get(index);
    assert(!!hash, `no chain hash at the persisted head ${index}`);
    if (index === this.anchoredTo && this.anchoredHash && sameBytes(hash, this.anchoredHash)) return;
    if (this.c.mutation !== 'skip-anchor') {
      this.checkAnchorNotForked();
      const sealed = this.sealed.writeAnchor({ index, hash, term });
      this.expectAnchorAs({ index, hash, term }, sealed);
    }
    this.anchoredTo = index;
    this.anchoredHash = hash;
    this.stats.anchors++;
  }

  private onSoft(s: SoftState): void {
    const prev = this.soft;
    this.soft = s;
    const n = this.node!;
    if (s.role !== 'leader') {
      // Proposals and reads of a lost leadership: their outcome is unknown; the firmware answers
      // TIMEOUT/UNAVAILABLE and an attempt that commits later stays charged.
      for (const [i, p] of [...this.proposals]) if (i > n.commitIndex) { this.proposals.delete(i); this.runFw({ kind: 'proposalFailed', tag: p.tag, code: 'NOT_LEADER' }); }
      for (const [ctx, r] of [...this.reads]) { this.reads.delete(ctx); this.answer(r.req, { ok: false, code: 'UNAVAILABLE' }); }
    }
    if (prev.leader !== s.leader) {
      // Requests forwarded to a leader we no longer follow: their outcome is unknown (an attempt
      // that reached its log stays charged), so answer now rather than at the timeout.
      for (const [fid, f] of [...this.forwarded]) {
        if (f.to === s.leader) continue;
        this.forwarded.delete(fid);
        this.answer(f.req, { ok: false, code: 'LEADER_CHANGED' });
      }
    }
    if ((prev.role === 'leader') !== (s.role === 'leader')) this.runFw({ kind: 'leadership', leader: s.role === 'leader' });
    if (s.role === 'leader' && prev.role !== 'leader') {
      this.say(`leader in term ${s.term}`);
      this.out.push({ kind: 'leader', term: s.term });
    }
    if (s.role !== prev.role || s.leader !== prev.leader) this.out.push({ kind: 'role', role: s.role, term: s.term, leader: s.leader });
  }

  private runCompaction(): void {
    const want = this.wantCompact;
    if (!want) return;
    const st = this.node!.status();
    if (want.index <= st.firstIndex - 1) { this.wantCompact = undefined; return; }
    if (want.index > st.applied) return; // not applied by the node yet: next round
    const head = this.hashes.get(want.index);
    if (!head) return;
    this.wantCompact = undefined;
    const snap = this.node!.compact(want.index, pack([head, want.state]));
    this.out.push({ kind: 'compact', index: want.index, snapshot: this.sealed.sealSnapshot(want.index, head, encodeSnapshot(snap)) });
    for (const k of [...this.hashes.keys()]) if (k < want.index) this.hashes.delete(k);
    this.stats.compactions++;
  }

  // ---------------------------------------------------------------- invariants and failure

  private checkInvariants(): void {
    const n = this.node!;
    assert(this.applied <= n.commitIndex || this.c.mutation === 'apply-uncommitted', `applied ${this.applied} > committed ${n.commitIndex}`);
    assert(n.commitIndex <= n.lastIndex, `committed ${n.commitIndex} > last ${n.lastIndex}`);
    assert(this.firmware.appliedIndex <= this.applied, `firmware applied ${this.firmware.appliedIndex} > ${this.applied}`);
    for (const i of this.proposals.keys()) { assert(i > this.applied, `proposal at ${i} still pending after applying ${this.applied}`); break; }
  }

  private fail(e: unknown): void {
    const err = e instanceof BkvError ? e : new BkvError('STORE_WRITE_FAILED', `replica failed: ${(e as Error)?.message ?? 'unknown'}`);
    if (this.phase === 'failed') return;
    this.phase = 'failed';
    this.say(`failed: ${err.code}: ${err.message}`);
    try {
      for (const p of this.proposals.values()) this.runFw({ kind: 'proposalFailed', tag: p.tag, code: err.code });
      this.proposals.clear();
      this.runFw({ kind: 'fault', code: err.code, reason: err.message });
    } catch { /* the firmware is down too: the answers below still go out */ }
    if (this.health.healthy) {
      this.health = { healthy: false, code: err.code, reason: err.message };
      this.out.push({ kind: 'health', healthy: false, code: err.code, reason: err.message });
    }
    for (const r of this.reads.values()) this.answer(r.req, { ok: false, code: 'UNAVAILABLE' });
    this.reads.clear();
    for (const req of this.waiting.values()) this.answer(req, { ok: false, code: 'UNAVAILABLE' });
    this.waiting.clear();
    for (const req of this.parked.splice(0)) this.answer(req, { ok: false, code: this.health.code || 'UNHEALTHY' });
    for (const f of this.forwarded.values()) this.answer(f.req, { ok: false, code: 'UNAVAILABLE' });
    this.forwarded.clear();
  }

  private say(line: string): void { this.out.push({ kind: 'log', line }); }
}

function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

function splitSnapData(data: Uint8Array): { head: Uint8Array; state: Uint8Array } {
  const v = unpack(data) as unknown;
  if (!Array.isArray(v) || !(v[0] instanceof Uint8Array) || v[0].length !== 32 || !(v[1] instanceof Uint8Array)) {
    throw new FirmwareError('TAMPERED', 'snapshot data has a bad shape');
  }
  return { head: new Uint8Array(v[0]), state: new Uint8Array(v[1]) };
}
