// One replica's host agent: the untrusted shell around the firmware. It owns the clock, the
// randomness source handed to the firmware, the LMDB store and the ReplicatedLog, and shuttles
// inputs and outputs. It never interprets a device message and never holds K.
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import type { Token } from '../../hsm-adapter/token.ts';
import { BkvError } from '../../protocol/errors.ts';
import { createOpaque, type Opaque } from '../../protocol/opaque/index.ts';
import { WIRE_SUITES, type WireSuite } from '../../protocol/wire.ts';
import type { FirmwareInput, FirmwareOutput, Policy } from '../firmware/firmware.ts';
import { SessionGate } from '../firmware/gate.ts';
import { SealedStorage } from '../firmware/storage.ts';
import { SoloLog, type ReplicatedLog } from './log.ts';
import { LogStore } from './store.ts';
import { performOutput, type OutputHost } from './outputs.ts';

export class ReplicaError extends BkvError {}

export interface ReplicaOptions {
  replicaId: string;
  token: Token;
  /** LMDB directory (conventionally <state>/replicas/<name>/db). */
  dbDir: string;
  policy?: Partial<Policy>;
  /** Suites served; default both. */
  suites?: readonly WireSuite[];
  /** Injected for tests; default node:crypto and Date.now. */
  rng?: (n: number) => Uint8Array;
  now?: () => number;
  /** Timer period for ticks (ms); 0 disables the timer (tests tick by hand). */
  tickMs?: number;
  /** One line per event, never a secret. */
  log?: (line: string) => void;
  /** Build the log around the store (tests wrap it to inject faults). */
  makeLog?: (store: LogStore, sealed: SealedStorage) => ReplicatedLog;
}

export interface Health {
  healthy: boolean;
  code?: string;
  reason?: string;
}

const defaultRng = (n: number): Uint8Array => new Uint8Array(randomBytes(n));

export async function servingOpaque(suites: readonly WireSuite[] = WIRE_SUITES): Promise<Partial<Record<WireSuite, Opaque>>> {
  const out: Partial<Record<WireSuite, Opaque>> = {};
  for (const s of suites) out[s] = await createOpaque({ suite: s });
  return out;
}

export class Replica {
  readonly firmware: SessionGate;
  readonly log: ReplicatedLog;
  private readonly store: LogStore;
  private readonly now: () => number;
  private readonly say: (line: string) => void;
  private nextRequest = 1;
  private readonly waiting = new Map<number, (body: Uint8Array, hint?: string) => void>();
  private timer?: NodeJS.Timeout;
  private healthState: Health = { healthy: true };
  private closed = false;

  private constructor(fw: SessionGate, store: LogStore, log: ReplicatedLog, opts: ReplicaOptions) {
    this.firmware = fw;
    this.store = store;
    this.log = log;
    this.now = opts.now ?? Date.now;
    this.say = opts.log ?? (() => undefined);
  }

  /** Opens the store, verifies and replays it. A tampered or rolled-back disk yields an unhealthy replica, not a throw. */
  static async open(opts: ReplicaOptions): Promise<Replica> {
    const fw = new SessionGate({
      replicaId: opts.replicaId,
      token: opts.token,
      opaque: await servingOpaque(opts.suites),
      rng: opts.rng ?? defaultRng,
      policy: opts.policy,
    });
    const store = LogStore.open(opts.dbDir);
    const sealed = new SealedStorage(opts.token, opts.replicaId);
    const log = opts.makeLog ? opts.makeLog(store, sealed) : new SoloLog(store, sealed);
    const r = new Replica(fw, store, log, opts);
    r.run({ kind: 'tick', now: r.now() });
    try {
      await log.start({
        restore: (s) => r.run({ kind: 'restore', index: s.index, state: s.state }),
        committed: (batch) => {
          for (const e of batch) r.run({ kind: 'committed', index: e.index, entry: e.entry });
        },
        failed: (err) => r.run({ kind: 'fault', code: err.code, reason: err.message }),
      });
    } catch (e) {
      const err = e instanceof BkvError ? e : new ReplicaError('START_FAILED', 'replica start failed');
      r.run({ kind: 'fault', code: err.code, reason: err.message });
    }
    const tickMs = opts.tickMs ?? 1000;
    if (tickMs > 0) {
      r.timer = setInterval(() => r.tick(), tickMs);
      r.timer.unref();
    }
    r.say(`replica ${opts.replicaId} started: index ${fw.appliedIndex}, ${r.healthState.healthy ? 'healthy' : `UNHEALTHY ${r.healthState.code}`}`);
    return r;
  }

  get health(): Health {
    return { ...this.healthState };
  }

  tick(): void {
    this.run({ kind: 'tick', now: this.now() });
  }

  /**
   * One device request (user as ChatD authenticated it, body = wire message). Resolves with the wire
   * reply; rejects with ReplicaError (code UNHEALTHY's cause: TAMPERED, ROLLBACK_DETECTED, ...) when
   * the replica does not serve.
   */
  handle(user: string, body: Uint8Array): Promise<Uint8Array> {
    if (this.closed) return Promise.reject(new ReplicaError('CLOSED', 'replica is shut down'));
    if (!this.healthState.healthy) {
      return Promise.reject(new ReplicaError(this.healthState.code ?? 'UNHEALTHY', 'replica is unhealthy and does not serve'));
    }
    const requestId = this.nextRequest++;
    return new Promise((resolve) => {
      this.waiting.set(requestId, resolve);
      this.run({ kind: 'tick', now: this.now() });
      this.run({ kind: 'request', requestId, user, body });
    });
  }

  private run(input: FirmwareInput): void {
    for (const o of this.firmware.step(input)) this.perform(o);
  }

  private perform(o: FirmwareOutput): void {
    performOutput(o, this.outputs);
  }

  private readonly outputs: OutputHost = {
    waiting: this.waiting,
    log: { propose: (e) => this.log.propose(e), compact: (i, st) => this.log.compact(i, st) },
    run: (input) => this.run(input),
    health: (h) => {
      this.healthState = h;
      this.say(`replica ${this.firmware.replicaId} ${h.healthy ? 'healthy' : `UNHEALTHY ${h.code}: ${h.reason}`}`);
    },
  };


  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    if (this.timer) clearInterval(this.timer);
    await this.log.close();
    await this.store.close();
  }
}

export function replicaDbDir(stateDir: string, replica: string): string {
  return join(stateDir, 'replicas', replica, 'db');
}
