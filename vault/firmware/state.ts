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
  | { kind: 'stale' }
  | { kind: 'deleted'; existed: boolean };

const SNAPSHOT_VERSION = 1;
const packr = new Packr({ useRecords: false, mapsAsObjects: true, variableMapSize: false });
const EMPTY = new Uint8Array(0);

export class VaultState {
  private readonly users = new Map<string, UserRecord>();
  /** Index of the last applied entry (0 = none). */
  appliedIndex = 0;

  get(user: string): Readonly<UserRecord> | undefined {
    return this.users.get(user);
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
      case 'ChangePassword':
        // A replayed older registration must not roll the record back to an older password.
        if (r && e.issuedAt <= r.issuedAt) return { kind: 'stale' };
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
      case 'Lock':
        if (!r || !sameBytes(r.oprfId, e.oprfId)) return { kind: 'stale' };
        if (r.locked) return { kind: 'locked', justNow: false };
        lock(r);
        return { kind: 'locked', justNow: true };
      case 'Delete':
        return { kind: 'deleted', existed: this.users.delete(e.user) };
    }
  }

  /** Canonical encoding (users sorted): the snapshot body and the input of digest(). */
  encode(): Uint8Array {
    const users = [...this.users.keys()].sort().map((u) => {
      const r = this.users.get(u)!;
      return [u, r.suite, r.oprfId, r.record, r.kSealed ?? EMPTY, r.limit, r.issuedAt, r.used, r.locked];
    });
    return packr.pack({ v: SNAPSHOT_VERSION, index: this.appliedIndex, users });
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
    if (typeof o !== 'object' || o === null || o.v !== SNAPSHOT_VERSION) throw bad('unknown version');
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
