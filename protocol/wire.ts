// The device <-> vault messages (the body a relay envelope carries). Typed, versioned and encoded here
// and nowhere else. The user is never in these messages: the vault takes it from the relay envelope,
// i.e. from ChatD's authentication of the account.
//
// Every decoder validates every field and demands the canonical encoding (decode, re-encode, compare),
// so trailing bytes, duplicate keys, unknown fields and odd integer widths are all refused with an
// InputError. Replies whose size would tell an observer of encrypted traffic the outcome of a guess are
// padded to one fixed length (see FINISH_REPLY_SIZE).
import { createHash } from 'node:crypto';
import { Packr } from 'msgpackr';
import { InputError } from './errors.ts';
import { K_BYTES } from './kbox.ts';
import { ERROR_CODE_RE as CODE_RE } from './names.ts';

/** 2: K travels inside the device-vault session (protocol/session.ts); pins and key stretching named. */
export const WIRE_VERSION = 2;

/** OPAQUE ciphersuites the vault speaks (names as protocol/opaque spells them). */
export const WIRE_SUITES = ['ristretto255-SHA512', 'P256-SHA256'] as const;
export type WireSuite = (typeof WIRE_SUITES)[number];
/** The public keys a device pins: the AKE key of each suite, and the session key (protocol/session.ts). */
export const PINNED_KEYS = [...WIRE_SUITES, 'session'] as const;
export type PinnedKeyName = (typeof PINNED_KEYS)[number];

/** Length of a recovery session id and of a registration ticket. */
export const SESSION_BYTES = 16;
export const TICKET_BYTES = 40;
/** Length of a pin: the first bytes of SHA-256 of the vault AKE public key the device pinned (see pinOf). */
export const PIN_BYTES = 16;
/** Encoded length of every reply to RecoverFinish (Released, WrongPassword, Locked). */
export const FINISH_REPLY_SIZE = 128;
/** Released.kEnc: AES-256-GCM nonce (12) || ciphertext of K (32) || tag (16). */
export const KENC_BYTES = 60;

export class WireError extends InputError {
  constructor(message: string) {
    super(message, 'BAD_DEVICE_MESSAGE');
  }
}

// ---- device -> vault ----

export type DeviceMessage =
  /** pin: the AKE key the device expects (a mismatch is refused before anything is computed). The device always sends it. */
  | { t: 'RegisterStart'; suite: WireSuite; request: Uint8Array; pin?: Uint8Array }
  | {
      t: 'RegisterFinish';
      suite: WireSuite;
      /** The vault's RegisterResponse.ticket, echoed: names the per-registration OPRF key. */
      ticket: Uint8Array;
      record: Uint8Array;
      /** K itself: this message only ever travels inside the forward-secret session. */
      k: Uint8Array;
      /** The key stretching the record was made with (Ksf.name), so a recovery with another is refused free. */
      ksf: string;
      limit?: number;
    }
  /** pin and ksf: checked before the attempt is charged (the device always sends both). */
  | { t: 'RecoverStart'; suite?: WireSuite; ke1: Uint8Array; pin?: Uint8Array; ksf?: string }
  | { t: 'RecoverFinish'; session: Uint8Array; ke3: Uint8Array }
  | { t: 'Status' }
  | { t: 'Disable' };

// ---- vault -> device ----

export type RecordState = 'none' | 'registered' | 'locked';

export type VaultReply =
  | { t: 'RegisterResponse'; response: Uint8Array; ticket: Uint8Array }
  /** confirm = registrationConfirm() of what the vault committed: user, suite, limit, ticket, record, ksf. */
  | { t: 'Registered'; limit: number; confirm: Uint8Array }
  /** RecoverStart named another key stretching than the record's: nothing was charged. */
  | { t: 'KsfMismatch'; ksf: string }
  | { t: 'KE2'; session: Uint8Array; ke2: Uint8Array }
  | { t: 'Released'; kEnc: Uint8Array }
  | { t: 'WrongPassword'; attemptsLeft: number }
  | { t: 'Locked' }
  | { t: 'Status'; state: RecordState; attemptsLeft: number; limit: number }
  | { t: 'Disabled' }
  | { t: 'Error'; code: string };

// ---- schema ----

type Field =
  | { k: 'bytes'; min: number; max: number; opt?: boolean }
  | { k: 'int'; min: number; max: number; opt?: boolean }
  | { k: 'enum'; values: readonly string[]; opt?: boolean }
  | { k: 'code'; opt?: boolean }
  | { k: 'name'; opt?: boolean };

const bytes = (min: number, max: number, opt = false): Field => ({ k: 'bytes', min, max, opt });
const suite = (opt = false): Field => ({ k: 'enum', values: WIRE_SUITES, opt });

const DEVICE_SCHEMA: Record<DeviceMessage['t'], Record<string, Field>> = {
  RegisterStart: { suite: suite(), request: bytes(16, 128), pin: bytes(PIN_BYTES, PIN_BYTES, true) },
  RegisterFinish: {
    suite: suite(),
    ticket: bytes(TICKET_BYTES, TICKET_BYTES),
    record: bytes(64, 512),
    k: bytes(K_BYTES, K_BYTES),
    ksf: { k: 'name' },
    limit: { k: 'int', min: 1, max: 1000, opt: true },
  },
  RecoverStart: { suite: suite(true), ke1: bytes(64, 160), pin: bytes(PIN_BYTES, PIN_BYTES, true), ksf: { k: 'name', opt: true } },
  RecoverFinish: { session: bytes(SESSION_BYTES, SESSION_BYTES), ke3: bytes(16, 128) },
  Status: {},
  Disable: {},
};

const REPLY_SCHEMA: Record<VaultReply['t'], Record<string, Field>> = {
  RegisterResponse: { response: bytes(16, 256), ticket: bytes(TICKET_BYTES, TICKET_BYTES) },
  Registered: { limit: { k: 'int', min: 1, max: 1000 }, confirm: bytes(32, 32) },
  KsfMismatch: { ksf: { k: 'name' } },
  KE2: { session: bytes(SESSION_BYTES, SESSION_BYTES), ke2: bytes(64, 1024) },
  Released: { kEnc: bytes(KENC_BYTES, KENC_BYTES) },
  WrongPassword: { attemptsLeft: { k: 'int', min: 0, max: 1000 } },
  Locked: {},
  Status: {
    state: { k: 'enum', values: ['none', 'registered', 'locked'] },
    attemptsLeft: { k: 'int', min: 0, max: 1000 },
    limit: { k: 'int', min: 0, max: 1000 },
  },
  Disabled: {},
  Error: { code: { k: 'code' } },
};

/** Replies padded to FINISH_REPLY_SIZE: the three outcomes of a recovery. */
const PADDED: ReadonlySet<string> = new Set(['Released', 'WrongPassword', 'Locked']);

const packr = new Packr({ useRecords: false, mapsAsObjects: true, variableMapSize: false });
/** Key-stretching names (protocol/opaque/ksf.ts Ksf.name). */
export const KSF_NAME_RE = /^[A-Za-z0-9][A-Za-z0-9-]{0,63}$/;

export function encodeDeviceMessage(m: DeviceMessage): Uint8Array {
  const out = build(m, DEVICE_SCHEMA);
  return packr.pack(out);
}

export function decodeDeviceMessage(bytes: Uint8Array): DeviceMessage {
  return parse(bytes, DEVICE_SCHEMA, false) as DeviceMessage;
}

export function encodeVaultReply(r: VaultReply): Uint8Array {
  const out = build(r, REPLY_SCHEMA);
  if (!PADDED.has(r.t)) return packr.pack(out);
  // Find the pad length giving exactly FINISH_REPLY_SIZE bytes (bin8 header is constant for < 256).
  out.pad = new Uint8Array(0);
  const base = packr.pack(out).length;
  out.pad = new Uint8Array(FINISH_REPLY_SIZE - base);
  const packed = packr.pack(out);
  if (packed.length !== FINISH_REPLY_SIZE) throw new Error('reply padding miscomputed');
  return packed;
}

export function decodeVaultReply(bytes: Uint8Array): VaultReply {
  return parse(bytes, REPLY_SCHEMA, true) as VaultReply;
}

function build(m: { t: string }, schema: Record<string, Record<string, Field>>): Record<string, unknown> {
  const spec = schema[m.t];
  if (!spec) throw new WireError(`unknown message type`);
  const out: Record<string, unknown> = { v: WIRE_VERSION, t: m.t };
  const src = m as unknown as Record<string, unknown>;
  for (const [name, f] of Object.entries(spec)) {
    const value = src[name];
    if (value === undefined) {
      if (f.opt) continue;
      throw new WireError(`${m.t}.${name} is missing`);
    }
    checkField(m.t, name, f, value);
    out[name] = f.k === 'bytes' ? Uint8Array.from(value as Uint8Array) : value;
  }
  return out;
}

function parse(bytes: Uint8Array, schema: Record<string, Record<string, Field>>, allowPad: boolean): Record<string, unknown> {
  if (!(bytes instanceof Uint8Array) || bytes.length === 0 || bytes.length > 4096) {
    throw new WireError('message empty or too large');
  }
  let m: unknown;
  try {
    m = packr.unpack(bytes);
  } catch {
    throw new WireError('message is not valid msgpack');
  }
  if (typeof m !== 'object' || m === null || Array.isArray(m) || m instanceof Uint8Array) {
    throw new WireError('message is not a map');
  }
  const obj = m as Record<string, unknown>;
  if (obj.v !== WIRE_VERSION) throw new WireError('unsupported message version');
  if (typeof obj.t !== 'string' || !Object.hasOwn(schema, obj.t)) throw new WireError('unknown message type');
  const t = obj.t;
  const spec = schema[t]!;
  const out: Record<string, unknown> = { t };
  for (const key of Object.keys(obj)) {
    if (key === 'v' || key === 't' || Object.hasOwn(spec, key)) continue;
    if (allowPad && key === 'pad' && PADDED.has(t) && obj.pad instanceof Uint8Array) continue;
    throw new WireError(`${t} has an unexpected field`);
  }
  for (const [name, f] of Object.entries(spec)) {
    const value = obj[name];
    if (value === undefined) {
      if (f.opt) continue;
      throw new WireError(`${t}.${name} is missing`);
    }
    checkField(t, name, f, value);
    out[name] = f.k === 'bytes' ? new Uint8Array(value as Uint8Array) : value;
  }
  // Canonical form only: one byte string per message, so nothing can ride along unseen.
  let again: Uint8Array;
  try {
    again = packr.pack(obj);
  } catch {
    throw new WireError('message does not re-encode');
  }
  if (!equalBytes(again, bytes)) throw new WireError('message is not in canonical encoding');
  if (allowPad && PADDED.has(t) && bytes.length !== FINISH_REPLY_SIZE) throw new WireError(`${t} has the wrong padded size`);
  return out;
}

function checkField(t: string, name: string, f: Field, value: unknown): void {
  const where = `${t}.${name}`;
  switch (f.k) {
    case 'bytes':
      if (!(value instanceof Uint8Array)) throw new WireError(`${where} must be bytes`);
      if (value.length < f.min || value.length > f.max) throw new WireError(`${where} must be ${f.min}..${f.max} bytes`);
      return;
    case 'int':
      if (typeof value !== 'number' || !Number.isSafeInteger(value)) throw new WireError(`${where} must be an integer`);
      if (value < f.min || value > f.max) throw new WireError(`${where} must be in ${f.min}..${f.max}`);
      return;
    case 'enum':
      if (typeof value !== 'string' || !f.values.includes(value)) throw new WireError(`${where} is not one of ${f.values.join(', ')}`);
      return;
    case 'code':
      if (typeof value !== 'string' || !CODE_RE.test(value)) throw new WireError(`${where} is not an error code`);
      return;
    case 'name':
      if (typeof value !== 'string' || !KSF_NAME_RE.test(value)) throw new WireError(`${where} is not a key-stretching name`);
      return;
  }
}

function equalBytes(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

export function isWireSuite(s: unknown): s is WireSuite {
  return typeof s === 'string' && (WIRE_SUITES as readonly string[]).includes(s);
}

/** The pin of an AKE public key: what RegisterStart / RecoverStart carry. */
export function pinOf(akePublicKey: Uint8Array): Uint8Array {
  return new Uint8Array(createHash('sha256').update('bkv pin v1').update(akePublicKey).digest()).subarray(0, PIN_BYTES);
}
