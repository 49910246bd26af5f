// ReplicatedLog over Raft: the firmware sees "entry committed at index", exactly as over SoloLog;
// RaftNode decides commitment. Host duties of the Ready contract (docs/consensus.md), in order:
//   1. seal and chain the Ready's snapshot, entries and hard state; one LMDB transaction; flush.
//      Term and vote also go to the token (a rolled-back disk must never let us vote twice in a term);
//   2. write the token anchor over what is now on disk: the last persisted index and its chain hash
//      (group commit: one anchor per Ready, whatever its size);
//   3. only then send its messages: no acknowledgement or vote leaves for state the anchor does not
//      cover, so a restart can always tell whether its disk still holds what it promised;
//   4. advance; hand the committed entries to the firmware (they are anchored: committed <= persisted);
//      answer ReadIndex reads once applied; then run the firmware's compaction requests.
//
// At start the disk is judged against the anchor: at or past it, the replica votes and acks at once
// (a whole-fleet start, a rolling restart, a majority restarted one by one all elect); below it,
// forked from it, blank or unverifiable, it re-replicates from the fleet as a non-voter and never
// votes before its commit passes the anchor (docs/fleet.md).
// Entries are sealed as the codec's canonical bytes and chained from genesis over committed order,
// so every replica computes the same hash at a committed index and a snapshot can carry the chain
// head from the leader to a follower.
import { pack, unpack } from 'msgpackr';
import type { Token } from '../../hsm-adapter/token.ts';
import { BkvError } from '../../protocol/errors.ts';
import { LogError, NOT_APPENDED, type CommittedEntry, type LogHandlers, type ReplicatedLog } from '../agent/log.ts';
import type { RaftStore } from '../agent/raft-store.ts';
import {
  NotLeaderError, RaftNode, bootstrapStorage, decodeEntry, decodeHardState, decodeMessage, decodeSnapshot, emptyStorage,
  encodeEntry, encodeHardState, encodeMessage, encodeSnapshot,
  type Entry, type HardState, type Message, type PersistedState, type Ready, type Rng, type Snapshot, type SoftState,
} from '../consensus/index.ts';
import { FirmwareError } from '../firmware/errors.ts';
import { GENESIS_HASH, chainHash, type SealedStorage } from '../firmware/storage.ts';

/** Token data object holding this replica's sealed {term, vote}. */
export const VOTE_LABEL = 'raft-vote';

export interface RaftLogOptions {
  id: string;
  /** The founding voters (used only when the disk is empty and this is the fleet's first start). */
  voters: readonly string[];
  token: Token;
  store: RaftStore;
  sealed: SealedStorage;
  rng: Rng;
  electionTick: number;
  heartbeatTick: number;
  /** Encoded consensus message to a peer (the caller wraps, seals and sends it). */
  send(to: string, bytes: Uint8Array): void;
  /** When the stored log fails verification (rollback, tampering): wipe it and re-replicate instead of failing. */
  reReplicateOnRollback: boolean;
  onSoftState?(s: SoftState): void;
  onRejoined?(index: number): void;
  log?(line: string): void;
}

interface Waiter { term: number; resolve(i: number): void; reject(e: unknown): void }
interface Read { index: number; resolve(): void; reject(e: unknown): void }

export class RaftLog implements ReplicatedLog {
  node!: RaftNode;
  private handlers?: LogHandlers;
  private readonly hashes = new Map<number, Uint8Array>();
  private applied = 0;
  private readonly waiting = new Map<number, Waiter>();
  private readonly reads = new Map<string, Read>();
  private readSeq = 0;
  private appliedWaiters: Read[] = [];
  private pumping = false;
  private again = false;
  private dead?: BkvError;
  private wantCompact?: { index: number; state: Uint8Array };
  private booting = false;
  private tokenTerm = 0;
  private tokenVote: string | null = null;
  /** Re-replicating after a refused disk: no ticks, no votes, until the commit passes `floor`. */
  private rejoining = false;
  /** The anchor the refused disk fell short of: everything this replica ever acknowledged is at or below it. */
  private floor = 0;
  /** Why the disk was refused (ROLLBACK_DETECTED, TAMPERED), for status. */
  private refusedFor = '';
  /** The position the token anchor holds (read at start, or written by this process). */
  private anchoredTo = 0;
  private anchoredHash?: Uint8Array;
  /** Term and vote of the hard state on disk; a change of commit alone is written with the next write. */
  private diskTerm = -1;
  private diskVote: string | null = null;
  private pendingHs?: HardState;
  readonly stats = {
    readies: 0, flushes: 0, anchors: 0, sent: 0, filtered: 0, snapshotsInstalled: 0, compactions: 0, rereplicated: false,
    commitOnlyDeferred: 0, persistMs: 0, anchorMs: 0, sealMs: 0, applyMs: 0,
  };

  constructor(private readonly o: RaftLogOptions) {}

  get isRejoining(): boolean { return this.rejoining; }
  /** Why this replica does not vote yet, in one line; '' when it votes. */
  get rejoinReason(): string {
    if (!this.rejoining) return '';
    const what = this.refusedFor === 'TAMPERED' ? 'disk refused (TAMPERED)' : 'disk below its anchor';
    return `ROLLED_BACK: ${what} at ${this.floor}; re-replicating, not voting until the fleet's commit passes ${this.floor} (waiting for a replica that holds it)`;
  }
  get appliedIndex(): number { return this.applied; }
  get failed(): BkvError | undefined { return this.dead; }

  async start(handlers: LogHandlers): Promise<void> {
    this.handlers = handlers;
    this.readVote();
    const items = this.o.store.readAll();
    let persisted: PersistedState;
    try {
      persisted = this.load(items);
    } catch (e0) {
      // Anything that opened and chained but does not decode as our Raft log is foreign data too.
      const e = e0 instanceof BkvError && e0.code === 'BAD_PEER_MESSAGE' ? new FirmwareError('TAMPERED', 'stored log is not a Raft log') : e0;
      const code = e instanceof BkvError ? e.code : '';
      if (!this.o.reReplicateOnRollback || (code !== 'ROLLBACK_DETECTED' && code !== 'TAMPERED')) throw e;
      // The host handed back a disk we cannot vouch for. Do not serve from it: forget it and fetch
      // the fleet's committed log again, as a non-voter, at least up to the anchored position.
      this.o.log?.(`stored log refused (${code}); re-replicating from peers`);
      try {
        const a = this.o.sealed.readAnchor();
        if (a) this.floor = a.index;
      } catch { /* an anchor that does not open (another seal domain) protects nothing here */ }
      await this.o.store.wipe();
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
    if (this.booting) {
      // The founding configuration must be on disk before the node acts on it.
      this.booting = false;
      const e = persisted.entries[0]!;
      const { sealed, hash } = this.o.sealed.sealEntry(e.index, GENESIS_HASH, encodeEntry(e));
      this.hashes.set(e.index, hash);
      await this.o.store.write({ entries: [{ index: e.index, sealed }], hardState: this.o.token.seal('record-key', encodeHardState(persisted.hardState), this.aad('hard state')) });
    }
    // A disk ahead of its anchor (a crash between the flush and the anchor write): those entries were
    // never acknowledged, but the node will treat them as persisted from its first message on, so
    // the anchor must cover them before it runs. (A founding member's first entry likewise.)
    const head = persisted.entries.at(-1)?.index ?? persisted.snapshot?.meta.index ?? 0;
    if (!this.rejoining && head > this.anchoredTo) this.anchor(head);
    this.diskTerm = persisted.hardState.term;
    this.diskVote = persisted.hardState.vote;
    this.node = new RaftNode({
      id: this.o.id, storage: persisted, rng: this.o.rng, electionTick: this.o.electionTick, heartbeatTick: this.o.heartbeatTick,
    });
    if (persisted.snapshot) {
      this.applied = persisted.snapshot.meta.index;
      handlers.restore({ index: persisted.snapshot.meta.index, state: splitSnapData(persisted.snapshot.data).state });
    }
    this.kick();
  }

  /** Verify the sealed disk and turn it into what the node was flushed with. */
  private load(items: ReturnType<RaftStore['readAll']>): PersistedState {
    const v = this.o.sealed.verify(items);
    this.anchoredTo = v.anchor?.index ?? 0;
    this.anchoredHash = v.anchor?.hash;
    if (!v.snapshot && v.entries.length === 0 && !items.hardState) {
      if (v.anchor && v.anchor.index > 0) throw new FirmwareError('ROLLBACK_DETECTED', `empty disk but the token anchor is at ${v.anchor.index}`);
      // A founding member's first start: entry 1 is the initial configuration on every founder.
      const boot = bootstrapStorage(this.o.voters);
      this.booting = true;
      this.hashes.set(0, GENESIS_HASH);
      return { ...boot, hardState: this.mergeVote(boot.hardState) };
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
    if (items.hardState) {
      const plain = this.openSealed(items.hardState, 'hard state');
      hs = decodeHardState(plain);
    }
    const last = entries.at(-1)?.index ?? base;
    if (hs.commit > last) throw new FirmwareError('TAMPERED', 'hard state commits past the stored log');
    return { hardState: this.mergeVote({ ...hs, commit: Math.max(hs.commit, base) }), snapshot, entries };
  }

  private aad(what: string): Uint8Array {
    return new TextEncoder().encode(`bkv raft ${what} v1\0${this.o.sealed.replicaId}`);
  }

  private openSealed(sealed: Uint8Array, what: string): Uint8Array {
    try {
      return this.o.token.open('record-key', sealed, this.aad(what));
    } catch {
      throw new FirmwareError('TAMPERED', `${what} does not open under this replica's seal`);
    }
  }

  private readVote(): void {
    let raw: Uint8Array;
    try {
      raw = this.o.token.readData(VOTE_LABEL);
    } catch (e) {
      if ((e as { code?: string }).code === 'KEY_NOT_FOUND') return;
      throw e;
    }
    const v = unpack(this.openSealed(raw, 'vote')) as unknown;
    if (!Array.isArray(v) || typeof v[0] !== 'number' || !(v[1] === null || typeof v[1] === 'string')) throw new FirmwareError('TAMPERED', 'vote record has a bad shape');
    this.tokenTerm = v[0];
    this.tokenVote = v[1];
  }

  /** The token's term/vote wins over an older disk: never vote twice in one term. */
  private mergeVote(h: HardState): HardState {
    if (this.tokenTerm > h.term) return { term: this.tokenTerm, vote: this.tokenVote, commit: h.commit };
    if (this.tokenTerm === h.term && h.vote === null) return { ...h, vote: this.tokenVote };
    return h;
  }

  // ---------------------------------------------------------------- inputs

  tick(): void {
    if (this.dead || !this.node || this.rejoining) return;
    this.node.tick();
    this.kick();
  }

  /** An authenticated peer's consensus message (bytes as the codec encoded them). */
  receive(bytes: Uint8Array): void {
    if (this.dead || !this.node) return;
    let m: Message;
    try {
      m = decodeMessage(bytes);
    } catch {
      this.o.log?.('refused a malformed consensus message');
      return;
    }
    this.node.step(m);
    this.kick();
  }

  propose(entry: Uint8Array): Promise<number> {
    if (this.dead) return Promise.reject(this.dead);
    if (!this.node) return Promise.reject(new LogError('LOG_NOT_STARTED', 'propose before start'));
    const r = this.node.propose(entry);
    // Refused before it reached the log: nothing can commit from it, so the host may safely try the
    // request again on the new leader. (A NotLeaderError later means "appended, outcome unknown".)
    if (!r.ok) return Promise.reject(r.error.code === 'NOT_LEADER' ? new LogError(NOT_APPENDED, 'proposal refused: not the leader') : r.error);
    this.kick();
    return new Promise((resolve, reject) => this.waiting.set(r.index, { term: r.term, resolve, reject }));
  }

  /**
   * ReadIndex: resolves once a quorum confirmed this replica still leads and it has applied what
   * was committed when the read was asked. Rejects (NOT_LEADER) if it stops leading first.
   */
  read(): Promise<void> {
    if (this.dead) return Promise.reject(this.dead);
    const ctx = String(++this.readSeq);
    const r = this.node.readIndex(new TextEncoder().encode(ctx));
    if (!r.ok) return Promise.reject(r.error);
    this.kick();
    return new Promise((resolve, reject) => this.reads.set(ctx, { index: Infinity, resolve, reject }));
  }

  /** Resolves once the firmware has applied `index` (rejects if the log fails first). */
  whenApplied(index: number): Promise<void> {
    if (this.dead) return Promise.reject(this.dead);
    if (this.applied >= index) return Promise.resolve();
    return new Promise((resolve, reject) => this.appliedWaiters.push({ index, resolve, reject }));
  }

  compact(index: number, state: Uint8Array): Promise<void> {
    if (this.dead) return Promise.reject(this.dead);
    if (!this.wantCompact || this.wantCompact.index < index) this.wantCompact = { index, state };
    this.kick();
    return Promise.resolve();
  }

  /**
   * Leader: a replica re-replicating after a refused disk says its log ends at `lastIndex`. If this
   * leader counts it for more (acks its old disk made, or stale ones still in flight), forget them
   * and probe its real log end. Idempotent: an announcement that matches the leader's view is ignored.
   */
  peerRejoins(id: string, lastIndex: number): boolean {
    if (!this.node?.isLeader) return false;
    const pr = this.node.status().progress?.get(id);
    if (!pr || pr.match <= lastIndex) return false;
    const ok = this.node.resetPeer(id);
    if (ok) this.kick();
    return ok;
  }

  private checkCaughtUp(): void {
    if (!this.rejoining) return;
    if (this.node.commitIndex >= this.floor && this.applied >= this.floor) {
      this.rejoining = false;
      this.o.log?.(`caught up past the anchor at ${this.floor}: voting again`);
      this.o.onRejoined?.(this.applied);
    }
  }

  /** Runs `fn` while no Ready is being persisted (a consistent moment for copying the disk). */
  async exclusive(fn: () => void): Promise<void> {
    while (this.pumping) await new Promise((r) => setTimeout(r, 1));
    this.pumping = true;
    try {
      fn();
    } finally {
      this.pumping = false;
      this.kick();
    }
  }

  async close(): Promise<void> {
    this.dead ??= new LogError('LOG_CLOSED', 'log closed');
    this.failAll(this.dead);
    while (this.pumping) await new Promise((r) => setTimeout(r, 2));
  }

  // ---------------------------------------------------------------- the Ready loop

  private kick(): void {
    if (this.pumping) { this.again = true; return; }
    this.pumping = true;
    setImmediate(() => void this.pump());
  }

  private async pump(): Promise<void> {
    try {
      do {
        this.again = false;
        // Pipelined: Ready N+1 is sealed and handed to LMDB first, then Ready N is applied (token
        // anchor, firmware) while LMDB flushes N+1 on its own thread. Each Ready is still persisted
        // before its messages leave, applied in order, and anchored before anything can reply from it.
        let toApply: Ready | undefined;
        while (!this.dead && this.node.hasReady()) {
          const rd = this.node.ready();
          // A snapshot replaces the chain hashes the previous Ready's anchor needs, and a role change
          // must reach the firmware after what was committed before it: apply the previous one first.
          if (toApply && (rd.snapshot || rd.softState)) { this.apply(toApply); toApply = undefined; }
          const persisted = this.persist(rd);
          if (toApply) { this.apply(toApply); toApply = undefined; }
          await persisted;
          if (this.dead) break;
          // The node only needs applied for compaction bounds and the next committed slice; the
          // firmware gets these entries right after (next turn of this loop, or below).
          this.node.advance(rd);
          toApply = rd;
          await this.runCompaction();
        }
        if (toApply && !this.dead) this.apply(toApply);
      } while (this.again && !this.dead);
    } catch (e) {
      this.fail(e);
    } finally {
      this.pumping = false;
    }
  }

  /** Steps 1 and 2 of the Ready contract: persist and flush, then send. */
  private async persist(rd: Ready): Promise<void> {
    this.stats.readies++;
    const t0 = performance.now();
    // 1. persist and flush
    let snapWrite: Uint8Array | undefined;
    if (rd.snapshot) {
      const { head } = splitSnapData(rd.snapshot.data);
      this.hashes.clear();
      this.hashes.set(rd.snapshot.meta.index, head);
      snapWrite = this.o.sealed.sealSnapshot(rd.snapshot.meta.index, head, encodeSnapshot(rd.snapshot));
    }
    const entries: Array<{ index: number; sealed: Uint8Array }> = [];
    if (rd.entries.length > 0) {
      const first = rd.entries[0]!.index;
      for (const k of [...this.hashes.keys()]) if (k >= first) this.hashes.delete(k);
      for (const e of rd.entries) {
        const prev = this.hashes.get(e.index - 1);
        if (!prev) throw new LogError('CHAIN_GAP', `no chain hash before entry ${e.index}`);
        const { sealed, hash } = this.o.sealed.sealEntry(e.index, prev, encodeEntry(e));
        this.hashes.set(e.index, hash);
        entries.push({ index: e.index, sealed });
      }
    }
    // Raft's commit index is volatile state: a hard state whose term and vote are unchanged need
    // not be flushed before this Ready's messages (as etcd's MustSync). It rides with the next
    // write; a disk whose commit lags only makes a restart re-learn the commit from the leader.
    if (rd.hardState) this.pendingHs = rd.hardState;
    const mustSync = !!rd.hardState && (rd.hardState.term !== this.diskTerm || rd.hardState.vote !== this.diskVote);
    if (rd.hardState && !mustSync && !snapWrite && entries.length === 0) this.stats.commitOnlyDeferred++;
    if (snapWrite || entries.length > 0 || mustSync) {
      const h = this.pendingHs;
      this.pendingHs = undefined;
      const hs = h ? this.o.token.seal('record-key', encodeHardState(h), this.aad('hard state')) : undefined;
      const t1 = performance.now();
      this.stats.sealMs += t1 - t0;
      await this.o.store.write({ snapshot: snapWrite, entries, hardState: hs });
      this.stats.persistMs += performance.now() - t1;
      this.stats.flushes++;
      if (h) { this.diskTerm = h.term; this.diskVote = h.vote; }
    }
    if (rd.hardState && (rd.hardState.term !== this.tokenTerm || rd.hardState.vote !== this.tokenVote)) {
      this.o.token.writeData(VOTE_LABEL, this.o.token.seal('record-key', pack([rd.hardState.term, rd.hardState.vote]), this.aad('vote')));
      this.tokenTerm = rd.hardState.term;
      this.tokenVote = rd.hardState.vote;
    }
    if (this.dead) return;
    // 2. anchor what the disk now holds, before anything that promises it leaves
    const head = entries.length > 0 ? rd.entries.at(-1)!.index : rd.snapshot ? rd.snapshot.meta.index : undefined;
    if (head !== undefined) this.anchor(head);
    // 3. send
    for (const m of rd.messages) {
      if (this.rejoining && (m.type === 'vote' || m.type === 'preVote' || m.type === 'voteResp' || m.type === 'preVoteResp')) {
        this.stats.filtered++;
        continue;
      }
      this.stats.sent++;
      this.o.send(m.to, encodeMessage(m));
    }
    if (rd.softState) this.onSoft(rd.softState);
  }

  /** Step 4: the firmware gets the committed entries (anchored when persisted); reads and waiters. */
  private apply(rd: Ready): void {
    const t2 = performance.now();
    if (rd.snapshot) {
      const idx = rd.snapshot.meta.index;
      this.handlers!.restore({ index: idx, state: splitSnapData(rd.snapshot.data).state });
      this.stats.snapshotsInstalled++;
      this.applied = Math.max(this.applied, idx);
    }
    if (rd.committed.length > 0) {
      const last = rd.committed.at(-1)!;
      // Invariant: what is applied was persisted and anchored first (committed <= anchored head).
      if (last.index > this.anchoredTo && !(this.rejoining && last.index <= this.floor)) throw new LogError('ANCHOR_BEHIND', `entry ${last.index} applied past the anchor at ${this.anchoredTo}`);
      const normal: CommittedEntry[] = rd.committed.filter((e) => e.type === 'normal').map((e) => ({ index: e.index, entry: e.data }));
      if (normal.length > 0) this.handlers!.committed(normal);
      this.applied = last.index;
      for (const e of rd.committed) {
        const w = this.waiting.get(e.index);
        if (!w) continue;
        this.waiting.delete(e.index);
        if (e.term === w.term) w.resolve(e.index);
        else w.reject(new NotLeaderError(this.node.leader));
      }
    }
    for (const rs of rd.readStates) {
      const r = this.reads.get(new TextDecoder().decode(rs.ctx));
      if (r) r.index = rs.index;
    }
    for (const [ctx, r] of this.reads) {
      if (r.index <= this.applied) { this.reads.delete(ctx); r.resolve(); }
    }
    if (this.appliedWaiters.length > 0) {
      const keep: Read[] = [];
      for (const w of this.appliedWaiters) if (w.index <= this.applied) w.resolve(); else keep.push(w);
      this.appliedWaiters = keep;
    }
    this.checkCaughtUp();
    this.stats.applyMs += performance.now() - t2;
  }

  /**
   * Move the token anchor to the persisted head `index`. It follows the head, also down when a new
   * leader replaced an uncommitted tail (the disk then holds the new head, and nothing committed was
   * lost: a committed entry is never replaced). While re-replicating below the refused disk's anchor,
   * that anchor stays: a crash meanwhile is refused again, and every acknowledgement sent meanwhile
   * is for an index below it.
   */
  private anchor(index: number): void {
    if (this.rejoining && index < this.floor) return;
    const hash = this.hashes.get(index);
    if (!hash) throw new LogError('CHAIN_GAP', `no chain hash at the persisted head ${index}`);
    if (index === this.anchoredTo && this.anchoredHash && Buffer.compare(hash, this.anchoredHash) === 0) return;
    const t = performance.now();
    this.o.sealed.writeAnchor({ index, hash });
    this.stats.anchorMs += performance.now() - t;
    this.anchoredTo = index;
    this.anchoredHash = hash;
    this.stats.anchors++;
  }

  private onSoft(s: SoftState): void {
    if (s.role !== 'leader') {
      // Proposals and reads of a lost leadership: their outcome is unknown; the firmware answers
      // TIMEOUT/UNAVAILABLE and an attempt that commits later stays charged.
      const err = new NotLeaderError(s.leader);
      for (const [i, w] of this.waiting) if (i > this.node.commitIndex) { this.waiting.delete(i); w.reject(err); }
      for (const [ctx, r] of this.reads) { this.reads.delete(ctx); r.reject(err); }
    }
    this.o.onSoftState?.(s);
  }

  private async runCompaction(): Promise<void> {
    const want = this.wantCompact;
    if (!want || this.dead) return;
    this.wantCompact = undefined;
    const st = this.node.status();
    if (want.index <= st.firstIndex - 1 || want.index > st.applied) {
      if (want.index > st.applied) this.wantCompact = want; // not applied by the node yet: next round
      return;
    }
    const head = this.hashes.get(want.index);
    if (!head) return;
    const snap = this.node.compact(want.index, pack([head, want.state]));
    await this.o.store.compact(want.index, this.o.sealed.sealSnapshot(want.index, head, encodeSnapshot(snap)));
    for (const k of [...this.hashes.keys()]) if (k < want.index) this.hashes.delete(k);
    this.stats.compactions++;
  }

  private fail(e: unknown): void {
    const err = e instanceof BkvError ? e : new LogError('STORE_WRITE_FAILED', `raft log failed: ${(e as Error)?.message ?? 'unknown'}`);
    if (this.dead) return;
    this.dead = err;
    this.failAll(err);
    this.handlers?.failed(err);
  }

  private failAll(err: BkvError): void {
    for (const w of this.waiting.values()) w.reject(err);
    this.waiting.clear();
    for (const r of this.reads.values()) r.reject(err);
    this.reads.clear();
    for (const w of this.appliedWaiters.splice(0)) w.reject(err);
  }
}

function splitSnapData(data: Uint8Array): { head: Uint8Array; state: Uint8Array } {
  const v = unpack(data) as unknown;
  if (!Array.isArray(v) || !(v[0] instanceof Uint8Array) || v[0].length !== 32 || !(v[1] instanceof Uint8Array)) {
    throw new FirmwareError('TAMPERED', 'snapshot data has a bad shape');
  }
  return { head: new Uint8Array(v[0]), state: new Uint8Array(v[1]) };
}
