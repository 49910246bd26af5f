// The host of one fleet replica (in a worker thread or its own process): it carries bytes and time
// for the replica core (vault/replica/core.ts) and does its I/O. Ticks from a timer, peer traffic
// through the secure transport, device requests from the front, the disk through LMDB. Every rule
// (sealing, anchors, votes, rejoin, forwarding, read barriers, retries) is in the core; what is left
// here is the order of I/O the core's outputs ask for: disk operations one after another, each
// `persist` completed only once flushed.
import { randomBytes } from 'node:crypto';
import { renameSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import type { Token } from '../../hsm-adapter/token.ts';
import { BkvError } from '../../protocol/errors.ts';
import { WIRE_SUITES, type WireSuite } from '../../protocol/wire.ts';
import { checkDisk } from '../agent/disk-check.ts';
import { servingOpaque } from '../agent/replica.ts';
import { RaftStore } from '../agent/raft-store.ts';
import { SeededRng } from '../consensus/index.ts';
import type { Policy } from '../firmware/firmware.ts';
import type { SessionGate } from '../firmware/gate.ts';
import { MUTATIONS, ReplicaCore, type CoreInput, type CoreOutput, type MemberChange, type MemberView, type Mutation, type Outcome, type StoredDisk } from '../replica/core.ts';
import type { ReplicaRole } from './fleet-types.ts';
import type { PeerTransport } from './transport.ts';
import type { ReplicaMetrics } from '../../protocol/metrics-wire.ts';

export type { Outcome } from '../replica/core.ts';

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
  onEvent?: (e: ReplicaEvent) => void;
  /** The token's call metrics (vault/agent/metered-token.ts), when the host meters it. */
  tokenReport?: () => ReplicaMetrics['token'];
}

/** What a replica host passes up, as it happens. */
export type ReplicaEvent =
  | { kind: 'leader'; term: number }
  | { kind: 'role'; role: ReplicaRole; term: number; leader: string | null }
  | { kind: 'health'; healthy: boolean; code: string; reason: string }
  | { kind: 'rejoined'; index: number };

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
  /** Milliseconds since an authenticated message last came from each peer (absent: never). */
  heardMsAgo: Record<string, number>;
  stats: Record<string, number | boolean>;
  /** Counters and latency buckets for /metrics (protocol/metrics-wire.ts). */
  metrics: ReplicaMetrics;
  /** The configuration this replica holds (absent before its node runs). */
  members?: MemberView;
}

function transportStats(t: PeerTransport): Record<string, number> {
  const s = t.stats();
  const out: Record<string, number> = { netSent: s.sent, netDelivered: s.delivered, handshakes: s.handshakes };
  for (const [k, v] of Object.entries(s.dropped)) out[`dropped_${k}`] = v;
  return out;
}

/** The test-only switch of `bkv chaos live --mutation`: a seeded bug the checkers must catch, never set in production. */
export function testMutation(v: string | undefined): Mutation | undefined {
  if (v === undefined || v === '') return undefined;
  if (!(MUTATIONS as readonly string[]).includes(v)) throw new BkvError('BAD_MUTATION', `BKV_TEST_MUTATION must be one of ${MUTATIONS.join(', ')}`);
  return v as Mutation;
}

export class FleetReplica {
  readonly core: ReplicaCore;
  private readonly store: RaftStore;
  private readonly o: FleetReplicaOptions;
  private readonly say: (line: string) => void;
  private readonly pending = new Map<number, (o: Outcome) => void>();
  /** The core's answer to the membership input being stepped (it answers within the same step). */
  private memberAnswer: { ok: true; index: number } | { ok: false; code: string } | undefined;
  private nextRid = 1;
  private queued: CoreInput[] = [];
  /** Disk operations run one after another, in the order the core asked for them. */
  private disk: Promise<void> = Promise.resolve();
  private timer?: NodeJS.Timeout;
  private closed = false;
  readonly io = { persistMs: 0, steps: 0 };
  private readonly snapshots = { count: 0, lastBytes: 0, totalBytes: 0 };
  /** The host's clock, which a hostile host may run fast, slow or jump (the `clock` fault). */
  private clock = { realAt: Date.now(), at: Date.now(), rate: 1 };

  private constructor(core: ReplicaCore, store: RaftStore, o: FleetReplicaOptions) {
    this.core = core;
    this.store = store;
    this.o = o;
    this.say = o.log ?? (() => undefined);
  }

  /** The session gate (its pinned keys are what the front and devices check). */
  get firmware(): SessionGate { return this.core.gate; }

  static async open(o: FleetReplicaOptions): Promise<FleetReplica> {
    const core = new ReplicaCore({
      id: o.name, voters: o.voters, token: o.token, opaque: await servingOpaque(o.suites ?? WIRE_SUITES),
      rng: (n) => new Uint8Array(randomBytes(n)), raftRng: new SeededRng(randomBytes(4).readUInt32BE(0)), policy: o.policy,
      leaderWaitMs: o.leaderWaitMs ?? 5 * o.tickMs * 10, rejoinEveryMs: Math.max(50, o.tickMs * 2),
      mutation: testMutation(process.env.BKV_TEST_MUTATION),
    });
    // A disk that does not even read (a flipped meta page, a truncated file) is set aside unmapped,
    // so it cannot take the other replicas' threads down with this one; the core then re-replicates.
    let unreadable: string | undefined;
    const check = checkDisk(o.dbDir);
    if (!check.ok) {
      const aside = `${o.dbDir}.tampered`;
      rmSync(aside, { recursive: true, force: true });
      renameSync(o.dbDir, aside);
      unreadable = `TAMPERED: ${join(o.dbDir, 'data.mdb')} refused (${check.why}); set aside as ${aside}`;
    }
    const store = RaftStore.open(o.dbDir);
    const r = new FleetReplica(core, store, o);
    let disk: StoredDisk = { entries: [] };
    try {
      disk = store.readAll();
    } catch (e) {
      unreadable ??= `TAMPERED: ${(e as Error).message}`;
    }
    o.transport.onMessage((from, bytes) => r.enqueue({ kind: 'peer', now: r.now(), from, bytes }));
    r.step({ kind: 'start', now: r.now(), disk, unreadable });
    r.startTicks();
    return r;
  }

  get health(): { healthy: boolean; code: string; reason: string } { return this.core.healthState; }

  private now(): number {
    return Math.round(this.clock.at + (Date.now() - this.clock.realAt) * this.clock.rate);
  }

  private startTicks(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = setInterval(() => this.step({ kind: 'tick', now: this.now() }), Math.max(1, Math.round(this.o.tickMs / this.clock.rate)));
  }

  /** The clock fault: from now on time runs at `rate` (ticks too), after a jump of `offsetMs`. */
  setClock(rate: number, offsetMs: number): void {
    this.clock = { realAt: Date.now(), at: this.now() + offsetMs, rate };
    if (!this.closed) this.startTicks();
  }

  status(): LocalStatus {
    return {
      name: this.o.name, ...this.core.status(), stats: { ...this.core.stats, ...this.io, ...transportStats(this.o.transport) },
      metrics: { ...this.core.metrics(), token: this.o.tokenReport?.() ?? {}, snapshots: { ...this.snapshots } },
    };
  }

  /** A device request that reached this replica (from the fleet's HTTP front). */
  handle(user: string, body: Uint8Array): Promise<Outcome> {
    if (this.closed) return Promise.resolve({ ok: false, code: 'CLOSED' });
    const rid = this.nextRid++;
    return new Promise((resolve) => {
      this.pending.set(rid, resolve);
      this.enqueue({ kind: 'request', now: this.now(), rid, user, body });
    });
  }

  /** An operator's membership change or leadership transfer, on this replica's core (it must lead). */
  member(change: MemberChange): Promise<{ ok: true; index: number } | { ok: false; code: string }> {
    if (this.closed) return Promise.resolve({ ok: false, code: 'CLOSED' });
    this.memberAnswer = undefined;
    this.step({ kind: 'membership', now: this.now(), change });
    // A core that stopped itself (FORKED, INVARIANT) steps nothing: no answer is a refusal.
    const a = this.memberAnswer ?? { ok: false as const, code: 'NOT_RUNNING' };
    this.memberAnswer = undefined;
    return Promise.resolve(a);
  }

  /** Peer messages and device requests of one event-loop turn go to the core together (one Ready). */
  private enqueue(input: CoreInput): void {
    this.queued.push(input);
    if (this.queued.length === 1) setImmediate(() => this.step());
  }

  /** `input` after whatever is queued, in arrival order. */
  private step(input?: CoreInput): void {
    const inputs = this.queued;
    this.queued = [];
    if (input) inputs.push(input);
    if (this.closed || inputs.length === 0) return;
    this.io.steps++;
    this.perform(this.core.stepAll(inputs));
  }

  private perform(outs: CoreOutput[]): void {
    for (const o of outs) {
      switch (o.kind) {
        case 'persist': {
          const t0 = performance.now();
          this.onDisk(() => this.store.write(o.write), () => {
            this.io.persistMs += performance.now() - t0;
            this.step({ kind: 'persisted', now: this.now(), id: o.id });
          });
          break;
        }
        case 'compact':
          this.snapshots.count++;
          this.snapshots.lastBytes = o.snapshot.length;
          this.snapshots.totalBytes += o.snapshot.length;
          this.onDisk(() => this.store.compact(o.index, o.snapshot));
          break;
        case 'wipe': this.onDisk(() => this.store.wipe()); break;
        case 'send': this.o.transport.send(o.to, o.bytes); break;
        case 'reply': {
          const done = this.pending.get(o.rid);
          this.pending.delete(o.rid);
          done?.(o.outcome);
          break;
        }
        case 'health': this.o.onEvent?.({ kind: 'health', healthy: o.healthy, code: o.code, reason: o.reason }); break;
        case 'leader': this.o.onEvent?.({ kind: 'leader', term: o.term }); break;
        case 'role': this.o.onEvent?.({ kind: 'role', role: o.role, term: o.term, leader: o.leader }); break;
        case 'rejoined': this.say(`rejoined at ${o.index}`); this.o.onEvent?.({ kind: 'rejoined', index: o.index }); break;
        case 'log': this.say(o.line); break;
        case 'resume': this.step({ kind: 'resume', now: this.now() }); break;
        case 'membership':
          this.say(o.ok ? `membership change proposed at ${o.index}` : `membership change refused: ${o.code}`);
          this.memberAnswer = o.ok ? { ok: true, index: o.index } : { ok: false, code: o.code };
          break;
      }
    }
  }

  private onDisk(op: () => Promise<void>, done?: () => void): void {
    this.disk = this.disk.then(async () => {
      if (this.closed) return;
      try {
        await op();
      } catch (e) {
        const err = e instanceof BkvError ? e : new BkvError('STORE_WRITE_FAILED', `disk write failed: ${(e as Error)?.message ?? 'unknown'}`);
        this.step({ kind: 'diskFailed', now: this.now(), code: err.code, reason: err.message });
        return;
      }
      done?.();
    });
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    clearInterval(this.timer);
    for (const done of this.pending.values()) done({ ok: false, code: 'CLOSED' });
    this.pending.clear();
    await this.o.transport.close();
    await this.disk;
    await this.store.close();
  }

  /**
   * A copy of this replica's LMDB directory at `path`: LMDB copies a read snapshot (whole Readies
   * only) while the replica keeps writing.
   */
  backup(path: string): Promise<void> {
    return this.store.backup(path);
  }
}
