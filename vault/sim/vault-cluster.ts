// The deterministic vault cluster: the production replica core (vault/replica/core.ts: firmware,
// Raft, sealing, anchors, votes, rejoin, forwarding, read barriers) hosted on simulated disk,
// network, clock and token, every replica in one thread, driven by a seeded scheduler in virtual
// time. This file is only a host: it performs the core's outputs (a persist completes after a disk
// delay and is lost if the process dies first; sends cross the simulated network) and feeds it
// ticks, deliveries and completions. Devices reach replicas through the same network, so crash,
// restart, pause, partition, delay, drop, duplicate and reorder apply to everything, and a seed
// replays the run exactly (traceHash()). Disks can be copied, rolled back, blanked, torn and
// bit-flipped; peer frames can be forged in another replica's name; tokens are SimTokens (or
// wrapped by the fault-injecting token).

import { createHash } from 'node:crypto';
import { Packr } from 'msgpackr';
import { SeededRng, encodeMessage, type ConfChange, type ConfState, type Message, type NodeId, type RaftNode } from '../consensus/index.ts';
import type { Token } from '../../hsm-adapter/token.ts';
import { createOpaque, tokenServerSecrets, type Opaque } from '../../protocol/opaque/index.ts';
import { fastX25519 } from '../../protocol/opaque/group.ts';
import { tokenSessionKey } from '../../protocol/opaque/secrets.ts';
import { decodeVaultReply, type WireSuite } from '../../protocol/wire.ts';
import type { Policy } from '../firmware/firmware.ts';
import type { SessionGate } from '../firmware/gate.ts';
import { encodeRefused } from '../../protocol/session.ts';
import { decodeEntry } from '../firmware/entries.ts';
import { ReplicaCore, type CoreInput, type CoreOutput, type DiskWrite, type FirmwareLike, type Mutation, type StoredDisk } from '../replica/core.ts';
import { encodePeer } from '../replica/peer-wire.ts';
import { Checker } from './checker.ts';
import { EventQueue, type NetConfig } from './cluster.ts';
import { SimToken, simFleetSecrets } from './token.ts';
import { VaultOracle } from './vault-oracle.ts';

export type { FirmwareLike } from '../replica/core.ts';

export interface VaultClusterOptions {
  readonly seed: number;
  /** Replica ids (default r1, r2, r3). Each gets a SimToken drawn from the seed. */
  readonly replicas?: readonly NodeId[];
  /** Test hook: wrap each replica's token (the fault-injecting token, a broken one). */
  readonly wrapToken?: (t: SimToken, id: NodeId) => Token;
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
  /** Every line of the trace as it is written (debugging a seed). */
  readonly onNote?: (line: string) => void;
  /** Mutation check only: a seeded bug in the replica core. */
  readonly mutation?: Mutation;
}

/** What the device tells the oracle about a request (never sent on the wire). */
export interface RequestMeta {
  /** For a KE3: whether the device used the registered password. */
  readonly correct?: boolean;
}

type Msg =
  | { k: 'peer'; bytes: Uint8Array }
  | { k: 'req'; dev: string; rid: number; user: string; body: Uint8Array }
  | { k: 'rep'; rid: number; body: Uint8Array };

type Event =
  | { kind: 'tick'; id: NodeId; fork: boolean; gen: number }
  | { kind: 'disk'; id: NodeId; fork: boolean; gen: number }
  | { kind: 'deliver'; from: string; to: string; msg: Msg }
  | { kind: 'devTimeout'; rid: number }
  /** What reached a replica at one instant goes to its core together, as the host's event-loop turn does. */
  | { kind: 'inbox'; id: NodeId; fork: boolean; gen: number }
  /** The supervisor looks at a replica that stopped itself, and restarts it. */
  | { kind: 'supervise'; id: NodeId; gen: number };

/** The simulated disk: what a RaftStore holds, as sealed bytes. */
interface SimDisk {
  snapshot?: Uint8Array;
  entries: Map<number, Uint8Array>;
  hardState?: Uint8Array;
}

type DiskOp = { op: 'persist'; id: number; write: DiskWrite } | { op: 'compact'; index: number; snapshot: Uint8Array } | { op: 'wipe' };

interface Replica {
  readonly id: NodeId;
  /** Who the checker and oracle see: the id, or `<id>~fork` for a second instance of that identity. */
  readonly label: string;
  readonly fork: boolean;
  readonly token: Token;
  disk: SimDisk;
  /** A copy of the disk the host took (snapshotDisk), for a later rollback. */
  diskCopy: SimDisk | null;
  core: ReplicaCore | null;
  gen: number;
  /** Disk operations in order; the head one is in progress. */
  diskQueue: DiskOp[];
  /** How far this replica's host clock is off the scheduler's (clock jumps), as of `driftFrom`. */
  skew: number;
  /** Its host clock's rate error (0.1: 10% fast) since `driftFrom`: timers fire early or late too. */
  drift: number;
  driftFrom: number;
  /** Blocked in a slow token call until then: nothing reaches it (its event loop is stuck). */
  busyUntil: number;
  /** Peer messages and requests delivered at this instant, for one stepAll (FleetReplica's queue). */
  inbox: CoreInput[];
  /** Its disk was rolled back, blanked, torn or flipped, and no incarnation has caught up since. */
  lostData: boolean;
  /** Host request id -> the device waiting for it. */
  routes: Map<number, { dev: string; rid: number }>;
  nextRid: number;
  /** Replies the firmware gave inside sessions, by firmware request id, until the oracle judges them. */
  innerReplies: Map<number, Uint8Array>;
}

const packr = new Packr({ useRecords: false, mapsAsObjects: true });
const td = new TextEncoder();
const hex = (b: Uint8Array) => Buffer.from(b).toString('hex');
const STAT_KEYS = ['anchors', 'filtered', 'forwardedOut', 'compactions', 'forgedPeer'] as const;

export class VaultCluster {
  readonly rng: SeededRng;
  readonly checker = new Checker();
  readonly oracle = new VaultOracle();
  readonly net: NetConfig;
  now = 0;
  readonly counts = {
    delivered: 0, dropped: 0, duplicated: 0, flushes: 0, lostFlushes: 0, forwarded: 0, deviceTimeouts: 0, compactions: 0, anchors: 0,
    rereplications: 0, filteredVotes: 0, batchedSteps: 0, forged: 0, forks: 0, forkedStops: 0, membershipChanges: 0, forgedRefused: 0, torn: 0, bitFlips: 0, invariantFailures: 0,
  };
  /** Entries proposed and replies handed out, by type (a test waits on these to stage a fault at one step). */
  readonly proposed: Record<string, number> = {};
  readonly replied: Record<string, number> = {};
  readonly ids: NodeId[];
  /** Each replica's token as the replica sees it (wrapped, if the options wrap tokens). */
  readonly tokens = new Map<NodeId, Token>();
  private readonly simTokens = new Map<NodeId, SimToken>();
  private readonly slowTokens = new Map<NodeId, number>();

  private readonly replicas = new Map<NodeId, Replica>();
  /** Second instances under a replica's identity (fork()), on a copy of its disk and the same token. */
  private readonly forks = new Map<NodeId, Replica>();
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
  private lastMembership = '';
  /** Healing: restart replicas that stop themselves (quiesce() turns it on). */
  private superviseFailed = false;
  /** Set when a device's promise settled: the driver must let its continuation run. */
  private devSettled = false;
  /** Stats of replica incarnations that died (the live ones are read from their cores). */
  private readonly retired: Record<(typeof STAT_KEYS)[number], number> = { anchors: 0, filtered: 0, forwardedOut: 0, compactions: 0, forgedPeer: 0 };

  private constructor(
    private readonly o: VaultClusterOptions,
    private readonly opaque: Partial<Record<WireSuite, Opaque>>,
  ) {
    this.rng = new SeededRng(o.seed);
    this.nodeRng = this.rng.fork();
    this.netRng = this.rng.fork();
    this.fwRng = this.rng.fork();
    const tokenRng = this.rng.fork();
    this.tickMs = o.tickMs ?? 10;
    this.diskMin = o.diskMinMs ?? 1;
    this.diskMax = o.diskMaxMs ?? 3;
    this.leaderWaitMs = o.leaderWaitMs ?? 1_000;
    this.deviceTimeoutMs = o.deviceTimeoutMs ?? 5_000;
    this.net = { minDelayMs: 1, maxDelayMs: 10, dropRate: 0, dupRate: 0, ...o.net };
    this.ids = [...(o.replicas ?? ['r1', 'r2', 'r3'])];
    const fleet = simFleetSecrets(tokenRng);
    for (const id of this.ids) {
      const sim = new SimToken(id, fleet, tokenRng.fork());
      this.simTokens.set(id, sim);
      const token = o.wrapToken ? o.wrapToken(sim, id) : sim;
      this.tokens.set(id, token);
      this.replicas.set(id, {
        id, label: id, fork: false, token, disk: blankDisk(), diskCopy: null, core: null, gen: 0, diskQueue: [], skew: 0, drift: 0, driftFrom: 0, busyUntil: 0, inbox: [], lostData: false, routes: new Map(), nextRid: 1, innerReplies: new Map(),
      });
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
    r.inbox = [];
    // Each incarnation draws its own stream: a restart does not replay the old one's randomness.
    const rng = this.fwRng.fork();
    const inner = new Map<number, Uint8Array>();
    r.innerReplies = inner;
    r.routes = new Map();
    r.diskQueue = [];
    const wrap = this.o.wrapFirmware;
    let core: ReplicaCore;
    try {
      core = this.newCore(r, rng, inner, wrap);
    } catch (e) {
      // The firmware could not even be built (a token error while it derives its keys): the process
      // exits at start, as a real replica's would; the nemesis or quiesce starts it again.
      r.core = null;
      this.note(`start failed ${r.id} ${(e as { code?: string }).code ?? 'ERROR'}`);
      return;
    }
    r.core = core;
    this.note(`start ${r.id} ${r.gen}`);
    // A new incarnation applies from its disk's snapshot (restored() says which) or from the start.
    this.checker.onRestore(r.label, 0);
    this.step(r, { kind: 'start', now: this.now, disk: readDisk(r.disk) });
    if (core.isRejoining) { this.counts.rereplications++; this.note(`rereplicate ${r.id}`); }
    else if (core.isHealthy) r.lostData = false; // the disk it was given holds all it acknowledged
    this.schedule(this.nodeRng.int(this.tickMs) + 1, { kind: 'tick', id: r.id, fork: r.fork, gen: r.gen });
  }

  private newCore(r: Replica, rng: SeededRng, inner: Map<number, Uint8Array>, wrap: VaultClusterOptions['wrapFirmware']): ReplicaCore {
    const core: ReplicaCore = new ReplicaCore({
      id: r.id, voters: this.ids, token: r.token, opaque: this.opaque, policy: this.o.policy,
      rng: (n) => { const b = new Uint8Array(n); for (let i = 0; i < n; i++) b[i] = rng.int(256); return b; },
      raftRng: this.nodeRng.fork(), leaderWaitMs: this.leaderWaitMs, rejoinEveryMs: this.tickMs,
      observeGate: (requestId, body) => inner.set(requestId, body),
      wrapFirmware: wrap ? (g) => wrap(g, r.id) : undefined,
      mutation: this.o.mutation,
      observer: {
        applying: (e) => {
          this.checker.onApply(r.label, e, this.now);
          this.note(`apply ${r.id} ${e.index} ${e.term}`);
          if (e.type === 'normal') this.oracle.onCommitted(e.index, e.data);
          else this.oracle.onSkipped(e.index);
        },
        applied: (e) => {
          if (e.type !== 'normal' || !core.isHealthy) return;
          const user = decodeEntry(e.data).user;
          this.oracle.checkReplica(r.label, e.index, user, this.view(core, user), this.now);
        },
        restored: (index) => {
          this.checker.onRestore(r.label, index);
          this.checkRestored(r.label, core, index);
        },
        proposing: (entry, request) => {
          const e = decodeEntry(entry);
          this.proposed[e.t] = (this.proposed[e.t] ?? 0) + 1;
          const correct = request && this.metas.get(hex(request))?.correct;
          if (e.t === 'Outcome' && correct !== undefined) this.oracle.onOutcomeIntent(e.id, correct);
        },
        replied: (requestId, user, request, reply) => this.judge(r, core, requestId, user, request, reply),
      },
    });
    return core;
  }

  private rep(id: NodeId): Replica {
    const r = this.replicas.get(id);
    if (!r) throw new Error(`no replica ${id}`);
    return r;
  }

  /** What a device pins for this fleet: the AKE public key and the session key (from any token). */
  pins(): { serverPublicKey: Uint8Array; sessionKey: Uint8Array } {
    const t = this.simTokens.get(this.ids[0]!)!;
    return { serverPublicKey: tokenServerSecrets(t, 'ristretto255-SHA512').akeKeyPair.publicKey, sessionKey: tokenSessionKey(t, fastX25519()).publicKey };
  }

  isUp(id: NodeId): boolean { return this.rep(id).core !== null; }
  upIds(): NodeId[] { return this.ids.filter((id) => this.isUp(id)); }
  node(id: NodeId): RaftNode | null { return this.rep(id).core?.raft ?? null; }
  firmware(id: NodeId): FirmwareLike | null { return this.rep(id).core?.firmware ?? null; }
  core(id: NodeId): ReplicaCore | null { return this.rep(id).core; }

  leader(): NodeId | null {
    let best: RaftNode | null = null;
    for (const r of this.replicas.values()) {
      const n = r.core?.raft;
      if (n?.isLeader && (!best || n.currentTerm > best.currentTerm)) best = n;
    }
    return best?.id ?? null;
  }

  /** Kill the process: Raft memory, firmware memory (sessions, waiting requests) and unflushed writes are lost. */
  crash(id: NodeId): void {
    const r = this.rep(id);
    if (!r.core) return;
    this.paused.delete(id);
    for (const k of STAT_KEYS) this.retired[k] += r.core.stats[k];
    this.counts.lostFlushes += r.diskQueue.filter((d) => d.op === 'persist').length;
    r.core = null; r.gen++; r.diskQueue = []; r.routes.clear(); r.busyUntil = 0; r.inbox = [];
    this.note(`crash ${id}`);
  }

  /**
   * Kill the process in the middle of a disk write: of the write in progress, a prefix of its entries
   * reached the disk and the last of them only in part (a torn write). Without one in progress, a crash.
   */
  tornCrash(id: NodeId): void {
    const r = this.rep(id);
    const head = r.diskQueue[0];
    if (r.core && head?.op === 'persist' && head.write.entries.length > 0) {
      const es = head.write.entries;
      const keep = es.slice(0, 1 + this.netRng.int(es.length));
      const torn = keep.map((e, i) => (i === keep.length - 1 ? { index: e.index, sealed: e.sealed.subarray(0, Math.max(1, e.sealed.length >> 1)) } : e));
      writeDisk(r.disk, { entries: torn });
      r.lostData = true;
      this.counts.torn++;
      this.note(`torn ${id} ${keep.length}/${es.length}`);
    }
    this.crash(id);
  }

  /** The host flips one bit of something the replica stored (it notices at its next start). */
  flipBit(id: NodeId): void {
    const r = this.rep(id);
    const items: Uint8Array[] = [...r.disk.entries.values()];
    if (r.disk.snapshot) items.push(r.disk.snapshot);
    if (r.disk.hardState) items.push(r.disk.hardState);
    if (items.length === 0) return;
    const pick = items[this.netRng.int(items.length)]!;
    const copy = new Uint8Array(pick);
    copy[this.netRng.int(copy.length)]! ^= 1 << this.netRng.int(8);
    for (const [i, v] of r.disk.entries) if (v === pick) r.disk.entries.set(i, copy);
    if (r.disk.snapshot === pick) r.disk.snapshot = copy;
    if (r.disk.hardState === pick) r.disk.hardState = copy;
    r.lostData = true;
    this.counts.bitFlips++;
    this.note(`flip ${id}`);
  }

  /**
   * A fork: the host starts a second instance of replica `id` on a copy of its disk and the same
   * token, and the network reaches one or the other at random. Both speak as `id`. The token's
   * vote and anchor must make at least one of them fail closed (FORKED) before it promises anything.
   */
  fork(id: NodeId): void {
    const r = this.rep(id);
    if (this.forks.has(id) || !r.core) return;
    const twin: Replica = {
      id, label: `${id}~fork`, fork: true, token: r.token, disk: copyDisk(r.disk), diskCopy: null, core: null, gen: 0, diskQueue: [], skew: r.skew, drift: r.drift, driftFrom: r.driftFrom, busyUntil: 0, inbox: [], lostData: false,
      routes: new Map(), nextRid: 1, innerReplies: new Map(),
    };
    this.forks.set(id, twin);
    this.counts.forks++;
    this.note(`fork ${id}`);
    this.start(twin);
  }

  isForked(id: NodeId): boolean { return this.forks.has(id); }

  /** An operator's membership change, handed to the leader's core: 'ok' (proposed) or why not. */
  changeMembership(change: ConfChange): string {
    const l = this.leader();
    if (!l) return 'NO_LEADER';
    this.lastMembership = '';
    this.step(this.rep(l), { kind: 'membership', now: this.now, change });
    this.note(`membership ${change.op} ${'node' in change ? change.node : ''} ${this.lastMembership}`);
    if (this.lastMembership === 'ok') this.counts.membershipChanges++;
    return this.lastMembership || 'NO_ANSWER';
  }

  /** The leader's configuration (voters and learners), or null without a leader. */
  configuration(): ConfState | null {
    const l = this.leader();
    return l ? this.rep(l).core!.raft!.confState() : null;
  }

  /** The host restarts replica `id` on a copy of another replica's disk (sealed for that one). */
  swapDisk(id: NodeId, from: NodeId): void {
    const r = this.rep(id);
    this.crash(id);
    r.disk = copyDisk(this.rep(from).disk);
    r.lostData = true;
    this.note(`swapDisk ${id} from ${from}`);
  }

  /** The host stops every second instance. */
  endForks(): void {
    for (const [id, t] of this.forks) {
      t.core = null; t.gen++; t.diskQueue = []; t.inbox = [];
      this.note(`unfork ${id}`);
    }
    this.forks.clear();
  }

  /** The replica's host clock jumps by `ms` (either way) from now on. */
  clockJump(id: NodeId, ms: number): void {
    const r = this.rep(id);
    r.skew += ms;
    this.note(`clock ${id} ${ms >= 0 ? '+' : ''}${ms}`);
  }

  /** The replica's host clock runs `rate` fast (negative: slow) from now on; its timers with it. */
  clockDrift(id: NodeId, rate: number): void {
    if (!(rate > -0.9 && rate < 10)) throw new RangeError(`clock drift ${rate} out of range`);
    const r = this.rep(id);
    r.skew += Math.round((this.now - r.driftFrom) * r.drift);
    r.driftFrom = this.now;
    r.drift = rate;
    this.note(`drift ${id} ${rate}`);
  }

  /**
   * Every call to the replica's token takes time from now on (`perWriteMs` per data-object write, the
   * anchor and vote; a tenth of it per other call), blocking the replica as a slow PKCS#11 call blocks
   * its process. 0 makes it fast again; heal() does too.
   */
  slowToken(id: NodeId, perWriteMs: number): void {
    if (!(perWriteMs >= 0)) throw new RangeError(`slow token ${perWriteMs} out of range`);
    if (perWriteMs === 0) this.slowTokens.delete(id); else this.slowTokens.set(id, perWriteMs);
    this.note(`slow token ${id} ${perWriteMs}`);
  }

  isHealthy(id: NodeId): boolean { return !!this.rep(id).core?.isHealthy; }

  /** The host copies a replica's disk (taken between writes, as LMDB's snapshot copy is). */
  snapshotDisk(id: NodeId): void {
    const r = this.rep(id);
    r.diskCopy = copyDisk(r.disk);
    this.note(`snapshotDisk ${id}`);
  }

  /** The host rolls a replica's disk back to its last copy (or blanks it if none), killing the process first. */
  rollbackDisk(id: NodeId): void {
    const r = this.rep(id);
    this.crash(id);
    r.disk = r.diskCopy ? copyDisk(r.diskCopy) : blankDisk();
    r.lostData = true;
    this.note(`rollbackDisk ${id}`);
  }

  /** Amnesia: the host gives the replica a blank disk under its identity (its token keeps its anchor). */
  blankDisk(id: NodeId): void {
    const r = this.rep(id);
    this.crash(id);
    r.disk = blankDisk();
    r.lostData = true;
    this.note(`blankDisk ${id}`);
  }

  /** The whole fleet killed at once and started again (every replica that was up, or all). */
  wholeFleetRestart(only?: NodeId[]): void {
    for (const id of this.ids) this.crash(id);
    for (const id of only ?? this.ids) this.restart(id);
  }

  isRejoining(id: NodeId): boolean { return !!this.rep(id).core?.isRejoining; }

  /** Its disk lost what it acknowledged (a disk fault) and it has not caught up since. */
  lacksData(id: NodeId): boolean { return this.rep(id).lostData || this.isRejoining(id); }

  restart(id: NodeId): void {
    const r = this.rep(id);
    this.paused.delete(id);
    if (!r.core) this.start(r);
  }

  /** Stop a replica's process without killing it (GC pause, SIGSTOP): no ticks, no disk completion, inbound queues. */
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

  /** Links that carry nothing from `from` to `to` ("from>to"), beside the groups: partitions of other shapes. */
  private readonly cut = new Set<string>();

  /** The link from `from` to `to` stops carrying messages (and the reverse one too unless `oneWay`). */
  cutLink(from: NodeId, to: NodeId, oneWay = false): void {
    this.cut.add(`${from}>${to}`);
    if (!oneWay) this.cut.add(`${to}>${from}`);
    this.note(`cut ${from}${oneWay ? '>' : '<>'}${to}`);
  }

  /**
   * A bridge partition: `a` and `b` cannot talk to each other, but `via` talks to both (it can see a
   * majority that cannot see each other, the classic case for a leader that cannot be deposed).
   */
  bridge(a: NodeId[], b: NodeId[], via: NodeId): void {
    this.groups = null;
    for (const x of a) for (const y of b) if (x !== via && y !== via) { this.cut.add(`${x}>${y}`); this.cut.add(`${y}>${x}`); }
    this.note(`bridge ${JSON.stringify(a)} ${JSON.stringify(b)} via ${via}`);
  }

  /** A ring: each replica talks only to its two neighbours in `order`. */
  ring(order: NodeId[]): void {
    this.groups = null;
    const n = order.length;
    for (let i = 0; i < n; i++) for (let j = 0; j < n; j++) {
      const d = Math.min((i - j + n) % n, (j - i + n) % n);
      if (d > 1) this.cut.add(`${order[i]}>${order[j]}`);
    }
    this.note(`ring ${order.join('-')}`);
  }

  /** Reconnect everything and resume paused replicas. */
  heal(): void {
    for (const id of [...this.paused.keys()]) this.resume(id);
    this.slowTokens.clear();
    this.groups = null;
    this.cut.clear();
    this.note('heal');
  }

  /**
   * Frames on an authenticated link that speak in other replicas' names (what a compromised peer or
   * a relaying bug could send): to a candidate, vote grants from every other voter in its term; else
   * to the leader, acknowledgements of its whole log from every follower. Replicas must refuse them.
   */
  forge(): void {
    const up = this.ids.map((id) => this.rep(id).core?.raft).filter((n): n is RaftNode => !!n);
    const target = up.find((n) => n.softState().role === 'candidate') ?? up.find((n) => n.isLeader);
    if (!target) return;
    const others = this.ids.filter((x) => x !== target.id);
    const liar = others[this.netRng.int(others.length)]!;
    const term = target.currentTerm;
    const candidate = target.softState().role === 'candidate';
    for (const from of others) {
      if (from === liar) continue;
      const f: Message = candidate
        ? { from, to: target.id, term, type: 'voteResp', reject: false }
        : { from, to: target.id, term, type: 'appendResp', index: target.lastIndex, reject: false, hint: 0 };
      this.counts.forged++;
      this.note(`forge ${liar}>${target.id} as ${from} ${f.type}`);
      this.schedule(0, { kind: 'deliver', from: liar, to: target.id, msg: { k: 'peer', bytes: encodePeer({ kind: 'raft', bytes: encodeMessage(f) }) } });
    }
  }

  /** Devices are outside the replicas' partition groups: they reach every replica (over a lossy net). */
  private canTalk(from: string, to: string): boolean {
    if (this.cut.has(`${from}>${to}`)) return false;
    if (!this.groups || !this.replicas.has(from) || !this.replicas.has(to)) return true;
    return (this.groups.get(from) ?? 0) === (this.groups.get(to) ?? 0);
  }

  // ---------------------------------------------------------------- the host: performing outputs

  private step(r: Replica, input: CoreInput): void {
    this.stepAll(r, [{ ...input, now: this.clockOf(r) }]);
  }

  /** Inputs stamped with the replica's clock when they arrived. */
  private stepAll(r: Replica, inputs: CoreInput[]): void {
    const core = r.core;
    if (!core) return;
    // The host's clock is what the replica is told (it may jump); the core never lets it run backwards.
    const sim = this.simTokens.get(r.id)!;
    const [calls, writes] = [sim.calls, sim.dataWrites];
    const out = core.stepAll(inputs);
    const slow = this.slowTokens.get(r.id);
    if (slow) r.busyUntil = Math.max(r.busyUntil, this.now) + Math.round((sim.dataWrites - writes) * slow + (sim.calls - calls - (sim.dataWrites - writes)) * slow / 10);
    this.perform(r, core, out);
    if (r.core === core && core.raft) this.checker.observe(core.raft, this.now);
  }

  private clockOf(r: Replica): number {
    return Math.max(0, this.now + r.skew + Math.round((this.now - r.driftFrom) * r.drift));
  }

  /** A replica blocked in a slow token call takes the event later, in arrival order. */
  private busy(r: Replica, ev: Event): boolean {
    if (r.busyUntil <= this.now) return false;
    this.schedule(r.busyUntil - this.now, ev);
    return true;
  }

  private perform(r: Replica, core: ReplicaCore, out: CoreOutput[]): void {
    for (const o of out) {
      if (r.core !== core) return;
      switch (o.kind) {
        case 'persist': this.queueDisk(r, { op: 'persist', id: o.id, write: o.write }); break;
        case 'compact': this.queueDisk(r, { op: 'compact', index: o.index, snapshot: o.snapshot }); break;
        case 'wipe': this.queueDisk(r, { op: 'wipe' }); break;
        case 'send': this.send(r.id, o.to, { k: 'peer', bytes: o.bytes }); break;
        case 'reply': {
          const route = r.routes.get(o.rid);
          r.routes.delete(o.rid);
          if (route) this.send(r.id, route.dev, { k: 'rep', rid: route.rid, body: o.outcome.ok ? o.outcome.body : encodeRefused(o.outcome.code) });
          break;
        }
        case 'health':
          this.note(`health ${r.id} ${String(o.healthy)} ${o.code}`);
          if (o.code === 'FORKED') this.counts.forkedStops++;
          // While healing, a replica that stops itself is restarted by its supervisor, as in production.
          if (!o.healthy && this.superviseFailed && !r.fork) this.schedule(100, { kind: 'supervise', id: r.id, gen: r.gen });
          if (o.code === 'INVARIANT') { this.counts.invariantFailures++; this.oracle.fail(`t=${this.now}: ${r.id} broke an invariant: ${o.reason}`); }
          break;
        case 'resume': this.step(r, { kind: 'resume', now: this.now }); break;
        case 'membership': this.lastMembership = o.ok ? 'ok' : o.code; break;
        case 'rejoined': r.lostData = false; break;
        case 'leader': case 'role': case 'log': break;
      }
    }
  }

  private queueDisk(r: Replica, op: DiskOp): void {
    r.diskQueue.push(op);
    if (r.diskQueue.length === 1) this.schedule(this.diskMin + this.nodeRng.int(this.diskMax - this.diskMin + 1), { kind: 'disk', id: r.id, fork: r.fork, gen: r.gen });
  }

  private diskDone(r: Replica): void {
    const op = r.diskQueue.shift();
    if (!op) return;
    if (r.diskQueue.length > 0) this.schedule(this.diskMin + this.nodeRng.int(this.diskMax - this.diskMin + 1), { kind: 'disk', id: r.id, fork: r.fork, gen: r.gen });
    switch (op.op) {
      case 'persist':
        writeDisk(r.disk, op.write);
        this.counts.flushes++;
        this.step(r, { kind: 'persisted', now: this.now, id: op.id });
        return;
      case 'compact':
        r.disk.snapshot = op.snapshot;
        for (const k of [...r.disk.entries.keys()]) if (k <= op.index) r.disk.entries.delete(k);
        return;
      case 'wipe':
        r.disk = blankDisk();
        return;
    }
  }

  // ---------------------------------------------------------------- the oracle's windows

  private view(core: ReplicaCore, user: string): { used: number; locked: boolean } | undefined {
    const v = core.firmware.inspect(user);
    return v && { used: v.used, locked: v.state === 'locked' };
  }

  /** After a restore: every record the replica holds matches the committed history at that index. */
  private checkRestored(id: NodeId, core: ReplicaCore, index: number): void {
    if (!core.isHealthy) return;
    for (const u of this.knownUsers) this.oracle.checkReplica(id, index, u, this.view(core, u), this.now);
  }

  /** Users the oracle checks on snapshot restores (the workload declares them). */
  readonly knownUsers = new Set<string>();

  // The oracle's side channel: which request carried which intent (a real network has none).
  private readonly metas = new Map<string, RequestMeta>();

  /** A firmware reply left the firmware: the oracle judges what it said inside the session. */
  private judge(r: Replica, core: ReplicaCore, requestId: number, user: string, request: Uint8Array, body: Uint8Array): void {
    // A copy served from the gate's memory, or a refusal, carries no new evaluation.
    const inner = r.innerReplies.get(requestId);
    r.innerReplies.delete(requestId);
    if (!inner) return;
    const reply = decodeVaultReply(inner);
    this.replied[reply.t] = (this.replied[reply.t] ?? 0) + 1;
    const meta = this.metas.get(hex(request)) ?? {};
    if (reply.t === 'KE2') this.oracle.onKE2(r.label, user, reply.session, this.now, body);
    if (reply.t === 'Status' && core.isHealthy) this.oracle.onStatus(r.label, user, core.firmware.appliedIndex, reply, this.now);
    if (reply.t === 'Released') this.oracle.onReleased(r.label, user, core.firmware.appliedIndex, meta.correct, this.now, body);
  }

  // ---------------------------------------------------------------- devices

  /**
   * A device's `send` (client/password.ts's Send) to replica `to` (or, each call, a replica picked
   * by `pick`). The reply comes back through the simulated network; if none within the device
   * timeout, the promise rejects with DeviceTimeout (outcome unknown).
   */
  deviceSend(dev: string, user: string, pick: () => NodeId, meta: () => RequestMeta = () => ({})): (body: Uint8Array) => Promise<Uint8Array> {
    return (body) => new Promise<Uint8Array>((resolve, reject) => {
      const rid = this.nextRid++;
      this.metas.set(hex(body), meta());
      this.devWaiting.set(rid, { resolve, reject });
      const to = pick();
      this.note(`req ${dev}>${to} ${rid}`);
      this.send(dev, to, { k: 'req', dev, rid, user, body });
      this.schedule(this.deviceTimeoutMs, { kind: 'devTimeout', rid });
    });
  }

  // ---------------------------------------------------------------- end of run

  /** Heal, stop losing messages, restart everyone, run until every replica applied the leader's log. */
  async quiesce(maxMs = 20_000): Promise<boolean> {
    this.endForks();
    this.heal();
    this.net.dropRate = 0;
    this.net.dupRate = 0;
    // A replica that stopped itself (a token error, a disk failure, a fork) is restarted, as its
    // supervisor would, now and whenever it happens again while healing.
    this.superviseFailed = true;
    for (const id of this.ids) if (this.isUp(id) && !this.isHealthy(id)) this.crash(id);
    for (const id of this.ids) this.restart(id);
    return this.runUntil(() => {
      const l = this.leader();
      if (!l) return false;
      const ln = this.rep(l).core!.raft!;
      const c = ln.commitIndex;
      const conf = ln.confState();
      const members = this.upIds().filter((id) => conf.voters.includes(id) || conf.learners.includes(id));
      return ln.termAt(c) === ln.currentTerm && ln.lastIndex === c
        && members.every((id) => { const core = this.rep(id).core!; return core.appliedIndex === c && core.raft?.commitIndex === c; });
    }, maxMs);
  }

  /** Invariant 8: every running replica holds the same applied index and firmware state digest. */
  checkConverged(): void {
    const m = new Map<NodeId, { applied: number; digest: string }>();
    const conf = this.configuration();
    for (const id of this.upIds()) {
      // A replica removed from the configuration no longer follows the fleet.
      if (conf && !conf.voters.includes(id) && !conf.learners.includes(id)) continue;
      const core = this.rep(id).core!;
      m.set(id, { applied: core.appliedIndex, digest: core.isHealthy ? core.firmware.digest() : `unhealthy` });
    }
    this.checker.checkConverged(m, this.now);
  }

  violations(): string[] { return [...this.checker.violations, ...this.oracle.violations]; }

  /** Core counters summed over every incarnation. */
  coreStats(): Record<(typeof STAT_KEYS)[number], number> {
    const s = { ...this.retired };
    for (const r of this.replicas.values()) if (r.core) for (const k of STAT_KEYS) s[k] += r.core.stats[k];
    return s;
  }

  // ---------------------------------------------------------------- scheduler

  private schedule(delay: number, ev: Event): void {
    this.q.push({ at: this.now + Math.max(0, Math.floor(delay)), seq: this.seq++, ev: ev as never });
  }

  private note(s: string): void {
    this.trace.update(td.encode(`${this.now}|${s}\n`));
    this.o.onNote?.(`${this.now}|${s}`);
  }

  traceHash(): string { return this.trace.copy().digest('hex'); }

  private stepOnce(): boolean {
    const x = this.q.pop();
    if (!x) return false;
    this.now = x.at;
    const ev = x.ev as unknown as Event;
    switch (ev.kind) {
      case 'tick': {
        const r = ev.fork ? this.forks.get(ev.id) : this.rep(ev.id);
        if (!r) return true;
        if (r.gen !== ev.gen || !r.core) return true;
        if (this.busy(r, ev)) return true;
        if (!this.paused.has(r.id)) this.step(r, { kind: 'tick', now: this.now });
        this.schedule(Math.max(1, Math.round(this.tickMs / (1 + r.drift))), ev);
        return true;
      }
      case 'disk': {
        const r = ev.fork ? this.forks.get(ev.id) : this.rep(ev.id);
        if (!r) return true;
        if (r.gen !== ev.gen || !r.core) return true;
        if (this.paused.has(r.id)) { this.schedule(this.tickMs, ev); return true; }
        if (this.busy(r, ev)) return true;
        this.diskDone(r);
        return true;
      }
      case 'deliver':
        this.deliver(ev.from, ev.to, ev.msg);
        return true;
      case 'inbox': {
        const r = ev.fork ? this.forks.get(ev.id) : this.rep(ev.id);
        if (!r || r.gen !== ev.gen || !r.core) return true;
        const inputs = r.inbox;
        r.inbox = [];
        if (inputs.length > 1) this.counts.batchedSteps++;
        this.stepAll(r, inputs);
        return true;
      }
      case 'supervise': {
        const r = this.rep(ev.id);
        if (r.gen !== ev.gen || !r.core || r.core.isHealthy) return true;
        this.note(`supervisor restarts ${r.id}`);
        this.crash(r.id);
        this.restart(r.id);
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
    this.syncCounts();
  }

  /** Run until `pred` holds (checked after each event) or `maxMs` passes. */
  async runUntil(pred: () => boolean, maxMs: number): Promise<boolean> {
    const end = this.now + maxMs;
    await drain();
    try {
      while (!pred()) {
        const top = this.q.peek();
        if (!top || top.at > end) { this.now = Math.max(this.now, end); return pred(); }
        this.stepOnce();
        if (this.devSettled) { this.devSettled = false; await drain(); }
      }
      return true;
    } finally {
      this.syncCounts();
    }
  }

  private syncCounts(): void {
    const s = this.coreStats();
    this.counts.anchors = s.anchors;
    this.counts.filteredVotes = s.filtered;
    this.counts.forwarded = s.forwardedOut;
    this.counts.compactions = s.compactions;
    this.counts.forgedRefused = s.forgedPeer;
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
      this.note(`rep ${to} ${msg.rid} ${hex(msg.body)}`);
      this.devSettled = true;
      w.resolve(msg.body);
      return;
    }
    let r = this.replicas.get(to);
    const twin = this.forks.get(to);
    // A forked identity: each message reaches one of its two instances.
    if (twin?.core && (!r?.core || this.netRng.int(2) === 0)) r = twin;
    if (!r?.core) { this.counts.dropped++; return; }
    const held = this.paused.get(to);
    if (held) { held.push({ from, msg }); return; }
    if (this.busy(r, { kind: 'deliver', from, to, msg })) return;
    this.counts.delivered++;
    this.trace.update(td.encode(`${this.now}|d|${from}>${to}|${msg.k}|`));
    this.trace.update(packr.pack(msg));
    if (msg.k === 'peer') return this.enqueue(r, { kind: 'peer', now: this.clockOf(r), from, bytes: msg.bytes });
    const rid = r.nextRid++;
    r.routes.set(rid, { dev: msg.dev, rid: msg.rid });
    this.enqueue(r, { kind: 'request', now: this.clockOf(r), rid, user: msg.user, body: msg.body });
  }

  private enqueue(r: Replica, input: CoreInput): void {
    r.inbox.push(input);
    if (r.inbox.length === 1) this.schedule(0, { kind: 'inbox', id: r.id, fork: r.fork, gen: r.gen });
  }
}

export class DeviceTimeout extends Error {
  readonly code = 'DEVICE_TIMEOUT';
  constructor() { super('no reply from the vault in time: outcome unknown'); }
}

/** Lets every pending promise continuation run (setImmediate fires after the microtask queue drains). */
function drain(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}

function blankDisk(): SimDisk {
  return { entries: new Map() };
}

function copyDisk(d: SimDisk): SimDisk {
  return { snapshot: d.snapshot, entries: new Map(d.entries), hardState: d.hardState };
}

function readDisk(d: SimDisk): StoredDisk {
  return { snapshot: d.snapshot, hardState: d.hardState, entries: [...d.entries].sort((a, b) => a[0] - b[0]).map(([index, sealed]) => ({ index, sealed })) };
}

/** As RaftStore.write: one atomic write. */
function writeDisk(d: SimDisk, w: DiskWrite): void {
  if (w.snapshot) { d.snapshot = w.snapshot; d.entries.clear(); }
  if (w.entries.length > 0) {
    const first = w.entries[0]!.index;
    for (const k of [...d.entries.keys()]) if (k >= first) d.entries.delete(k);
    for (const e of w.entries) d.entries.set(e.index, e.sealed);
  }
  if (w.hardState) d.hardState = w.hardState;
}
