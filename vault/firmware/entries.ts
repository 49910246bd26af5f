// Log entries: the only way the replicated record state changes. They are replicated to peers and
// written to untrusted disks, so K inside an entry is always sealed under the fleet entry key
// (see crypto.ts). Encoded here and nowhere else; decoding validates every field.
import { Packr } from 'msgpackr';
import { KSF_NAME_RE, isWireSuite, type WireSuite } from '../../protocol/wire.ts';
import { FirmwareError } from './errors.ts';
import { USER_RE } from '../../protocol/names.ts';

/** 2: registrations carry their key stretching and a log-position basis instead of a clock time. */
export const ENTRY_VERSION = 2;
export const ID_BYTES = 16;
export { USER_RE } from '../../protocol/names.ts';

/** Every entry names its user and carries a unique id: the proposer matches commits to its requests by it. */
interface Base {
  id: Uint8Array;
  user: string;
}

export interface RecordFields {
  suite: WireSuite;
  /** Per-registration OPRF key id: credential_identifier = user || 0x00 || oprfId. */
  oprfId: Uint8Array;
  /** Serialized OPAQUE registration record. */
  record: Uint8Array;
  /** K sealed under the fleet entry key (AAD: user, oprfId, version). */
  kSealed: Uint8Array;
  limit: number;
  /**
   * The committed index the vault had applied when it issued the ticket. The registration applies only
   * if the user's record (or tombstone) has not changed since: a compare-and-swap on log positions,
   * which no host clock can move.
   */
  basis: number;
  /** Key stretching the device used (Ksf.name). */
  ksf: string;
}

export type VaultEntry =
  | (Base & { t: 'Register' } & RecordFields)
  | (Base & { t: 'ChangePassword' } & RecordFields)
  /** id is the recovery session id: one OPRF evaluation charged to the user. */
  | (Base & { t: 'Attempt' })
  /** Written by older firmware for a correct KE3; still applied, no longer proposed (see Outcome). */
  | (Base & { t: 'Reset'; oprfId: Uint8Array })
  /**
   * Every KE3's outcome, right or wrong, so each RecoverFinish reply waits for exactly one commit and
   * latency does not tell the outcome. Booleans keep the encoding the same length for every outcome.
   * ok && reset: counter to 0; ok && !reset: no change; !ok: at the limit locks, else no change.
   */
  | (Base & { t: 'Outcome'; oprfId: Uint8Array; ok: boolean; reset: boolean })
  | (Base & { t: 'Lock'; oprfId: Uint8Array })
  /** Leaves a tombstone at the entry's own index (state.ts). */
  | (Base & { t: 'Delete' });

export type VaultEntryType = VaultEntry['t'];

const packr = new Packr({ useRecords: false, mapsAsObjects: true, variableMapSize: false });

export function encodeEntry(e: VaultEntry): Uint8Array {
  const out: Record<string, unknown> = { v: ENTRY_VERSION, t: e.t, id: e.id, user: e.user };
  switch (e.t) {
    case 'Register':
    case 'ChangePassword':
      Object.assign(out, { suite: e.suite, oprfId: e.oprfId, record: e.record, kSealed: e.kSealed, limit: e.limit, basis: e.basis, ksf: e.ksf });
      break;
    case 'Reset':
    case 'Lock':
      out.oprfId = e.oprfId;
      break;
    case 'Outcome':
      Object.assign(out, { oprfId: e.oprfId, ok: e.ok, reset: e.reset });
      break;
    case 'Delete':
    case 'Attempt':
      break;
  }
  const bytes = packr.pack(out);
  decodeEntry(bytes); // never emit what we would refuse to apply
  return bytes;
}

const FIELDS: Record<VaultEntryType, string[]> = {
  Register: ['suite', 'oprfId', 'record', 'kSealed', 'limit', 'basis', 'ksf'],
  ChangePassword: ['suite', 'oprfId', 'record', 'kSealed', 'limit', 'basis', 'ksf'],
  Attempt: [],
  Reset: ['oprfId'],
  Outcome: ['oprfId', 'ok', 'reset'],
  Lock: ['oprfId'],
  Delete: [],
};

/** Throws FirmwareError BAD_ENTRY: a committed entry that does not decode is a fatal inconsistency. */
export function decodeEntry(bytes: Uint8Array): VaultEntry {
  let m: unknown;
  try {
    m = packr.unpack(bytes);
  } catch {
    throw bad('not msgpack');
  }
  if (typeof m !== 'object' || m === null || Array.isArray(m) || m instanceof Uint8Array) throw bad('not a map');
  const o = m as Record<string, unknown>;
  if (o.v !== ENTRY_VERSION) throw bad('unknown version');
  if (typeof o.t !== 'string' || !Object.hasOwn(FIELDS, o.t)) throw bad('unknown type');
  const t = o.t as VaultEntryType;
  const allowed = new Set(['v', 't', 'id', 'user', ...FIELDS[t]]);
  for (const k of Object.keys(o)) if (!allowed.has(k)) throw bad('unexpected field');
  const id = needBytes(o.id, ID_BYTES, ID_BYTES);
  if (typeof o.user !== 'string' || !USER_RE.test(o.user)) throw bad('bad user');
  const user = o.user;
  switch (t) {
    case 'Register':
    case 'ChangePassword': {
      if (!isWireSuite(o.suite)) throw bad('bad suite');
      if (typeof o.limit !== 'number' || !Number.isSafeInteger(o.limit) || o.limit < 1 || o.limit > 1000) throw bad('bad limit');
      if (typeof o.basis !== 'number' || !Number.isSafeInteger(o.basis) || o.basis < 0) throw bad('bad basis');
      if (typeof o.ksf !== 'string' || !KSF_NAME_RE.test(o.ksf)) throw bad('bad key stretching');
      return {
        t,
        id,
        user,
        suite: o.suite,
        oprfId: needBytes(o.oprfId, ID_BYTES, ID_BYTES),
        record: needBytes(o.record, 64, 512),
        kSealed: needBytes(o.kSealed, 60, 60),
        limit: o.limit,
        basis: o.basis,
        ksf: o.ksf,
      };
    }
    case 'Reset':
    case 'Lock':
      return { t, id, user, oprfId: needBytes(o.oprfId, ID_BYTES, ID_BYTES) };
    case 'Outcome': {
      if (typeof o.ok !== 'boolean' || typeof o.reset !== 'boolean') throw bad('bad outcome');
      if (o.reset && !o.ok) throw bad('reset on a wrong password');
      return { t, id, user, oprfId: needBytes(o.oprfId, ID_BYTES, ID_BYTES), ok: o.ok, reset: o.reset };
    }
    case 'Delete':
    case 'Attempt':
      return { t, id, user };
  }
}

function needBytes(v: unknown, min: number, max: number): Uint8Array {
  if (!(v instanceof Uint8Array) || v.length < min || v.length > max) throw bad('bad bytes field');
  return new Uint8Array(v);
}

function bad(why: string): FirmwareError {
  return new FirmwareError('BAD_ENTRY', `log entry refused: ${why}`);
}
