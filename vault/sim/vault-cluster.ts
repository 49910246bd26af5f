// The deterministic vault cluster: the real firmware on the real RaftNode, every replica in one
// thread, driven by a seeded scheduler in virtual time. Devices reach replicas through the same
// simulated network as consensus traffic, so crash (losing unflushed state and all firmware memory),
// restart, partition, delay, drop, duplicate and reorder apply to everything, and a seed replays the
// run exactly (traceHash()).
//
// The host glue mirrors vault/fleet/replica.ts and raft-log.ts, synchronously: any replica takes a
// device request; a follower forwards it to the leader it knows; the leader serves it once an entry
// of its own term committed and it has applied its commit index; a reply the firmware gives at once
// waits for a ReadIndex confirmation; proposals lost with the leadership (or overwritten by another
// term) become `proposalFailed`. The Ready contract is the one SimCluster enforces: flush, then send,
// then apply. The token anchor is modelled (docs/fleet.md, "Anchored acknowledgements"): each replica's
// token holds {index, term} of its persisted head, written after the flush and before the Ready's
// messages; a restart whose disk falls short of it (rolled back, blank, forked) re-replicates as a
// non-voter until its commit passes it, announcing itself so the leader forgets its old acks. The
// host's disk can be copied, rolled back and blanked. Not modelled: sealing (the sim's disk holds
// entries in the clear, so token seal IVs never enter the trace).

import { createHash } from 'node:crypto';
import { Packr } from 'msgpackr';
import {
  CodecError, RaftNode, SeededRng, bootstrapStorage, decodeMessage, encodeMessage,
  type Entry, type NodeId, type Ready, type SoftState,
} from '../consensus/index.ts';
import type { Token } from '../../hsm-adapter/token.ts';
import { createOpaque, type Opaque } from '../../protocol/opaque/index.ts';
import { decodeVaultReply, type WireSuite } from '../../protocol/wire.ts';
import type { FirmwareInput, FirmwareOutput, Policy } from '../firmware/firmware.ts';
import { SessionGate } from '../firmware/gate.ts';
import { encodeRefused } from '../../protocol/session.ts';
import { decodeEntry } from '../firmware/entries.ts';
import { Checker } from './checker.ts';
import { EventQueue, type DurableState, type NetConfig } from './cluster.ts';
import { VaultOracle } from './vault-oracle.ts';

/** What the cluster needs of a firmware (a test may wrap the real one to break it on purpose). */
export interface FirmwareLike {
  step(input: FirmwareInput): FirmwareOutput[];
  digest(): string;
  readonly appliedIndex: number;
  inspect(user: string): { state: string; used: number; limit: number; hasK: boolean } | undefined;
}

export interface VaultClusterOptions {
  readonly seed: number;
  /** One real token per replica, by replica id (the replica ids are the map's keys, in order). */
  readonly tokens: ReadonlyMap<NodeId, Token>;
  readonly policy?: Partial<Policy>;
  readonly tickMs?: number;
  readonly net?: Partial<NetConfig>;
  readonly diskMinMs?: number;
  readonly diskMaxMs?: number;
  /** How long a replica retries a device request while it knows no leader (the fleet's leaderWaitMs). */
  readonly leaderWaitMs?: number;
  /** A device gives up on a request after this long: the outcome is unknown. */
  readonly deviceTimeoutMs?: number;
  /** Test hook: wrap each firmware (mutation checks). */
  readonly wrapFirmware?: (fw: SessionGate, id: NodeId) => FirmwareLike;
  /** Mutation check only: never write the token anchor (acks outlive what the token covers). */
  readonly unsafeNoAnchor?: boolean;
}

/** What the device tells the oracle about a request (never sent on the wire). */
export interface RequestMeta {
  /** For a KE3: whether the device used the registered password. */
  readonly correct?: boolean;
}

type Msg =
  | { k: 'raft'; bytes: Uint8Array }
  | { k: 'req'; dev: string; rid: number; user: string; body: Uint8Array }
  | { k: 'rep'; rid: number; body: Uint8Array }
  | { k: 'fwd'; fid: number; user: string; body: Uint8Array }
  | { k: 'fwdRep'; fid: number; ok: boolean; body: Uint8Array; code: string }
  /** A replica re-replicating after a refused disk says where its log really ends. */
  | { k: 'rejoin'; last: number };

type Event =
  | { kind: 'tick'; id: NodeId; gen: number }
  | { kind: 'flushed'; id: NodeId; gen: number; ready: Ready }
  | { kind: 'deliver'; from: string; to: string; msg: Msg }
  | { kind: 'retry'; id: NodeId; gen: number; req: DeviceReq }
  | { kind: 'devTimeout'; rid: number };

/** A device request as a replica holds it: answered to the device or to the forwarding replica. */
interface DeviceReq { user: string; body: Uint8Array; deadline: number; answer(body: Uint8Array): void; meta: RequestMeta }

interface Replica {
  readonly id: NodeId;
  readonly token: Token;
  /** The token's own storage: survives crashes, disk rollbacks and blank disks. */
  tokenState: { anchor: { index: number; term: number } | null; term: number; vote: string | null };
  /** Re-replicating after a refused disk: no ticks, no votes, until the commit reaches `floor`. */
  rejoining: boolean;
  floor: number;
  /** A copy of the disk the host took (snapshotDisk), for a later rollback. */
  diskCopy: DurableState | null;
  durable: DurableState;
  node: RaftNode | null;
  fw: FirmwareLike | null;
  gen: number;
  applied: number;
  soft: SoftState;
  healthy: boolean;
  nextRequest: number;
  /** firmware requestId -> who waits for the reply. */
  waiting: Map<number, DeviceReq>;
  /** Replies the firmware gave inside sessions, by request id, until the oracle judges them. */
  innerReplies: Map<number, Uint8Array>;
  /** Raft index -> the proposal there (term, firmware tag). */
  proposals: Map<number, { term: number; tag: number }>;
  /** ReadIndex ctx -> the reply it confirms. */
  reads: Map<string, { index: number; body: Uint8Array; req: DeviceReq }>;
  readSeq: number;
  nextFwd: number;
  forwarded: Map<number, { to: NodeId; req: DeviceReq }>;
  wantCompact: { index: number; state: Uint8Array } | null;
}

const packr = new Packr({ useRecords: false, mapsAsObjects: true });
const td = new TextEncoder();
/** What the host answers when it cannot reach a firmware: an unauthenticated refusal, as a relay would. */
const errorReply = (code: string): Uint8Array => encodeRefused(code);

export class VaultCluster {
  readonly rng: SeededRng;
  readonly checker = new Checker();
  readonly oracle = new VaultOracle();
  readonly net: NetConfig;
  now = 0;
  readonly counts = { delivered: 0, dropped: 0, duplicated: 0, flushes: 0, lostFlushes: 0, forwarded: 0, deviceTimeouts: 0, compactions: 0, anchors: 0, rereplications: 0, filteredVotes: 0 };
  /** Entries proposed and replies handed out, by type (a test waits on these to stage a fault at one step). */
  readonly proposed: Record<string, number> = {};
  readonly replied: Record<string, number> = {};
  readonly ids: NodeId[];

  private readonly replicas = new Map<NodeId, Replica>();
  private readonly q = new EventQueue();
  private seq = 0;
  private readonly nodeRng: SeededRng;
  private readonly netRng: SeededRng;
  private readonly fwRng: SeededRng;
  private readonly trace = createHash('sha256');
  private groups: Map<string, number> | null = null;
  private readonly paused = new Map<NodeId, { from: string; msg: Msg }[]>();
  private readonly tickMs: number;
  private readonly diskMin: number;
  private readonly diskMax: number;
  private readonly leaderWaitMs: number;
  private readonly deviceTimeoutMs: number;
  private nextRid = 1;
  private readonly devWaiting = new Map<number, { resolve(b: Uint8Array): void; reject(e: Error): void }>();
  /** Set when a device's promise settled: the driver must let its continuation run. */
  private devSettled = false;

  private constructor(
    private readonly o: VaultClusterOptions,
    private readonly opaque: Partial<Record<WireSuite, Opaque>>,
  ) {
    this.rng = new SeededRng(o.seed);
    this.nodeRng = this.rng.fork();
    this.netRng = this.rng.fork();
    this.fwRng = this.rng.fork();
    this.tickMs = o.tickMs ?? 10;
    this.diskMin = o.diskMinMs ?? 1;
    this.diskMax = o.diskMaxMs ?? 3;
    this.leaderWaitMs = o.leaderWaitMs ?? 1_000;
    this.deviceTimeoutMs = o.deviceTimeoutMs ?? 5_000;
    this.net = { minDelayMs: 1, maxDelayMs: 10, dropRate: 0, dupRate: 0, ...o.net };
    this.ids = [...o.tokens.keys()];
    const boot = bootstrapStorage(this.ids);
    for (const id of this.ids) {
      const r: Replica = {
        id, token: o.tokens.get(id)!, durable: { hardState: boot.hardState, snapshot: null, entries: [...boot.entries] },
        tokenState: { anchor: null, term: 0, vote: null }, rejoining: false, floor: 0, diskCopy: null,
        node: null, fw: null, innerReplies: new Map(), gen: 0, applied: 0, soft: { leader: null, role: 'follower', term: 0 }, healthy: true,
        nextRequest: 1, waiting: new Map(), proposals: new Map(), reads: new Map(), readSeq: 0, nextFwd: 1, forwarded: new Map(), wantCompact: null,
      };
      this.replicas.set(id, r);
    }
    for (const id of this.ids) this.start(this.replicas.get(id)!);
  }

  static async create(o: VaultClusterOptions): Promise<VaultCluster> {
    const opaque = { 'ristretto255-SHA512': await createOpaque({ suite: 'ristretto255-SHA512' }) } as Partial<Record<WireSuite, Opaque>>;
    return new VaultCluster(o, opaque);
  }

  // ---------------------------------------------------------------- replicas

  private start(r: Replica): void {
    r.gen++;
    this.judgeDisk(r);
    const d = r.durable;
    r.node = new RaftNode({
      id: r.id, storage: { hardState: d.hardState, snapshot: d.snapshot, entries: [...d.entries] },
      rng: this.nodeRng.fork(), electionTick: 10, heartbeatTick: 2,
    });
    // Each incarnation draws its own stream: a restart does not replay the old one's randomness.
    const rng = this.fwRng.fork();
    const inner = new Map<number, Uint8Array>();
    r.innerReplies = inner;
    // The production gate: devices reach this firmware only through sessions, as on a real replica.
    const real = new SessionGate({
      replicaId: r.id, token: r.token, opaque: this.opaque, policy: this.o.policy,
      rng: (n) => { const b = new Uint8Array(n); for (let i = 0; i < n; i++) b[i] = rng.int(256); return b; },
      observe: (requestId, body) => inner.set(requestId, body),
    });
    r.fw = this.o.wrapFirmware ? this.o.wrapFirmware(real, r.id) : real;
    r.soft = { leader: null, role: 'follower', term: 0 };
    r.healthy = true;
    r.waiting = new Map(); r.proposals = new Map(); r.reads = new Map(); r.forwarded = new Map(); r.wantCompact = null;
    this.fw(r, { kind: 'leadership', leader: false });
    this.fw(r, { kind: 'tick', now: this.now });
    r.applied = 0;
    if (d.snapshot) {
      r.applied = d.snapshot.meta.index;
      this.fw(r, { kind: 'restore', index: d.snapshot.meta.index, state: d.snapshot.data });
      this.checkRestored(r);
    }
    this.checker.onRestore(r.id, r.applied);
    this.note(`start ${r.id} ${r.gen}`);
    this.schedule(this.nodeRng.int(this.tickMs) + 1, { kind: 'tick', id: r.id, gen: r.gen });
    this.pump(r);
  }

  private rep(id: NodeId): Replica {
    const r = this.replicas.get(id);
    if (!r) throw new Error(`no replica ${id}`);
    return r;
  }

  isUp(id: NodeId): boolean { return this.rep(id).node !== null; }
  upIds(): NodeId[] { return this.ids.filter((id) => this.isUp(id)); }
  node(id: NodeId): RaftNode | null { return this.rep(id).node; }
  firmware(id: NodeId): FirmwareLike | null { return this.rep(id).fw; }

  leader(): NodeId | null {
    let best: RaftNode | null = null;
    for (const r of this.replicas.values()) if (r.node?.isLeader && (!best || r.node.currentTerm > best.currentTerm)) best = r.node;
    return best?.id ?? null;
  }

  /** Kill the process: Raft memory, firmware memory (sessions, waiting requests) and unflushed Readies are lost. */
  crash(id: NodeId): void {
    const r = this.rep(id);
    if (!r.node) return;
    this.paused.delete(id);
    r.node = null; r.fw = null; r.gen++;
    r.waiting.clear(); r.reads.clear(); r.forwarded.clear(); r.proposals.clear();
    this.note(`crash ${id}`);
  }

  /** The host copies a replica's disk (taken between Readies, as LMDB's snapshot copy is). */
  snapshotDisk(id: NodeId): void {
    const r = this.rep(id);
    r.diskCopy = copyDisk(r.durable);
    this.note(`snapshotDisk ${id}`);
  }

  /** The host rolls a replica's disk back to its last copy (or blanks it if none), killing the process first. */
  rollbackDisk(id: NodeId): void {
    const r = this.rep(id);
    this.crash(id);
    r.durable = r.diskCopy ? copyDisk(r.diskCopy) : blankDisk();
    this.note(`rollbackDisk ${id}`);
  }

  /** Amnesia: the host gives the replica a blank disk under its identity (its token keeps its anchor). */
  blankDisk(id: NodeId): void {
    const r = this.rep(id);
    this.crash(id);
    r.durable = blankDisk();
    this.note(`blankDisk ${id}`);
  }

  /** The whole fleet killed at once and started again (every replica that was up, or all). */
  wholeFleetRestart(only?: NodeId[]): void {
    for (const id of this.ids) this.crash(id);
    for (const id of only ?? this.ids) this.restart(id);
  }

  isRejoining(id: NodeId): boolean { return this.rep(id).rejoining && this.isUp(id); }

  /**
   * At start, the disk against the token anchor: at or past it (same term there), keep it and anchor
   * a head beyond it (never acked); short of it, forked from it or blank, wipe it and re-replicate
   * as a non-voter. The token's term and vote win over an older disk's.
   */
  private judgeDisk(r: Replica): void {
    const d = r.durable;
    const tok = r.tokenState;
    const head = headOf(d);
    const a = tok.anchor;
    r.rejoining = false;
    if (a && (head.index < a.index || termAt(d, a.index) !== a.term)) {
      r.durable = { hardState: { term: tok.term, vote: tok.vote, commit: 0 }, snapshot: null, entries: [] };
      r.rejoining = true;
      r.floor = a.index;
      this.counts.rereplications++;
      this.note(`rereplicate ${r.id} below ${a.index}`);
      return;
    }
    if (tok.term > d.hardState.term) d.hardState = { term: tok.term, vote: tok.vote, commit: d.hardState.commit };
    else if (tok.term === d.hardState.term && d.hardState.vote === null && tok.vote !== null) d.hardState = { ...d.hardState, vote: tok.vote };
    if (head.index > (a?.index ?? 0)) this.writeAnchor(r, head);
  }

  private writeAnchor(r: Replica, head: { index: number; term: number }): void {
    if (this.o.unsafeNoAnchor) return;
    r.tokenState.anchor = head;
    this.counts.anchors++;
  }

  restart(id: NodeId): void {
    const r = this.rep(id);
    this.paused.delete(id);
    if (!r.node) this.start(r);
  }

  /** Stop a replica's process without killing it (GC pause, SIGSTOP): no ticks, no flush completion, inbound queues. */
  pause(id: NodeId): void {
    if (!this.isUp(id) || this.paused.has(id)) return;
    this.paused.set(id, []);
    this.note(`pause ${id}`);
  }

  /** It runs again and sees everything that queued meanwhile, in arrival order (a stale leader, perhaps). */
  resume(id: NodeId): void {
    const held = this.paused.get(id);
    if (!held) return;
    this.paused.delete(id);
    this.note(`resume ${id}`);
    for (const h of held) this.schedule(0, { kind: 'deliver', from: h.from, to: id, msg: h.msg });
  }

  isPaused(id: NodeId): boolean { return this.paused.has(id); }

  partition(...groups: NodeId[][]): void {
    const g = new Map<string, number>();
    groups.forEach((grp, i) => grp.forEach((id) => g.set(id, i + 1)));
    this.groups = g;
    this.note(`partition ${JSON.stringify(groups)}`);
  }

  isolate(id: NodeId): void { this.partition([id]); }

  /** Reconnect everything and resume paused replicas. */
  heal(): void {
    for (const id of [...this.paused.keys()]) this.resume(id);
    this.groups = null;
    this.note('heal');
  }

  /** Devices are outside the replicas' partition groups: they reach every replica (over a lossy net). */
  private canTalk(from: string, to: string): boolean {
    if (!this.groups || !this.replicas.has(from) || !this.replicas.has(to)) return true;
    return (this.groups.get(from) ?? 0) === (this.groups.get(to) ?? 0);
  }

  // ---------------------------------------------------------------- scheduler

  private schedule(delay: number, ev: Event): void {
    this.q.push({ at: this.now + Math.max(0, Math.floor(delay)), seq: this.seq++, ev: ev as never });
  }

  private note(s: string): void { this.trace.update(td.encode(`${this.now}|${s}\n`)); }

  traceHash(): string { return this.trace.copy().digest('hex'); }

  private stepOnce(): boolean {
    const x = this.q.pop();
    if (!x) return false;
    this.now = x.at;
    const ev = x.ev as unknown as Event;
    switch (ev.kind) {
      case 'tick': {
        const r = this.rep(ev.id);
        if (r.gen !== ev.gen || !r.node) return true;
        if (this.paused.has(r.id)) { this.schedule(this.tickMs, ev); return true; }
        this.fw(r, { kind: 'tick', now: this.now });
        if (r.rejoining) {
          const lead = r.node.leader;
          for (const to of lead ? [lead] : this.ids.filter((x) => x !== r.id)) this.send(r.id, to, { k: 'rejoin', last: r.node.lastIndex });
        } else {
          r.node.tick();
        }
        this.after(r);
        this.schedule(this.tickMs, ev);
        return true;
      }
      case 'flushed': {
        const r = this.rep(ev.id);
        if (r.gen !== ev.gen || !r.node) { this.counts.lostFlushes++; return true; }
        if (this.paused.has(r.id)) { this.schedule(this.tickMs, ev); return true; }
        this.onFlushed(r, ev.ready);
        return true;
      }
      case 'deliver':
        this.deliver(ev.from, ev.to, ev.msg);
        return true;
      case 'retry': {
        const r = this.rep(ev.id);
        if (r.gen !== ev.gen || !r.node) return true;
        if (this.paused.has(r.id)) { this.schedule(this.tickMs, ev); return true; }
        this.handleDevice(r, ev.req);
        return true;
      }
      case 'devTimeout': {
        const w = this.devWaiting.get(ev.rid);
        if (!w) return true;
        this.devWaiting.delete(ev.rid);
        this.counts.deviceTimeouts++;
        this.note(`devTimeout ${ev.rid}`);
        this.devSettled = true;
        w.reject(new DeviceTimeout());
        return true;
      }
    }
  }

  /**
   * Run `ms` of virtual time. Device flows (async client code) continue between events: whenever a
   * device's reply or timeout settled, the driver lets pending promise continuations run before the
   * next event, so their sends land at a deterministic virtual time.
   */
  async run(ms: number): Promise<void> {
    const end = this.now + ms;
    await drain();
    for (;;) {
      const top = this.q.peek();
      if (!top || top.at > end) break;
      this.stepOnce();
      if (this.devSettled) { this.devSettled = false; await drain(); }
    }
    this.now = end;
  }

  /** Run until `pred` holds (checked after each event) or `maxMs` passes. */
  async runUntil(pred: () => boolean, maxMs: number): Promise<boolean> {
    const end = this.now + maxMs;
    await drain();
    while (!pred()) {
      const top = this.q.peek();
      if (!top || top.at > end) { this.now = Math.max(this.now, end); return pred(); }
      this.stepOnce();
      if (this.devSettled) { this.devSettled = false; await drain(); }
    }
    return true;
  }

  // ---------------------------------------------------------------- network

  private send(from: string, to: string, msg: Msg): void {
    if (this.net.dropRate > 0 && this.netRng.float() < this.net.dropRate) { this.counts.dropped++; return; }
    const copies = this.net.dupRate > 0 && this.netRng.float() < this.net.dupRate ? 2 : 1;
    if (copies === 2) this.counts.duplicated++;
    for (let i = 0; i < copies; i++) {
      const d = this.net.minDelayMs + this.netRng.int(this.net.maxDelayMs - this.net.minDelayMs + 1);
      this.schedule(d, { kind: 'deliver', from, to, msg });
    }
  }

  private deliver(from: string, to: string, msg: Msg): void {
    if (!this.canTalk(from, to)) { this.counts.dropped++; return; }
    if (msg.k === 'rep') {
      const w = this.devWaiting.get(msg.rid);
      if (!w) return; // a duplicate, or after the device gave up
      this.devWaiting.delete(msg.rid);
      this.note(`rep ${to} ${msg.rid} ${Buffer.from(msg.body).toString('hex')}`);
      this.devSettled = true;
      w.resolve(msg.body);
      return;
    }
    const r = this.replicas.get(to);
    if (!r?.node) { this.counts.dropped++; return; }
    const held = this.paused.get(to);
    if (held) { held.push({ from, msg }); return; }
    this.counts.delivered++;
    this.trace.update(td.encode(`${this.now}|d|${from}>${to}|${msg.k}|`));
    this.trace.update(packr.pack(msg));
    switch (msg.k) {
      case 'raft': {
        let m;
        try { m = decodeMessage(msg.bytes); } catch (e) { if (e instanceof CodecError) return; throw e; }
        if (m.from !== from) return;
        r.node.step(m);
        this.after(r);
        return;
      }
      case 'rejoin': {
        // As raft-log.ts peerRejoins: forget acks the leader counts beyond the replica's real log end.
        const pr = r.node.isLeader ? r.node.status().progress?.get(from) : undefined;
        if (pr && pr.match > msg.last && r.node.resetPeer(from)) this.after(r);
        return;
      }
      case 'req':
        return this.handleDevice(r, {
          user: msg.user, body: msg.body, deadline: this.now + this.leaderWaitMs, meta: this.metas.get(msg.rid) ?? {},
          answer: (body) => this.send(r.id, msg.dev, { k: 'rep', rid: msg.rid, body }),
        });
      case 'fwd': {
        const answer = (ok: boolean, body: Uint8Array, code: string) => this.send(r.id, from, { k: 'fwdRep', fid: msg.fid, ok, body, code });
        if (!r.healthy) return answer(false, new Uint8Array(0), 'UNHEALTHY');
        if (!this.leading(r)) return answer(false, new Uint8Array(0), 'NOT_LEADER');
        const meta = this.fwdMetas.get(`${from}/${msg.fid}`) ?? {};
        return this.serveAsLeader(r, { user: msg.user, body: msg.body, deadline: this.now + this.leaderWaitMs, meta, answer: (b) => answer(true, b, '') });
      }
      case 'fwdRep': {
        const f = r.forwarded.get(msg.fid);
        if (!f || f.to !== from) return;
        r.forwarded.delete(msg.fid);
        if (msg.ok) return f.req.answer(msg.body);
        if (msg.code === 'NOT_LEADER') return this.retryLater(r, f.req);
        return f.req.answer(errorReply(msg.code));
      }
    }
  }

  // The oracle's side channel: which request carried which intent (a real network has none).
  private readonly metas = new Map<number, RequestMeta>();
  private readonly fwdMetas = new Map<string, RequestMeta>();

  // ---------------------------------------------------------------- devices

  /**
   * A device's `send` (client/password.ts's Send) to replica `to` (or, each call, a replica picked
   * by `pick`). The reply comes back through the simulated network; if none within the device
   * timeout, the promise rejects with DeviceTimeout (outcome unknown).
   */
  deviceSend(dev: string, user: string, pick: () => NodeId, meta: () => RequestMeta = () => ({})): (body: Uint8Array) => Promise<Uint8Array> {
    return (body) => new Promise<Uint8Array>((resolve, reject) => {
      const rid = this.nextRid++;
      this.metas.set(rid, meta());
      this.devWaiting.set(rid, { resolve, reject });
      const to = pick();
      this.note(`req ${dev}>${to} ${rid}`);
      this.send(dev, to, { k: 'req', dev, rid, user, body });
      this.schedule(this.deviceTimeoutMs, { kind: 'devTimeout', rid });
    });
  }

  // ---------------------------------------------------------------- the replica host (as vault/fleet/replica.ts)

  private leading(r: Replica): boolean { return r.soft.role === 'leader' && !!r.node?.isLeader; }

  private retryLater(r: Replica, req: DeviceReq): void {
    if (this.now > req.deadline) return req.answer(errorReply('NO_LEADER'));
    this.schedule(this.tickMs, { kind: 'retry', id: r.id, gen: r.gen, req });
  }

  private handleDevice(r: Replica, req: DeviceReq): void {
    if (!r.healthy) return req.answer(errorReply('UNHEALTHY'));
    const n = r.node!;
    if (this.leading(r)) return this.serveAsLeader(r, req);
    if (n.leader && n.leader !== r.id) {
      const fid = r.nextFwd++;
      r.forwarded.set(fid, { to: n.leader, req });
      this.fwdMetas.set(`${r.id}/${fid}`, req.meta);
      this.counts.forwarded++;
      return this.send(r.id, n.leader, { k: 'fwd', fid, user: req.user, body: req.body });
    }
    this.retryLater(r, req);
  }

  private serveAsLeader(r: Replica, req: DeviceReq): void {
    const n = r.node!;
    if (!this.leading(r)) return req.answer(errorReply('NOT_LEADER'));
    // Not before an entry of this term committed and everything committed is applied.
    if (n.termAt(n.commitIndex) !== n.currentTerm || r.applied < n.commitIndex) {
      if (this.now > req.deadline) return req.answer(errorReply('NOT_LEADER'));
      this.schedule(5, { kind: 'retry', id: r.id, gen: r.gen, req });
      return;
    }
    const requestId = r.nextRequest++;
    r.waiting.set(requestId, req);
    this.fw(r, { kind: 'tick', now: this.now });
    const out = this.fw(r, { kind: 'request', requestId, user: req.user, body: req.body }, true);
    const immediate = out.find((o) => o.kind === 'reply' && o.requestId === requestId);
    if (immediate && immediate.kind === 'reply') {
      // Read-only answers (Status, RegisterResponse, errors, WrongPassword before a KE2...) leave
      // only once a quorum confirmed this replica still led when it read the state.
      r.waiting.delete(requestId);
      this.judge(r, req, immediate.body, requestId);
      const ctx = String(++r.readSeq);
      const res = n.readIndex(td.encode(ctx));
      if (!res.ok) return req.answer(errorReply('UNAVAILABLE'));
      r.reads.set(ctx, { index: Infinity, body: immediate.body, req });
      this.after(r);
    }
  }

  /** Step the firmware and carry out its outputs; `hold` keeps a reply to the current request for the caller. */
  private fw(r: Replica, input: FirmwareInput, hold = false): FirmwareOutput[] {
    if (!r.fw) return [];
    const out = r.fw.step(input);
    for (const o of out) {
      switch (o.kind) {
        case 'reply': {
          if (hold && input.kind === 'request' && o.requestId === input.requestId) break;
          this.onReply(r, o.requestId, o.body);
          break;
        }
        case 'propose': {
          const t = decodeEntry(o.entry).t;
          this.proposed[t] = (this.proposed[t] ?? 0) + 1;
          const res = r.node!.propose(o.entry);
          if (!res.ok) { this.fw(r, { kind: 'proposalFailed', tag: o.tag, code: res.error.code }); break; }
          r.proposals.set(res.index, { term: res.term, tag: o.tag });
          break;
        }
        case 'snapshot':
          if (!r.wantCompact || r.wantCompact.index < o.index) r.wantCompact = { index: o.index, state: o.state };
          break;
        case 'health':
          r.healthy = o.healthy;
          this.note(`health ${r.id} ${String(o.healthy)} ${o.code}`);
          break;
      }
    }
    return out;
  }

  /** A firmware reply leaves the replica: the oracle sees it here, before the network can lose it. */
  private onReply(r: Replica, requestId: number, body: Uint8Array): void {
    const req = r.waiting.get(requestId);
    r.waiting.delete(requestId);
    this.judge(r, req, body, requestId);
    req?.answer(body);
  }

  private judge(r: Replica, req: DeviceReq | undefined, body: Uint8Array, requestId: number): void {
    // The oracle reads what the firmware said inside the session (the gate's observer); a copy served
    // from the gate's memory, or a refusal, carries no new evaluation.
    const inner = r.innerReplies.get(requestId);
    r.innerReplies.delete(requestId);
    if (!inner) return;
    const reply = decodeVaultReply(inner);
    this.replied[reply.t] = (this.replied[reply.t] ?? 0) + 1;
    if (reply.t === 'KE2') this.oracle.onKE2(r.id, req?.user ?? '?', reply.session, this.now, body);
    if (reply.t === 'Status' && req && r.healthy) this.oracle.onStatus(r.id, req.user, r.fw!.appliedIndex, reply, this.now);
    if (reply.t === 'Released') this.oracle.onReleased(r.id, req?.user ?? '?', r.fw!.appliedIndex, req?.meta.correct, this.now, body);
  }

  private after(r: Replica): void {
    if (r.node) this.checker.observe(r.node, this.now);
    this.pump(r);
  }

  private pump(r: Replica): void {
    const n = r.node;
    if (!n || !n.hasReady()) return;
    const rd = n.ready();
    this.schedule(this.diskMin + this.nodeRng.int(this.diskMax - this.diskMin + 1), { kind: 'flushed', id: r.id, gen: r.gen, ready: rd });
  }

  private persist(r: Replica, rd: Ready): void {
    const d = r.durable;
    if (rd.snapshot) { d.snapshot = rd.snapshot; d.entries = []; }
    if (rd.entries.length > 0) {
      const base = d.snapshot?.meta.index ?? 0;
      d.entries.length = rd.entries[0]!.index - base - 1;
      d.entries.push(...rd.entries);
    }
    if (rd.hardState) d.hardState = rd.hardState;
    this.counts.flushes++;
  }

  private onFlushed(r: Replica, rd: Ready): void {
    const n = r.node!;
    this.persist(r, rd);
    // The anchor covers the persisted head before any ack or vote leaves.
    if (rd.entries.length > 0 || rd.snapshot) {
      const head = headOf(r.durable);
      if (!(r.rejoining && head.index < r.floor)) this.writeAnchor(r, head);
    }
    if (rd.hardState) { r.tokenState.term = rd.hardState.term; r.tokenState.vote = rd.hardState.vote; }
    for (const m of rd.messages) {
      if (r.rejoining && (m.type === 'vote' || m.type === 'preVote' || m.type === 'voteResp' || m.type === 'preVoteResp')) { this.counts.filteredVotes++; continue; }
      this.send(r.id, m.to, { k: 'raft', bytes: encodeMessage(m) });
    }
    if (rd.softState) this.onSoft(r, rd.softState);
    if (rd.snapshot && rd.snapshot.meta.index > r.applied) {
      r.applied = rd.snapshot.meta.index;
      this.fw(r, { kind: 'restore', index: rd.snapshot.meta.index, state: rd.snapshot.data });
      this.checker.onRestore(r.id, r.applied);
      this.checkRestored(r);
    }
    for (const e of rd.committed) this.apply(r, e);
    for (const rs of rd.readStates) {
      const x = r.reads.get(new TextDecoder().decode(rs.ctx));
      if (x) x.index = rs.index;
    }
    for (const [ctx, x] of r.reads) if (x.index <= r.applied) { r.reads.delete(ctx); x.req.answer(x.body); }
    n.advance(rd);
    if (r.rejoining && n.commitIndex >= r.floor && r.applied >= r.floor) {
      r.rejoining = false;
      this.note(`rejoined ${r.id} at ${r.applied}`);
    }
    this.compact(r);
    this.after(r);
  }

  private apply(r: Replica, e: Entry): void {
    if (e.index <= r.applied) return; // covered by a snapshot installed in this Ready
    this.checker.onApply(r.id, e, this.now);
    this.note(`apply ${r.id} ${e.index} ${e.term}`);
    r.applied = e.index;
    if (e.type === 'normal') {
      this.oracle.onCommitted(e.index, e.data);
      this.fw(r, { kind: 'committed', index: e.index, entry: e.data });
      const user = decodeEntry(e.data).user;
      if (r.healthy && r.fw) this.oracle.checkReplica(r.id, e.index, user, this.view(r, user), this.now);
    } else {
      this.oracle.onSkipped(e.index);
    }
    const p = r.proposals.get(e.index);
    if (p) {
      r.proposals.delete(e.index);
      // Another term's entry took the index: our proposal is gone (an Attempt that did commit elsewhere stays charged).
      if (p.term !== e.term) this.fw(r, { kind: 'proposalFailed', tag: p.tag, code: 'NOT_LEADER' });
    }
  }

  private view(r: Replica, user: string): { used: number; locked: boolean } | undefined {
    const v = r.fw!.inspect(user);
    return v && { used: v.used, locked: v.state === 'locked' };
  }

  /** After a restore: every record the replica holds matches the committed history at that index. */
  private checkRestored(r: Replica): void {
    if (!r.fw || !r.healthy) return;
    for (const u of this.knownUsers) this.oracle.checkReplica(r.id, r.applied, u, this.view(r, u), this.now);
  }

  /** Users the oracle checks on snapshot restores (the workload declares them). */
  readonly knownUsers = new Set<string>();

  private onSoft(r: Replica, s: SoftState): void {
    const prev = r.soft;
    r.soft = s;
    const n = r.node!;
    if (s.role !== 'leader') {
      // As raft-log.ts: proposals past the commit index and pending reads die with the leadership.
      for (const [i, p] of [...r.proposals]) if (i > n.commitIndex) { r.proposals.delete(i); this.fw(r, { kind: 'proposalFailed', tag: p.tag, code: 'NOT_LEADER' }); }
      for (const [ctx, x] of [...r.reads]) { r.reads.delete(ctx); x.req.answer(errorReply('UNAVAILABLE')); }
    }
    if (prev.leader !== s.leader) {
      for (const [fid, f] of [...r.forwarded]) {
        if (f.to === s.leader) continue;
        r.forwarded.delete(fid);
        f.req.answer(errorReply('LEADER_CHANGED'));
      }
    }
    if ((prev.role === 'leader') !== (s.role === 'leader')) this.fw(r, { kind: 'leadership', leader: s.role === 'leader' });
  }

  private compact(r: Replica): void {
    const w = r.wantCompact;
    if (!w || !r.node) return;
    const st = r.node.status();
    if (w.index <= st.firstIndex - 1) { r.wantCompact = null; return; }
    if (w.index > r.applied) return;
    r.wantCompact = null;
    const snap = r.node.compact(w.index, w.state);
    r.durable.snapshot = snap;
    r.durable.entries = r.durable.entries.filter((e) => e.index > snap.meta.index);
    this.counts.compactions++;
  }

  // ---------------------------------------------------------------- end of run

  /** Heal, stop losing messages, restart everyone, run until every replica applied the leader's log. */
  async quiesce(maxMs = 20_000): Promise<boolean> {
    this.heal();
    this.net.dropRate = 0;
    this.net.dupRate = 0;
    for (const id of this.ids) this.restart(id);
    return this.runUntil(() => {
      const l = this.leader();
      if (!l) return false;
      const ln = this.rep(l).node!;
      const c = ln.commitIndex;
      return ln.termAt(c) === ln.currentTerm && ln.lastIndex === c
        && this.upIds().every((id) => { const r = this.rep(id); return r.applied === c && r.node!.commitIndex === c; });
    }, maxMs);
  }

  /** Invariant 8: every running replica holds the same applied index and firmware state digest. */
  checkConverged(): void {
    const m = new Map<NodeId, { applied: number; digest: string }>();
    for (const id of this.upIds()) {
      const r = this.rep(id);
      m.set(id, { applied: r.applied, digest: r.healthy ? r.fw!.digest() : `unhealthy` });
    }
    this.checker.checkConverged(m, this.now);
  }

  violations(): string[] { return [...this.checker.violations, ...this.oracle.violations]; }
}

export class DeviceTimeout extends Error {
  readonly code = 'DEVICE_TIMEOUT';
  constructor() { super('no reply from the vault in time: outcome unknown'); }
}

/** Lets every pending promise continuation run (setImmediate fires after the microtask queue drains). */
function drain(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}

function copyDisk(d: DurableState): DurableState {
  return { hardState: { ...d.hardState }, snapshot: d.snapshot, entries: [...d.entries] };
}

function blankDisk(): DurableState {
  return { hardState: { term: 0, vote: null, commit: 0 }, snapshot: null, entries: [] };
}

function headOf(d: DurableState): { index: number; term: number } {
  const last = d.entries.at(-1);
  if (last) return { index: last.index, term: last.term };
  if (d.snapshot) return { index: d.snapshot.meta.index, term: d.snapshot.meta.term };
  return { index: 0, term: 0 };
}

function termAt(d: DurableState, index: number): number | undefined {
  if (d.snapshot && d.snapshot.meta.index === index) return d.snapshot.meta.term;
  return d.entries.find((e) => e.index === index)?.term;
}
