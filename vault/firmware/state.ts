// The replicated record state: what every replica holds after applying the same committed entries.
// apply() is deterministic and total (every decodable entry applies, possibly as a no-op), so equal
// logs give equal state digests on every replica. K never leaves this module unsealed: records hold
// it sealed under the fleet entry key, and lockout / delete / change drop that seal for good.
import { createHash } from 'node:crypto';
import { Packr } from 'msgpackr';
import { KSF_NAME_RE, isWireSuite, type RecordState, type WireSuite } from '../../protocol/wire.ts';
import { ID_BYTES, USER_RE, type VaultEntry } from './entries.ts';
import { FirmwareError } from './errors.ts';

export interface UserRecord {
  suite: WireSuite;
  oprfId: Uint8Array;
  /** OPAQUE registration record; empty once locked. */
  record: Uint8Array;
  /** K sealed under the entry key; null once locked. */
  kSealed: Uint8Array | null;
  limit: number;
  /** Index of the entry that stored this record: a registration based on an older state is stale. */
  changedAt: number;
  /** Key stretching the device registered with (Ksf.name). */
  ksf: string;
  /** OPRF evaluations charged since registration or the last reset. */
  used: number;
  locked: boolean;
}

/** What applying one entry did: the proposer turns it into the device's reply. */
export type ApplyEffect =
  | { kind: 'stored' }
  | { kind: 'charged'; attemptsLeft: number }
  | { kind: 'unknown-user' }
  | { kind: 'locked'; justNow: boolean }
  | { kind: 'reset' }
  /** A correct KE3 under a no-reset policy: nothing changes. */
  | { kind: 'verified' }
  /** A wrong KE3 below the limit: nothing changes; this many attempts are left. */
  | { kind: 'failed'; attemptsLeft: number }
  | { kind: 'stale' }
  | { kind: 'deleted'; existed: boolean };

/**
 * A deleted user's mark: the index of the Delete. A registration whose basis (the index the vault had
 * applied when it issued the ticket) is older is refused, so nothing issued before a Disable brings
 * the record back. Log positions only: no clock, host-fed or otherwise, moves this.
 */
export interface Tombstone {
  at: number;
}

/**
 * How many log positions a registration ticket stays good for, and so how long a tombstone must be
 * kept. Tickets also die with the in-memory session they were issued in (firmware gate), so this only
 * bounds the tombstone set.
 */
export const TICKET_SPAN = 100_000;
/** v3: records carry changedAt and ksf, tombstones an index (older formats are refused). */
const SNAPSHOT_VERSION = 3;
const packr = new Packr({ useRecords: false, mapsAsObjects: true, variableMapSize: false });
const EMPTY = new Uint8Array(0);

export class VaultState {
  private readonly users = new Map<string, UserRecord>();
  private readonly tombstones = new Map<string, Tombstone>();
  /** Index of the last applied entry (0 = none). */
  appliedIndex = 0;
  private digestMemo: string | null = null;

  get(user: string): Readonly<UserRecord> | undefined {
    return this.users.get(user);
  }

  tombstone(user: string): Readonly<Tombstone> | undefined {
    return this.tombstones.get(user);
  }

  /** Whether a registration issued at `basis` would be refused as stale if it committed at `index`. */
  isStaleRegistration(user: string, basis: number, index = this.appliedIndex + 1): boolean {
    const r = this.users.get(user);
    const t = this.tombstones.get(user);
    return index - basis > TICKET_SPAN || (r !== undefined && basis < r.changedAt) || (t !== undefined && basis < t.at);
  }

  status(user: string): { state: RecordState; attemptsLeft: number; limit: number } {
    const r = this.users.get(user);
    if (!r) return { state: 'none', attemptsLeft: 0, limit: 0 };
    if (r.locked) return { state: 'locked', attemptsLeft: 0, limit: r.limit };
    return { state: 'registered', attemptsLeft: r.limit - r.used, limit: r.limit };
  }

  apply(index: number, e: VaultEntry): ApplyEffect {
    // Records only ever change here (and in decode, which builds a new state).
    this.digestMemo = null;
    // Strictly increasing, gaps allowed: Raft's own entries (leader no-ops, membership changes) take
    // indexes the firmware never sees. Gaps in a stored log are caught by the chain, not here.
    if (!Number.isSafeInteger(index) || index <= this.appliedIndex) {
      throw new FirmwareError('BAD_ENTRY', `entry ${index} applied after ${this.appliedIndex}: the log repeats or goes back`);
    }
    this.appliedIndex = index;
    const r = this.users.get(e.user);
    switch (e.t) {
      case 'Register':
      case 'ChangePassword': {
        // A registration issued before the record last changed (or was deleted) must not roll it back
        // to an older password, nor bring a deleted one back.
        const stale = this.isStaleRegistration(e.user, e.basis, index);
        this.sweep(index);
        if (stale) return { kind: 'stale' };
        // The record's own changedAt (newer than the tombstone) now refuses older tickets.
        this.tombstones.delete(e.user);
        // Atomic: record and K arrive in one entry, so no record is ever usable without its K.
        this.users.set(e.user, {
          suite: e.suite,
          oprfId: e.oprfId,
          record: e.record,
          kSealed: e.kSealed,
          limit: e.limit,
          changedAt: index,
          ksf: e.ksf,
          used: 0,
          locked: false,
        });
        return { kind: 'stored' };
      }
      case 'Attempt':
        if (!r) return { kind: 'unknown-user' };
        if (r.locked) return { kind: 'locked', justNow: false };
        if (r.used >= r.limit) {
          lock(r);
          return { kind: 'locked', justNow: true };
        }
        r.used += 1;
        return { kind: 'charged', attemptsLeft: r.limit - r.used };
      case 'Reset':
        if (!r || r.locked || !sameBytes(r.oprfId, e.oprfId)) return { kind: 'stale' };
        r.used = 0;
        return { kind: 'reset' };
      case 'Outcome':
        if (!r || !sameBytes(r.oprfId, e.oprfId)) return { kind: 'stale' };
        if (r.locked) return { kind: 'locked', justNow: false };
        if (e.ok) {
          if (!e.reset) return { kind: 'verified' };
          r.used = 0;
          return { kind: 'reset' };
        }
        // A wrong password with none left locks (decided on the committed counter, on every replica).
        if (r.used >= r.limit) {
          lock(r);
          return { kind: 'locked', justNow: true };
        }
        return { kind: 'failed', attemptsLeft: r.limit - r.used };
      case 'Lock':
        if (!r || !sameBytes(r.oprfId, e.oprfId)) return { kind: 'stale' };
        if (r.locked) return { kind: 'locked', justNow: false };
        lock(r);
        return { kind: 'locked', justNow: true };
      case 'Delete':
        this.sweep(index);
        this.tombstones.set(e.user, { at: index });
        return { kind: 'deleted', existed: this.users.delete(e.user) };
    }
  }

  /** Drops tombstones no ticket can be older than any more; a function of committed indexes only. */
  private sweep(index: number): void {
    for (const [u, t] of this.tombstones) if (index - t.at > TICKET_SPAN) this.tombstones.delete(u);
  }

  /** Canonical encoding (users sorted): the snapshot body and the input of digest(). */
  encode(): Uint8Array {
    const users = [...this.users.keys()].sort().map((u) => {
      const r = this.users.get(u)!;
      return [u, r.suite, r.oprfId, r.record, r.kSealed ?? EMPTY, r.limit, r.changedAt, r.ksf, r.used, r.locked];
    });
    const tombstones = [...this.tombstones.keys()].sort().map((u) => [u, this.tombstones.get(u)!.at]);
    return packr.pack({ v: SNAPSHOT_VERSION, index: this.appliedIndex, users, tombstones });
  }

  /** Memoized: status polls (the fleet front's router, every 100 ms) must not re-encode every record. */
  digest(): string {
    this.digestMemo ??= createHash('sha256').update(this.encode()).digest('hex');
    return this.digestMemo;
  }

  static decode(bytes: Uint8Array): VaultState {
    const bad = (why: string) => new FirmwareError('BAD_SNAPSHOT', `snapshot refused: ${why}`);
    let m: unknown;
    try {
      m = packr.unpack(bytes);
    } catch {
      throw bad('not msgpack');
    }
    const o = m as Record<string, unknown>;
    if (typeof o !== 'object' || o === null || o.v !== SNAPSHOT_VERSION) throw bad('unknown version');
    for (const k of Object.keys(o)) if (!['v', 'index', 'users', 'tombstones'].includes(k)) throw bad('unexpected field');
    const index = (v: unknown): v is number => typeof v === 'number' && Number.isSafeInteger(v) && v >= 0;
    if (!index(o.index)) throw bad('bad index');
    if (!Array.isArray(o.users) || !Array.isArray(o.tombstones)) throw bad('no users or tombstones');
    const s = new VaultState();
    s.appliedIndex = o.index;
    let prev = '';
    for (const row of o.users as unknown[]) {
      if (!Array.isArray(row) || row.length !== 10) throw bad('bad row');
      const [u, suite, oprfId, record, kSealed, limit, changedAt, ksf, used, locked] = row as unknown[];
      if (typeof u !== 'string' || !USER_RE.test(u) || u <= prev) throw bad('bad or unsorted user');
      prev = u;
      if (!isWireSuite(suite)) throw bad('bad suite');
      if (!(oprfId instanceof Uint8Array) || oprfId.length !== ID_BYTES) throw bad('bad oprf id');
      if (!(record instanceof Uint8Array) || !(kSealed instanceof Uint8Array)) throw bad('bad bytes');
      if (typeof limit !== 'number' || typeof used !== 'number' || !Number.isSafeInteger(limit) || !Number.isSafeInteger(used)) throw bad('bad counter');
      if (used < 0 || used > limit || typeof locked !== 'boolean') throw bad('bad counter');
      if (!index(changedAt) || changedAt > o.index) throw bad('bad change index');
      if (typeof ksf !== 'string' || !KSF_NAME_RE.test(ksf)) throw bad('bad key stretching');
      if (locked !== (kSealed.length === 0)) throw bad('K present on a locked record');
      s.users.set(u, {
        suite,
        oprfId: new Uint8Array(oprfId),
        record: new Uint8Array(record),
        kSealed: locked ? null : new Uint8Array(kSealed),
        limit,
        changedAt,
        ksf,
        used,
        locked,
      });
    }
    prev = '';
    for (const row of o.tombstones as unknown[]) {
      if (!Array.isArray(row) || row.length !== 2) throw bad('bad tombstone');
      const [u, at] = row as unknown[];
      if (typeof u !== 'string' || !USER_RE.test(u) || u <= prev) throw bad('bad or unsorted tombstone user');
      if (s.users.has(u)) throw bad('tombstone for a live record');
      prev = u;
      if (!index(at) || at > o.index) throw bad('bad tombstone index');
      s.tombstones.set(u, { at });
    }
    return s;
  }
}

function lock(r: UserRecord): void {
  r.locked = true;
  r.kSealed = null;
  r.record = EMPTY;
}

export function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  let d = 0;
  for (let i = 0; i < a.length; i++) d |= a[i]! ^ b[i]!;
  return d === 0;
}
