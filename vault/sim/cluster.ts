// A deterministic test cluster: the real RaftNode driven in one thread by a seeded scheduler in
// virtual time. Every source of nondeterminism (message delay, loss, duplication, disk latency,
// election jitter, fault choice) is drawn from one seeded generator, so a seed replays a run
// exactly and the trace hash proves it.
//
// The host contract is enforced here as the real agent must: a Ready's snapshot, entries and hard
// state reach "disk" (the durable store) after a simulated flush delay, and only then are its
// messages sent and its committed entries applied. A crash loses an unflushed Ready entirely.

import { sha256 } from '@noble/hashes/sha2.js';
import { bytesToHex } from '@noble/hashes/utils.js';
import {
  CodecError, RaftNode, SeededRng, bootstrapStorage, decodeMessage, emptyStorage, encodeMessage,
  type Entry, type HardState, type Message, type NodeId, type PersistedState, type Ready, type Snapshot,
} from '../consensus/index.ts';
import { Checker } from './checker.ts';
import { KvApp, decodeCommand, encodeCommand, type KvCommand } from './kv.ts';

export interface NetConfig {
  minDelayMs: number;
  maxDelayMs: number;
  dropRate: number;
  dupRate: number;
}

export interface ClusterOptions {
  readonly seed: number;
  /** Founding voters. */
  readonly voters: readonly NodeId[];
  readonly tickMs?: number;
  readonly electionTick?: number;
  readonly heartbeatTick?: number;
  readonly maxMsgEntries?: number;
  readonly maxInflight?: number;
  readonly net?: Partial<NetConfig>;
  readonly diskMinMs?: number;
  readonly diskMaxMs?: number;
  /** Compact after this many entries applied since the last snapshot (0: never). */
  readonly snapshotEvery?: number;
  /** false: replicas tick only when the test calls tick(); elections happen only by campaign(). */
  readonly autoTick?: boolean;
}

export type OpKind = 'incr' | 'put' | 'read';
export interface ClientOp {
  readonly id: number;
  readonly kind: OpKind;
  readonly key: string;
  readonly value?: string;
  /** The replica the client talked to, and that replica's incarnation. */
  readonly node: NodeId;
  readonly gen: number;
  readonly invokedAt: number;
  index?: number;
  status: 'pending' | 'ok';
  result?: number | string | undefined;
  completedAt?: number;
}

/** What a replica has flushed: the only thing that survives its crash. */
export interface DurableState {
  hardState: HardState;
  snapshot: Snapshot | null;
  entries: Entry[];
}

interface Replica {
  readonly id: NodeId;
  durable: DurableState;
  node: RaftNode | null;
  app: KvApp | null;
  gen: number;
  lastSnapIndex: number;
  pendingReads: { opId: number; index: number }[];
}

type Event =
  | { kind: 'tick'; id: NodeId; gen: number }
  | { kind: 'flushed'; id: NodeId; gen: number; ready: Ready }
  | { kind: 'deliver'; from: NodeId; to: NodeId; bytes: Uint8Array };

interface Scheduled { at: number; seq: number; ev: Event }

export class EventQueue {
  private h: Scheduled[] = [];
  get size(): number { return this.h.length; }
  private less(a: Scheduled, b: Scheduled): boolean { return a.at < b.at || (a.at === b.at && a.seq < b.seq); }
  push(x: Scheduled): void {
    const h = this.h; h.push(x);
    let i = h.length - 1;
    while (i > 0) { const p = (i - 1) >> 1; if (!this.less(h[i]!, h[p]!)) break; [h[i], h[p]] = [h[p]!, h[i]!]; i = p; }
  }
  peek(): Scheduled | undefined { return this.h[0]; }
  pop(): Scheduled | undefined {
    const h = this.h; const top = h[0]; const last = h.pop();
    if (h.length > 0 && last) {
      h[0] = last; let i = 0;
      for (;;) {
        const l = 2 * i + 1, r = l + 1; let m = i;
        if (l < h.length && this.less(h[l]!, h[m]!)) m = l;
        if (r < h.length && this.less(h[r]!, h[m]!)) m = r;
        if (m === i) break; [h[i], h[m]] = [h[m]!, h[i]!]; i = m;
      }
    }
    return top;
  }
}

const td = new TextEncoder();

export class SimCluster {
  readonly rng: SeededRng;
  readonly checker = new Checker();
  readonly history: ClientOp[] = [];
  now = 0;
  /** Test hook: return false to drop a message (applied at delivery, after partitions; heal() keeps it). */
  filter: ((m: Message, now: number) => boolean) | null = null;
  readonly net: NetConfig;
  /** Delivered, dropped and duplicated message counts. */
  readonly counts = { delivered: 0, dropped: 0, duplicated: 0, flushes: 0, lostFlushes: 0, malformed: 0 };

  private readonly opts: Required<Omit<ClusterOptions, 'net' | 'voters' | 'seed'>>;
  private readonly replicas = new Map<NodeId, Replica>();
  private readonly q = new EventQueue();
  private seq = 0;
  private readonly nodeRng: SeededRng;
  private readonly netRng: SeededRng;
  private readonly trace = sha256.create();
  private groups: Map<NodeId, number> | null = null;
  private readonly oneWay = new Set<string>();
  private readonly linkDelay = new Map<string, [number, number]>();
  private nextOpId = 1;
  /** Paused replicas (a stopped process: no ticks, no flush completion, inbound messages queue up). */
  private readonly paused = new Map<NodeId, { from: NodeId; bytes: Uint8Array }[]>();

  constructor(opts: ClusterOptions) {
    this.rng = new SeededRng(opts.seed);
    this.nodeRng = this.rng.fork();
    this.netRng = this.rng.fork();
    this.opts = {
      tickMs: opts.tickMs ?? 10,
      electionTick: opts.electionTick ?? 10,
      heartbeatTick: opts.heartbeatTick ?? 2,
      maxMsgEntries: opts.maxMsgEntries ?? 64,
      maxInflight: opts.maxInflight ?? 8,
      diskMinMs: opts.diskMinMs ?? 1,
      diskMaxMs: opts.diskMaxMs ?? 3,
      snapshotEvery: opts.snapshotEvery ?? 0,
      autoTick: opts.autoTick ?? true,
    };
    this.net = { minDelayMs: 1, maxDelayMs: 10, dropRate: 0, dupRate: 0, ...opts.net };
    for (const id of opts.voters) this.addReplica(id, bootstrapStorage(opts.voters));
  }

  // ---------------------------------------------------------------- replicas

  private addReplica(id: NodeId, st: PersistedState): void {
    if (this.replicas.has(id)) throw new Error(`replica ${id} exists`);
    const durable: DurableState = { hardState: st.hardState, snapshot: st.snapshot, entries: [...st.entries] };
    const r: Replica = { id, durable, node: null, app: null, gen: 0, lastSnapIndex: 0, pendingReads: [] };
    this.replicas.set(id, r);
    this.start(r);
  }

  /** A fresh replica with an empty disk; it joins once a leader adds it (as a learner first). */
  addNode(id: NodeId): void { this.addReplica(id, emptyStorage()); }

  private start(r: Replica): void {
    r.gen++;
    const d = r.durable;
    r.node = new RaftNode({
      id: r.id,
      storage: { hardState: d.hardState, snapshot: d.snapshot, entries: [...d.entries] },
      rng: this.nodeRng.fork(),
      electionTick: this.opts.electionTick,
      heartbeatTick: this.opts.heartbeatTick,
      maxMsgEntries: this.opts.maxMsgEntries,
      maxInflight: this.opts.maxInflight,
    });
    r.app = d.snapshot ? KvApp.restore(d.snapshot.data) : new KvApp();
    r.lastSnapIndex = d.snapshot?.meta.index ?? 0;
    r.pendingReads = [];
    this.checker.onRestore(r.id, r.app.applied);
    this.traceNote(`start ${r.id} ${r.gen}`);
    const phase = this.nodeRng.int(this.opts.tickMs) + 1;
    if (this.opts.autoTick) this.schedule(phase, { kind: 'tick', id: r.id, gen: r.gen });
    this.pump(r);
  }

  ids(): NodeId[] { return [...this.replicas.keys()]; }
  upIds(): NodeId[] { return this.ids().filter((id) => this.replicas.get(id)!.node !== null); }
  node(id: NodeId): RaftNode | null { return this.rep(id).node; }
  app(id: NodeId): KvApp | null { return this.rep(id).app; }
  durable(id: NodeId): DurableState { return this.rep(id).durable; }
  isUp(id: NodeId): boolean { return this.rep(id).node !== null; }
  private rep(id: NodeId): Replica {
    const r = this.replicas.get(id);
    if (!r) throw new Error(`no replica ${id}`);
    return r;
  }

  /** The up replica that believes it leads the highest term (null if none). */
  leader(): NodeId | null {
    let best: RaftNode | null = null;
    for (const r of this.replicas.values()) {
      if (r.node?.isLeader && (!best || r.node.currentTerm > best.currentTerm)) best = r.node;
    }
    return best?.id ?? null;
  }

  /** Kill the process: memory and any unflushed Ready are lost; the durable store stays. */
  crash(id: NodeId): void {
    const r = this.rep(id);
    this.paused.delete(id);
    if (!r.node) return;
    r.node = null;
    r.app = null;
    r.gen++;
    this.traceNote(`crash ${id}`);
  }

  /** Stop a replica's process without killing it (GC pause, SIGSTOP, a hung host). */
  pause(id: NodeId): void {
    if (!this.paused.has(id)) this.paused.set(id, []);
    this.traceNote(`pause ${id}`);
  }

  /** Let it run again: it sees everything that queued up meanwhile, in arrival order. */
  resume(id: NodeId): void {
    const held = this.paused.get(id);
    if (!held) return;
    this.paused.delete(id);
    this.traceNote(`resume ${id}`);
    for (const h of held) this.schedule(0, { kind: 'deliver', from: h.from, to: id, bytes: h.bytes });
  }

  restart(id: NodeId): void {
    const r = this.rep(id);
    if (r.node) return;
    this.start(r);
  }

  // ---------------------------------------------------------------- network faults

  /** Split into groups; replicas in no listed group form one more group together. */
  partition(...groups: NodeId[][]): void {
    const g = new Map<NodeId, number>();
    groups.forEach((grp, i) => grp.forEach((id) => g.set(id, i + 1)));
    this.groups = g;
    this.traceNote(`partition ${JSON.stringify(groups)}`);
  }
  isolate(id: NodeId): void { this.partition([id]); }
  /** Drop everything from `from` to `to` (one-way). */
  blockLink(from: NodeId, to: NodeId): void { this.oneWay.add(`${from}>${to}`); this.traceNote(`block ${from}>${to}`); }
  unblockLink(from: NodeId, to: NodeId): void { this.oneWay.delete(`${from}>${to}`); }
  setLinkDelay(from: NodeId, to: NodeId, minMs: number, maxMs: number): void { this.linkDelay.set(`${from}>${to}`, [minMs, maxMs]); }
  heal(): void {
    for (const id of [...this.paused.keys()]) this.resume(id);
    this.groups = null;
    this.oneWay.clear();
    this.linkDelay.clear();
    this.traceNote('heal');
  }

  canTalk(from: NodeId, to: NodeId): boolean {
    if (this.oneWay.has(`${from}>${to}`)) return false;
    if (this.groups) return (this.groups.get(from) ?? 0) === (this.groups.get(to) ?? 0);
    return true;
  }

  // ---------------------------------------------------------------- scheduler

  private schedule(delay: number, ev: Event): void {
    this.q.push({ at: this.now + Math.max(0, Math.floor(delay)), seq: this.seq++, ev });
  }

  private traceNote(s: string): void { this.trace.update(td.encode(`${this.now}|${s}\n`)); }

  /** Hash of everything that happened so far: equal seeds give equal hashes. */
  traceHash(): string { return bytesToHex(this.trace.clone().digest()); }

  /** Run one event; false when nothing is scheduled. */
  stepOnce(): boolean {
    const x = this.q.pop();
    if (!x) return false;
    this.now = x.at;
    const ev = x.ev;
    if (ev.kind === 'tick') {
      const r = this.replicas.get(ev.id)!;
      if (r.gen !== ev.gen || !r.node) return true;
      if (this.paused.has(r.id)) { this.schedule(this.opts.tickMs, ev); return true; }
      r.node.tick();
      this.after(r);
      this.schedule(this.opts.tickMs, ev);
    } else if (ev.kind === 'flushed') {
      const r = this.replicas.get(ev.id)!;
      if (r.gen !== ev.gen || !r.node) { this.counts.lostFlushes++; return true; }
      if (this.paused.has(r.id)) { this.schedule(this.opts.tickMs, ev); return true; }
      this.onFlushed(r, ev.ready);
    } else {
      this.deliver(ev.from, ev.to, ev.bytes);
    }
    return true;
  }

  runFor(ms: number): void {
    const end = this.now + ms;
    for (;;) {
      const top = this.q.peek();
      if (!top || top.at > end) break;
      this.stepOnce();
    }
    this.now = end;
  }

  /** Run until `pred` holds (checked after each event) or `maxMs` passes. */
  runUntil(pred: () => boolean, maxMs: number): boolean {
    const end = this.now + maxMs;
    if (pred()) return true;
    for (;;) {
      const top = this.q.peek();
      if (!top || top.at > end) { this.now = Math.max(this.now, end); return pred(); }
      this.stepOnce();
      if (pred()) return true;
    }
  }

  /** Run until some up replica leads, then return it. */
  waitLeader(maxMs = 5_000): NodeId {
    if (!this.runUntil(() => this.leader() !== null, maxMs)) throw new Error(`no leader within ${maxMs} ms`);
    return this.leader()!;
  }

  // ---------------------------------------------------------------- the host loop

  private after(r: Replica): void {
    if (r.node) this.checker.observe(r.node, this.now);
    this.pump(r);
  }

  private pump(r: Replica): void {
    const n = r.node;
    if (!n || !n.hasReady()) return;
    const rd = n.ready();
    const d = this.opts.diskMinMs + this.nodeRng.int(this.opts.diskMaxMs - this.opts.diskMinMs + 1);
    this.schedule(d, { kind: 'flushed', id: r.id, gen: r.gen, ready: rd });
  }

  private persist(r: Replica, rd: Ready): void {
    const d = r.durable;
    if (rd.snapshot) { d.snapshot = rd.snapshot; d.entries = []; }
    if (rd.entries.length > 0) {
      const base = d.snapshot?.meta.index ?? 0;
      const first = rd.entries[0]!.index;
      if (first > base + d.entries.length + 1 || first <= base) throw new Error(`${r.id}: Ready entries not contiguous with the stored log`);
      d.entries.length = first - base - 1;
      d.entries.push(...rd.entries);
    }
    if (rd.hardState) d.hardState = rd.hardState;
    this.counts.flushes++;
  }

  private onFlushed(r: Replica, rd: Ready): void {
    const n = r.node!;
    // 1. flush, 2. send, 3. apply, 4. advance: the Ready contract.
    this.persist(r, rd);
    for (const m of rd.messages) this.send(m);
    if (rd.snapshot) {
      r.app = KvApp.restore(rd.snapshot.data);
      r.lastSnapIndex = rd.snapshot.meta.index;
      this.checker.onRestore(r.id, r.app.applied);
    }
    for (const e of rd.committed) this.apply(r, e);
    for (const rs of rd.readStates) {
      const opId = Number(new TextDecoder().decode(rs.ctx));
      r.pendingReads.push({ opId, index: rs.index });
    }
    this.serveReads(r);
    n.advance(rd);
    this.maybeCompact(r);
    this.after(r);
  }

  private apply(r: Replica, e: Entry): void {
    const app = r.app!;
    this.checker.onApply(r.id, e, this.now);
    this.traceNote(`apply ${r.id} ${e.index} ${e.term}`);
    if (e.type !== 'normal') { app.skip(e.index); return; }
    const result = app.apply(e.index, e.data);
    const cmd = decodeCommand(e.data);
    const op = this.history[cmd.opId - 1];
    if (op && op.status === 'pending' && op.node === r.id && op.gen === r.gen) {
      op.status = 'ok';
      op.result = op.kind === 'incr' ? result : undefined;
      op.completedAt = this.now;
    }
  }

  private serveReads(r: Replica): void {
    const app = r.app!;
    r.pendingReads = r.pendingReads.filter((p) => {
      if (p.index > app.applied) return true;
      const op = this.history[p.opId - 1];
      if (op && op.status === 'pending' && op.gen === r.gen) {
        op.status = 'ok';
        op.result = app.counter(op.key);
        op.completedAt = this.now;
      }
      return false;
    });
  }

  private maybeCompact(r: Replica): void {
    const every = this.opts.snapshotEvery;
    const app = r.app!;
    if (every <= 0 || app.applied - r.lastSnapIndex < every) return;
    // A snapshot from the leader may have overtaken the state machine while this Ready was flushing.
    if (app.applied <= r.node!.status().firstIndex - 1) return;
    const snap = r.node!.compact(app.applied, app.snapshot());
    r.durable.snapshot = snap;
    r.durable.entries = r.durable.entries.filter((e) => e.index > snap.meta.index);
    r.lastSnapIndex = snap.meta.index;
  }

  private send(m: Message): void {
    this.checkFlushedBeforeSend(m);
    const bytes = encodeMessage(m);
    if (this.net.dropRate > 0 && this.netRng.float() < this.net.dropRate) { this.counts.dropped++; return; }
    const copies = this.net.dupRate > 0 && this.netRng.float() < this.net.dupRate ? 2 : 1;
    if (copies === 2) this.counts.duplicated++;
    const [lo, hi] = this.linkDelay.get(`${m.from}>${m.to}`) ?? [this.net.minDelayMs, this.net.maxDelayMs];
    for (let i = 0; i < copies; i++) {
      this.schedule(lo + this.netRng.int(hi - lo + 1), { kind: 'deliver', from: m.from, to: m.to, bytes });
    }
  }

  /** The Ready contract, checked on every outgoing message against what is on disk. */
  private checkFlushedBeforeSend(m: Message): void {
    const d = this.rep(m.from).durable;
    const bad = (why: string): void => this.checker.note(`t=${this.now}: ${m.from} sent ${m.type} before flushing ${why}`);
    if (m.type !== 'preVote' && m.type !== 'preVoteResp' && m.term > d.hardState.term) bad(`term ${m.term}`);
    if (m.type === 'voteResp' && !m.reject && d.hardState.vote !== m.to) bad(`its vote for ${m.to}`);
    if (m.type === 'appendResp' && !m.reject) {
      const last = (d.snapshot?.meta.index ?? 0) + d.entries.length;
      if (m.index > last) bad(`entries up to ${m.index}`);
    }
  }

  private deliver(from: NodeId, to: NodeId, bytes: Uint8Array): void {
    const r = this.replicas.get(to);
    if (!r?.node || !this.canTalk(from, to)) { this.counts.dropped++; return; }
    const held = this.paused.get(to);
    if (held) { held.push({ from, bytes }); return; }
    let m: Message;
    try {
      m = decodeMessage(bytes);
    } catch (e) {
      // What a real host does with a malformed peer message: drop it, count it, carry on.
      if (e instanceof CodecError) { this.counts.malformed++; return; }
      throw e;
    }
    if (m.from !== from) { this.counts.malformed++; return; } // the transport authenticated `from`
    if (this.filter && !this.filter(m, this.now)) { this.counts.dropped++; return; }
    this.counts.delivered++;
    this.trace.update(td.encode(`${this.now}|d|${to}|`));
    this.trace.update(bytes);
    r.node.step(m);
    this.after(r);
  }

  /** Inject raw bytes as if `from` had sent them to `to` (forged/garbled peer traffic). */
  injectRaw(from: NodeId, to: NodeId, bytes: Uint8Array): void {
    this.schedule(0, { kind: 'deliver', from, to, bytes });
  }

  // ---------------------------------------------------------------- host-driven actions

  /** Tick a replica by hand (for autoTick: false). */
  tick(id: NodeId, n = 1): void {
    const r = this.rep(id);
    for (let i = 0; i < n && r.node; i++) { r.node.tick(); this.after(r); }
  }

  campaign(id: NodeId): void { const r = this.rep(id); r.node?.campaign(); this.after(r); }
  transferLeadership(from: NodeId, to: NodeId): boolean {
    const r = this.rep(from);
    const res = r.node?.transferLeadership(to);
    this.after(r);
    return res?.ok ?? false;
  }
  /** Propose a raw command at `id` (must lead); returns the proposal result. */
  proposeAt(id: NodeId, data: Uint8Array): ReturnType<RaftNode['propose']> {
    const r = this.rep(id);
    if (!r.node) throw new Error(`${id} is down`);
    const res = r.node.propose(data);
    this.after(r);
    return res;
  }
  proposeConfChange(id: NodeId, cc: Parameters<RaftNode['proposeConfChange']>[0]): ReturnType<RaftNode['proposeConfChange']> {
    const r = this.rep(id);
    if (!r.node) throw new Error(`${id} is down`);
    const res = r.node.proposeConfChange(cc);
    this.after(r);
    return res;
  }

  // ---------------------------------------------------------------- clients

  private newOp(kind: OpKind, key: string, node: NodeId, value?: string): ClientOp {
    const op: ClientOp = { id: this.nextOpId++, kind, key, value, node, gen: this.rep(node).gen, invokedAt: this.now, status: 'pending' };
    this.history.push(op);
    return op;
  }

  /** A client write sent to the current leader; null if no leader is known (not invoked). */
  write(kind: 'incr' | 'put', key: string, value = '', at?: NodeId): ClientOp | null {
    const id = at ?? this.leader();
    if (id === null || !this.rep(id).node) return null;
    const r = this.rep(id);
    const opId = this.nextOpId;
    const cmd: KvCommand = kind === 'incr' ? { op: 'incr', opId, key } : { op: 'put', opId, key, value };
    const res = r.node!.propose(encodeCommand(cmd));
    if (!res.ok) { this.after(r); return null; }
    const op = this.newOp(kind, key, id, kind === 'put' ? value : undefined);
    op.index = res.index;
    this.after(r);
    return op;
  }

  incr(key: string): ClientOp | null { return this.write('incr', key); }
  put(key: string, value: string): ClientOp | null { return this.write('put', key, value); }

  /** A linearizable read of counter `key` through ReadIndex at the leader. */
  read(key: string, at?: NodeId): ClientOp | null {
    const id = at ?? this.leader();
    if (id === null || !this.rep(id).node) return null;
    const r = this.rep(id);
    const res = r.node!.readIndex(td.encode(String(this.nextOpId)));
    if (!res.ok) return null;
    const op = this.newOp('read', key, id);
    this.after(r);
    return op;
  }

  // ---------------------------------------------------------------- checks

  /** Heal everything, restart nothing, run until all up replicas applied the same index. */
  quiesce(maxMs = 10_000): boolean {
    this.heal();
    this.net.dropRate = 0;
    this.net.dupRate = 0;
    return this.runUntil(() => {
      const up = this.upIds().map((id) => this.rep(id));
      const l = this.leader();
      if (!l) return false;
      const ln = this.rep(l).node!;
      const c = ln.commitIndex;
      const conf = ln.confState();
      const members = up.filter((r) => conf.voters.includes(r.id) || conf.learners.includes(r.id));
      return ln.lastIndex === c && members.every((r) => r.app!.applied === c && r.node!.commitIndex === c && r.node!.lastIndex === c);
    }, maxMs);
  }

  /** Record convergence violations (digests of all up replicas must match). */
  checkConverged(): void {
    const m = new Map<NodeId, { applied: number; digest: string }>();
    const l = this.leader();
    const conf = l ? this.rep(l).node!.confState() : null;
    for (const id of this.upIds()) {
      const r = this.rep(id);
      // Non-members (removed or never added) are not expected to follow the log; a removed
      // replica may never even learn it was removed.
      if (conf && !conf.voters.includes(id) && !conf.learners.includes(id)) continue;
      m.set(id, { applied: r.app!.applied, digest: r.app!.digest() });
    }
    this.checker.checkConverged(m, this.now);
  }

  /**
   * Client-visible checks: acknowledged writes are durable (in the final state), counter increments
   * are linearizable (acked results are distinct and respect real-time order), reads see every
   * increment acknowledged before they were invoked and none that was invoked after they returned.
   */
  checkHistory(finalApp: KvApp): void {
    const incrs = this.history.filter((o) => o.kind === 'incr');
    const byKey = new Map<string, ClientOp[]>();
    for (const o of incrs) { const a = byKey.get(o.key) ?? []; a.push(o); byKey.set(o.key, a); }
    for (const [key, ops] of byKey) {
      const acked = ops.filter((o) => o.status === 'ok');
      const finalV = finalApp.counter(key);
      if (finalV < acked.length) this.checker.note(`key ${key}: ${acked.length} acked incrs but final value ${finalV}`);
      if (finalV > ops.length) this.checker.note(`key ${key}: final value ${finalV} exceeds ${ops.length} invoked incrs`);
      const seen = new Set<number>();
      for (const o of acked) {
        if (seen.has(o.result as number)) this.checker.note(`key ${key}: two incrs returned ${String(o.result)}`);
        seen.add(o.result as number);
      }
      for (const a of acked) for (const b of acked) {
        if (a.completedAt! < b.invokedAt && (a.result as number) >= (b.result as number)) {
          this.checker.note(`key ${key}: op ${a.id} (=${String(a.result)}) finished before op ${b.id} (=${String(b.result)}) began`);
        }
      }
    }
    for (const rd of this.history.filter((o) => o.kind === 'read' && o.status === 'ok')) {
      const ops = byKey.get(rd.key) ?? [];
      const before = ops.filter((o) => o.status === 'ok' && o.completedAt! < rd.invokedAt).length;
      const possible = ops.filter((o) => o.invokedAt < rd.completedAt!).length;
      const v = rd.result as number;
      if (v < before) this.checker.note(`read ${rd.id} of ${rd.key} = ${v} misses ${before - v} acknowledged incrs (stale read)`);
      if (v > possible) this.checker.note(`read ${rd.id} of ${rd.key} = ${v} sees incrs not yet invoked`);
    }
    for (const w of this.history.filter((o) => o.kind === 'put' && o.status === 'ok')) {
      if (finalApp.register(w.key) === undefined) this.checker.note(`acked put ${w.id} of ${w.key} lost`);
    }
  }

  violations(): string[] { return this.checker.violations; }
}
