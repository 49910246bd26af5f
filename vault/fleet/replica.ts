// One fleet replica's host (runs inside its worker thread): firmware + RaftLog + sealed LMDB, ticks
// from a timer, peer traffic through the secure transport. Any replica takes device requests; a
// follower forwards the device request itself to the leader, whose firmware charges the attempt,
// waits for its commit, computes the KE2 and keeps the recovery session. So a KE2 leaves only from
// the replica holding the session, after the Attempt committed on a majority; a KE3 reaching a new
// leader finds no session (NO_SESSION) and the device starts over, the attempt stays charged.
import { randomBytes } from 'node:crypto';
import { renameSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { checkDisk } from '../agent/disk-check.ts';
import type { Token } from '../../hsm-adapter/token.ts';
import { BkvError } from '../../protocol/errors.ts';
import { WIRE_SUITES, type WireSuite } from '../../protocol/wire.ts';
import { NOT_APPENDED } from '../agent/log.ts';
import { servingOpaque } from '../agent/replica.ts';
import { RaftStore } from '../agent/raft-store.ts';
import { SeededRng, type SoftState } from '../consensus/index.ts';
import type { FirmwareInput, FirmwareOutput, Policy } from '../firmware/firmware.ts';
import { SessionGate } from '../firmware/gate.ts';
import { SealedStorage } from '../firmware/storage.ts';
import { decodePeer, encodePeer, type PeerMessage } from './peer-wire.ts';
import { RaftLog } from './raft-log.ts';
import type { PeerTransport } from './transport.ts';
import type { ReplicaRole } from './fleet-types.ts';
import { performOutput, type OutputHost } from '../agent/outputs.ts';

export type Outcome = { ok: true; body: Uint8Array } | { ok: false; code: string };

export interface FleetReplicaOptions {
  name: string;
  voters: readonly string[];
  token: Token;
  dbDir: string;
  transport: PeerTransport;
  policy?: Partial<Policy>;
  suites?: readonly WireSuite[];
  /** Raft tick period; election timeout is 10 ticks, heartbeat 2. */
  tickMs: number;
  /** How long a replica waits for a leader to appear before answering NO_LEADER. */
  leaderWaitMs?: number;
  log?: (line: string) => void;
  onEvent?: (e: { kind: 'leader'; term: number } | { kind: 'health'; healthy: boolean; code: string; reason: string } | { kind: 'rejoined'; index: number }) => void;
}

export interface LocalStatus {
  name: string;
  role: ReplicaRole;
  term: number;
  commitIndex: number;
  lastIndex: number;
  appliedIndex: number;
  healthy: boolean;
  reason: string;
  leader: string | null;
  digest: string;
  stats: Record<string, number | boolean>;
}

interface Forwarded { to: string; resolve(o: Outcome): void; timer: NodeJS.Timeout }

function transportStats(t: PeerTransport): Record<string, number> {
  const s = t.stats();
  const out: Record<string, number> = { netSent: s.sent, netDelivered: s.delivered, handshakes: s.handshakes };
  for (const [k, v] of Object.entries(s.dropped)) out[`dropped_${k}`] = v;
  return out;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export class FleetReplica {
  readonly firmware: SessionGate;
  readonly raft: RaftLog;
  private readonly store: RaftStore;
  private readonly o: FleetReplicaOptions;
  private readonly say: (line: string) => void;
  private healthState: { healthy: boolean; code: string; reason: string } = { healthy: true, code: '', reason: '' };
  private nextRequest = 1;
  private readonly waiting = new Map<number, (body: Uint8Array, hint?: string) => void>();
  private nextForward = 1;
  /** Why the disk this replica found at start was set aside ('' when it read fine). */
  private diskRefused = '';
  private rejoinTimer?: NodeJS.Timeout;
  private readonly forwarded = new Map<number, Forwarded>();
  private timer?: NodeJS.Timeout;
  private soft: SoftState = { leader: null, role: 'follower', term: 0 };
  private closed = false;
  readonly counters = { forwardedOut: 0, forwardedIn: 0, badPeer: 0, retries: 0 };

  private constructor(fw: SessionGate, store: RaftStore, raft: RaftLog, o: FleetReplicaOptions) {
    this.firmware = fw;
    this.store = store;
    this.raft = raft;
    this.o = o;
    this.say = o.log ?? (() => undefined);
  }

  static async open(o: FleetReplicaOptions): Promise<FleetReplica> {
    const fw = new SessionGate({
      replicaId: o.name, token: o.token, opaque: await servingOpaque(o.suites ?? WIRE_SUITES),
      rng: (n) => new Uint8Array(randomBytes(n)), policy: o.policy,
    });
    fw.step({ kind: 'leadership', leader: false });
    // A disk that does not even read (a flipped meta page, a truncated file) is set aside unmapped,
    // so it cannot take the other replicas' threads down with this one; the empty disk then fails
    // its anchor check and the replica re-replicates from its peers.
    let diskRefused = '';
    const check = checkDisk(o.dbDir);
    if (!check.ok) {
      const aside = `${o.dbDir}.tampered`;
      rmSync(aside, { recursive: true, force: true });
      renameSync(o.dbDir, aside);
      diskRefused = `TAMPERED: ${join(o.dbDir, 'data.mdb')} refused (${check.why}); set aside as ${aside}`;
      o.log?.(diskRefused);
    }
    const store = RaftStore.open(o.dbDir);
    // Its own seal domain: a solo vault's log (bkv serve) on the same token and disk never opens
    // as a Raft log, nor the other way round.
    const sealed = new SealedStorage(o.token, `${o.name}/raft`);
    let self: FleetReplica | undefined;
    const raft = new RaftLog({
      id: o.name, voters: o.voters, token: o.token, store, sealed,
      rng: new SeededRng(randomBytes(4).readUInt32BE(0)),
      electionTick: 10, heartbeatTick: 2,
      send: (to, bytes) => o.transport.send(to, encodePeer({ kind: 'raft', bytes })),
      reReplicateOnRollback: true,
      onSoftState: (s) => self?.onSoft(s),
      onRejoined: (index) => { self?.say(`rejoined at ${index}`); o.onEvent?.({ kind: 'rejoined', index }); },
      log: (l) => self?.say(l),
    });
    const r = new FleetReplica(fw, store, raft, o);
    r.diskRefused = diskRefused;
    self = r;
    o.transport.onMessage((from, bytes) => r.onPeer(from, bytes));
    r.run({ kind: 'tick', now: Date.now() });
    try {
      await raft.start({
        restore: (s) => r.run({ kind: 'restore', index: s.index, state: s.state }),
        committed: (batch) => { for (const e of batch) r.run({ kind: 'committed', index: e.index, entry: e.entry }); },
        failed: (err) => r.run({ kind: 'fault', code: err.code, reason: err.message }),
      });
    } catch (e) {
      const err = e instanceof BkvError ? e : new BkvError('START_FAILED', 'replica start failed');
      r.run({ kind: 'fault', code: err.code, reason: err.message });
    }
    r.timer = setInterval(() => r.tick(), o.tickMs);
    if (raft.isRejoining) r.announceRejoin();
    r.say(`replica ${o.name} started${raft.isRejoining ? ` (${raft.rejoinReason})` : ''}${r.healthState.healthy ? '' : ` UNHEALTHY ${r.healthState.code}`}`);
    return r;
  }

  /** Leading as far as the firmware knows: the node leads and its soft state reached the firmware. */
  private get leading(): boolean { return this.soft.role === 'leader' && !!this.raft.node?.isLeader; }

  get health(): { healthy: boolean; code: string; reason: string } { return { ...this.healthState }; }

  status(): LocalStatus {
    const n = this.raft.node;
    const role: ReplicaRole = !n ? 'down' : this.raft.isRejoining ? 'rejoining' : n.softState().role;
    return {
      name: this.o.name, role, term: n?.currentTerm ?? 0, commitIndex: n?.commitIndex ?? 0, lastIndex: n?.lastIndex ?? 0, appliedIndex: this.raft.appliedIndex,
      healthy: this.healthState.healthy, leader: n?.leader ?? null, digest: this.firmware.digest(),
      reason: !this.healthState.healthy ? `${this.healthState.code}: ${this.healthState.reason}` : this.raft.isRejoining && this.diskRefused ? `${this.diskRefused}; ${this.raft.rejoinReason}` : this.raft.rejoinReason,
      stats: { ...this.raft.stats, ...this.counters, ...transportStats(this.o.transport) },
    };
  }

  // ------------------------------------------------------------------ device requests

  /** A device request that reached this replica (from the fleet's HTTP front). */
  async handle(user: string, body: Uint8Array): Promise<Outcome> {
    const deadline = Date.now() + (this.o.leaderWaitMs ?? 5 * this.o.tickMs * 10);
    for (;;) {
      if (this.closed) return { ok: false, code: 'CLOSED' };
      if (!this.healthState.healthy) return { ok: false, code: this.healthState.code || 'UNHEALTHY' };
      const n = this.raft.node;
      if (this.leading) {
        const r = await this.serveAsLeader(user, body);
        if (r.ok || r.code !== 'NOT_LEADER') return r;
      } else if (n?.leader && n.leader !== this.o.name) {
        const r = await this.forward(n.leader, user, body);
        if (r.ok || r.code !== 'NOT_LEADER') return r;
      }
      if (Date.now() > deadline) return { ok: false, code: 'NO_LEADER' };
      this.counters.retries++;
      await sleep(Math.max(10, this.o.tickMs));
    }
  }

  private forward(to: string, user: string, body: Uint8Array): Promise<Outcome> {
    const id = this.nextForward++;
    this.counters.forwardedOut++;
    return new Promise((resolve) => {
      const ttl = (this.o.policy?.requestTtlMs ?? 15_000) + 2_000;
      const timer = setTimeout(() => { this.forwarded.delete(id); resolve({ ok: false, code: 'TIMEOUT' }); }, ttl);
      this.forwarded.set(id, { to, resolve, timer });
      this.o.transport.send(to, encodePeer({ kind: 'forward', id, user, body }));
    });
  }

  /**
   * On the leader. Processing waits until everything this node knew committed when the request
   * arrived is applied. Replies the firmware gives at once (Status, WrongPassword, Locked, errors:
   * they read replicated state without proposing) then wait for a ReadIndex asked in the same
   * synchronous turn as the processing: so such a reply is never older than the fleet's commit
   * when it arrived, and a deposed leader never gives one. Replies that follow a commit (KE2, Released, Registered...) leave when
   * the firmware sees the entry committed.
   */
  private async serveAsLeader(user: string, body: Uint8Array): Promise<Outcome> {
    if (!this.leading) return { ok: false, code: 'NOT_LEADER' };
    // A new leader's commit index may lag its predecessor's until an entry of its own term commits.
    for (let i = 0; this.raft.node.termAt(this.raft.node.commitIndex) !== this.raft.node.currentTerm; i++) {
      if (i > 200 || !this.leading) return { ok: false, code: 'NOT_LEADER' };
      await sleep(5);
    }
    const target = this.raft.node.commitIndex;
    try {
      await this.raft.whenApplied(target);
    } catch {
      return { ok: false, code: 'UNAVAILABLE' };
    }
    if (!this.leading) return { ok: false, code: 'NOT_LEADER' };
    const requestId = this.nextRequest++;
    let immediate: Uint8Array | undefined;
    let inStep = true;
    return new Promise<Outcome>((resolve) => {
      this.waiting.set(requestId, (reply, hint) => {
        if (inStep) immediate = reply;
        else if (hint === NOT_APPENDED) resolve({ ok: false, code: 'NOT_LEADER' }); // handle() retries
        else resolve({ ok: true, body: reply });
      });
      this.run({ kind: 'tick', now: Date.now() });
      this.run({ kind: 'request', requestId, user, body });
      inStep = false;
      if (immediate !== undefined) {
        // Asked in the same synchronous turn as the processing, so it confirms the state it read.
        const reply = immediate;
        this.raft.read().then(() => resolve({ ok: true, body: reply }), () => resolve({ ok: false, code: 'UNAVAILABLE' }));
      }
    });
  }

  // ------------------------------------------------------------------ peers

  private onPeer(from: string, bytes: Uint8Array): void {
    let m: PeerMessage;
    try {
      m = decodePeer(bytes);
    } catch {
      this.counters.badPeer++;
      return;
    }
    switch (m.kind) {
      case 'raft': return this.raft.receive(m.bytes);
      case 'forward': {
        this.counters.forwardedIn++;
        const answer = (o: Outcome) => this.o.transport.send(from, encodePeer(o.ok ? { kind: 'forwardReply', id: m.id, ok: true, body: o.body } : { kind: 'forwardReply', id: m.id, ok: false, code: o.code }));
        if (!this.healthState.healthy) return answer({ ok: false, code: this.healthState.code || 'UNHEALTHY' });
        if (!this.leading) return answer({ ok: false, code: 'NOT_LEADER' });
        void this.serveAsLeader(m.user, m.body).then(answer);
        return;
      }
      case 'forwardReply': {
        const f = this.forwarded.get(m.id);
        if (!f || f.to !== from) return;
        this.forwarded.delete(m.id);
        clearTimeout(f.timer);
        f.resolve(m.ok ? { ok: true, body: m.body } : { ok: false, code: m.code });
        return;
      }
      case 'rejoin': {
        // Its acknowledgements from before may cover entries its refused disk no longer has.
        if (this.raft.peerRejoins(from, m.lastIndex)) this.say(`${from} re-replicates from ${m.lastIndex}: forgot its old acknowledgements`);
        return;
      }
    }
  }

  /**
   * While re-replicating after a refused disk: tell the leader (or, knowing none, every voter) that
   * this replica's old acknowledgements are void, so it probes the real log end instead of trusting
   * a match index the lost disk made. Repeated until caught up (a message may be lost).
   */
  private announceRejoin(): void {
    const ask = () => {
      if (this.closed || !this.raft.isRejoining) { clearInterval(this.rejoinTimer); return; }
      const lead = this.raft.node?.leader;
      const targets = lead ? [lead] : this.o.voters.filter((v) => v !== this.o.name);
      const lastIndex = this.raft.node?.lastIndex ?? 0;
      for (const t of targets) this.o.transport.send(t, encodePeer({ kind: 'rejoin', lastIndex }));
    };
    this.rejoinTimer = setInterval(ask, Math.max(50, this.o.tickMs * 2));
    ask();
  }

  private onSoft(s: SoftState): void {
    const prev = this.soft;
    this.soft = s;
    if (prev.leader !== s.leader) {
      // Requests forwarded to a leader we no longer follow: their outcome is unknown (an attempt
      // that reached its log stays charged), so answer now rather than at the timeout.
      for (const [id, f] of this.forwarded) {
        if (f.to === s.leader) continue;
        this.forwarded.delete(id);
        clearTimeout(f.timer);
        f.resolve({ ok: false, code: 'LEADER_CHANGED' });
      }
    }
    if ((prev.role === 'leader') !== (s.role === 'leader')) {
      this.run({ kind: 'leadership', leader: s.role === 'leader' });
    }
    if (s.role === 'leader' && prev.role !== 'leader') {
      this.say(`leader in term ${s.term}`);
      this.o.onEvent?.({ kind: 'leader', term: s.term });
    }
  }

  // ------------------------------------------------------------------ firmware

  private tick(): void {
    if (this.closed) return;
    this.run({ kind: 'tick', now: Date.now() });
    this.raft.tick();
  }

  private run(input: FirmwareInput): void {
    for (const o of this.firmware.step(input)) this.perform(o);
  }

  private perform(o: FirmwareOutput): void {
    performOutput(o, this.outputs);
  }

  private readonly outputs: OutputHost = {
    waiting: this.waiting,
    log: { propose: (e) => this.raft.propose(e), compact: (i, st) => this.raft.compact(i, st) },
    run: (input) => this.run(input),
    health: (h) => {
      this.healthState = h;
      this.say(`${h.healthy ? 'healthy' : `UNHEALTHY ${h.code}: ${h.reason}`}`);
      this.o.onEvent?.({ kind: 'health', ...h });
    },
  };


  async close(): Promise<void> {
    clearInterval(this.rejoinTimer);
    if (this.closed) return;
    this.closed = true;
    clearInterval(this.timer);
    for (const f of this.forwarded.values()) { clearTimeout(f.timer); f.resolve({ ok: false, code: 'CLOSED' }); }
    this.forwarded.clear();
    await this.o.transport.close();
    await this.raft.close();
    await this.store.close();
  }

  /**
   * A copy of this replica's LMDB directory at `path`: LMDB copies a read snapshot (whole Readies
   * only) while the replica keeps writing. Waiting for a gap between Readies starved under load.
   */
  backup(path: string): Promise<void> {
    return this.store.backup(path);
  }
}
