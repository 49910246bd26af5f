// The replicated record state: what every replica holds after applying the same committed entries.
// apply() is deterministic and total (every decodable entry applies, possibly as a no-op), so equal
// logs give equal state digests on every replica. K never leaves this module unsealed: records hold
// it sealed under the fleet entry key, and lockout / delete / change drop that seal for good.
import { createHash } from 'node:crypto';
import { Packr } from 'msgpackr';
import { isWireSuite, type RecordState, type WireSuite } from '../../protocol/wire.ts';
import { ID_BYTES, USER_RE, type Entry } from './entries.ts';
import { FirmwareError } from './errors.ts';

export interface UserRecord {
  suite: WireSuite;
  oprfId: Uint8Array;
  /** OPAQUE registration record; empty once locked. */
  record: Uint8Array;
  /** K sealed under the entry key; null once locked. */
  kSealed: Uint8Array | null;
  limit: number;
  /** Issue time of the registration ticket: a record is only replaced by a newer registration. */
  issuedAt: number;
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
 * A deleted user's mark: a registration whose ticket was issued at or before `before` is refused
 * (a replayed RegisterFinish must not bring the record back). Kept until `until`, past which no such
 * ticket passes the proposer's expiry check any more. Both are ticket-clock times from entries.
 */
export interface Tombstone {
  before: number;
  until: number;
}

/** Tombstones are swept when the oldest has been expired this long (at most one scan per period). */
const SWEEP_SLACK_MS = 60_000;
/** v2 adds tombstones; v1 snapshots (none) still decode. */
const SNAPSHOT_VERSION = 2;
const packr = new Packr({ useRecords: false, mapsAsObjects: true, variableMapSize: false });
const EMPTY = new Uint8Array(0);

export class VaultState {
  private readonly users = new Map<string, UserRecord>();
  private readonly tombstones = new Map<string, Tombstone>();
  /**
   * A lower bound on the tombstones' smallest `until`: only saves scans. What a sweep removes is a
   * function of the tombstone set and the entry alone, so replicas restored from a snapshot agree.
   */
  private untilBound = Infinity;
  /** Index of the last applied entry (0 = none). */
  appliedIndex = 0;

  get(user: string): Readonly<UserRecord> | undefined {
    return this.users.get(user);
  }

  tombstone(user: string): Readonly<Tombstone> | undefined {
    return this.tombstones.get(user);
  }

  /** Whether a registration with this ticket time would be refused as stale if it committed now. */
  isStaleRegistration(user: string, issuedAt: number): boolean {
    const r = this.users.get(user);
    const t = this.tombstones.get(user);
    return (r !== undefined && issuedAt <= r.issuedAt) || (t !== undefined && issuedAt <= t.before);
  }

  status(user: string): { state: RecordState; attemptsLeft: number; limit: number } {
    const r = this.users.get(user);
    if (!r) return { state: 'none', attemptsLeft: 0, limit: 0 };
    if (r.locked) return { state: 'locked', attemptsLeft: 0, limit: r.limit };
    return { state: 'registered', attemptsLeft: r.limit - r.used, limit: r.limit };
  }

  apply(index: number, e: Entry): ApplyEffect {
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
        // A replayed older registration must not roll the record back to an older password, nor
        // bring a deleted one back (its ticket predates the Delete's tombstone).
        const stale = this.isStaleRegistration(e.user, e.issuedAt);
        this.sweep(e.issuedAt);
        if (stale) return { kind: 'stale' };
        // The record's own issuedAt (newer than the tombstone's boundary) now refuses older tickets.
        this.tombstones.delete(e.user);
        // Atomic: record and K arrive in one entry, so no record is ever usable without its K.
        this.users.set(e.user, {
          suite: e.suite,
          oprfId: e.oprfId,
          record: e.record,
          kSealed: e.kSealed,
          limit: e.limit,
          issuedAt: e.issuedAt,
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
      case 'Delete': {
        if (e.at !== undefined && e.tombstoneMs !== undefined) {
          this.sweep(e.at);
          // Never lower an earlier boundary, and cover the deleted record's own ticket even if the
          // replica that issued it had a clock ahead of the proposer's.
          const prev = this.tombstones.get(e.user);
          const before = Math.max(e.at, r?.issuedAt ?? 0, prev?.before ?? 0);
          // Clamped: a host feeding an absurd clock must not make the snapshot undecodable fleet-wide.
          const until = Math.max(Math.min(before + e.tombstoneMs, Number.MAX_SAFE_INTEGER), prev?.until ?? 0);
          this.tombstones.set(e.user, { before, until });
          this.untilBound = Math.min(this.untilBound, until);
        }
        return { kind: 'deleted', existed: this.users.delete(e.user) };
      }
    }
  }

  /**
   * Drops every tombstone with until < now once the oldest is SWEEP_SLACK_MS past due. `now` is a time
   * carried by the committed entry (never a local clock), so every replica drops the same ones.
   */
  private sweep(now: number): void {
    if (this.untilBound >= now - SWEEP_SLACK_MS) return;
    let min = Infinity;
    for (const t of this.tombstones.values()) min = Math.min(min, t.until);
    if (min < now - SWEEP_SLACK_MS) {
      for (const [u, t] of this.tombstones) if (t.until < now) this.tombstones.delete(u);
      min = Infinity;
      for (const t of this.tombstones.values()) min = Math.min(min, t.until);
    }
    this.untilBound = min;
  }

  /** Canonical encoding (users sorted): the snapshot body and the input of digest(). */
  encode(): Uint8Array {
    const users = [...this.users.keys()].sort().map((u) => {
      const r = this.users.get(u)!;
      return [u, r.suite, r.oprfId, r.record, r.kSealed ?? EMPTY, r.limit, r.issuedAt, r.used, r.locked];
    });
    const tombstones = [...this.tombstones.keys()].sort().map((u) => {
      const t = this.tombstones.get(u)!;
      return [u, t.before, t.until];
    });
    return packr.pack({ v: SNAPSHOT_VERSION, index: this.appliedIndex, users, tombstones });
  }

  digest(): string {
    return createHash('sha256').update(this.encode()).digest('hex');
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
    if (typeof o !== 'object' || o === null || (o.v !== 1 && o.v !== SNAPSHOT_VERSION)) throw bad('unknown version');
    const allowed = o.v === 1 ? ['v', 'index', 'users'] : ['v', 'index', 'users', 'tombstones'];
    for (const k of Object.keys(o)) if (!allowed.includes(k)) throw bad('unexpected field');
    if (typeof o.index !== 'number' || !Number.isSafeInteger(o.index) || o.index < 0) throw bad('bad index');
    if (!Array.isArray(o.users)) throw bad('no users');
    const s = new VaultState();
    s.appliedIndex = o.index;
    let prev = '';
    for (const row of o.users as unknown[]) {
      if (!Array.isArray(row) || row.length !== 9) throw bad('bad row');
      const [u, suite, oprfId, record, kSealed, limit, issuedAt, used, locked] = row as unknown[];
      if (typeof u !== 'string' || !USER_RE.test(u) || u <= prev) throw bad('bad or unsorted user');
      prev = u;
      if (!isWireSuite(suite)) throw bad('bad suite');
      if (!(oprfId instanceof Uint8Array) || oprfId.length !== ID_BYTES) throw bad('bad oprf id');
      if (!(record instanceof Uint8Array) || !(kSealed instanceof Uint8Array)) throw bad('bad bytes');
      if (typeof limit !== 'number' || typeof used !== 'number' || !Number.isSafeInteger(limit) || !Number.isSafeInteger(used)) throw bad('bad counter');
      if (used < 0 || used > limit || typeof locked !== 'boolean') throw bad('bad counter');
      if (typeof issuedAt !== 'number' || !Number.isSafeInteger(issuedAt) || issuedAt < 0) throw bad('bad issue time');
      if (locked !== (kSealed.length === 0)) throw bad('K present on a locked record');
      s.users.set(u, {
        suite,
        oprfId: new Uint8Array(oprfId),
        record: new Uint8Array(record),
        kSealed: locked ? null : new Uint8Array(kSealed),
        limit,
        issuedAt,
        used,
        locked,
      });
    }
    if (o.v === SNAPSHOT_VERSION) {
      if (!Array.isArray(o.tombstones)) throw bad('no tombstones');
      prev = '';
      for (const row of o.tombstones as unknown[]) {
        if (!Array.isArray(row) || row.length !== 3) throw bad('bad tombstone');
        const [u, before, until] = row as unknown[];
        if (typeof u !== 'string' || !USER_RE.test(u) || u <= prev) throw bad('bad or unsorted tombstone user');
        if (s.users.has(u)) throw bad('tombstone for a live record');
        prev = u;
        const time = (v: unknown): v is number => typeof v === 'number' && Number.isSafeInteger(v) && v >= 0;
        if (!time(before) || !time(until) || until < before) throw bad('bad tombstone time');
        s.tombstones.set(u, { before, until });
        s.untilBound = Math.min(s.untilBound, until);
      }
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
