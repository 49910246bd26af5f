// The device side of password backups: protect K behind a password with the vault, get it back,
// change the password, disable, ask for status. Each function speaks the wire protocol through a
// `send(body) => reply` function (the CLI wires it to ChatD's relay), and trusts nothing it gets back:
// the vault's AKE key is PINNED by the caller (fleet manifest / app config), never taken from a reply.
//
// To keep a wrong password invisible in the message flow, the device always sends RecoverFinish, with
// a random KE3 when its own envelope check already failed.
import { randomBytes } from 'node:crypto';
import { BkvError } from '../protocol/errors.ts';
import { checkRegistrationConfirm, openKRelease, sealKUpload } from '../protocol/kbox.ts';
import { createOpaque, OpaqueError, type Ksf, type Opaque } from '../protocol/opaque/index.ts';
import { decodeVaultReply, encodeDeviceMessage, type DeviceMessage, type RecordState, type VaultReply, type WireSuite } from '../protocol/wire.ts';

export type Send = (body: Uint8Array) => Promise<Uint8Array>;

export type PasswordErrorCode = 'WRONG_PASSWORD' | 'LOCKED' | 'NOT_REGISTERED' | 'VAULT_ERROR' | 'UNEXPECTED_REPLY' | 'VAULT_KEY_MISMATCH';

export class PasswordError extends BkvError {
  declare readonly code: PasswordErrorCode;
  /** For WRONG_PASSWORD: attempts the vault says are left (0 also when there is no record). */
  readonly attemptsLeft?: number;
  /** For VAULT_ERROR: the vault's error code. */
  readonly vaultCode?: string;
  constructor(code: PasswordErrorCode, message: string, extra: { attemptsLeft?: number; vaultCode?: string } = {}) {
    super(code, message);
    this.attemptsLeft = extra.attemptsLeft;
    this.vaultCode = extra.vaultCode;
  }
}

export interface PasswordOptions {
  /** The account as ChatD knows it (bound into the K upload; the vault takes it from ChatD). */
  user: string;
  /** The vault's AKE public key for `suite`, from the fleet manifest / app config. */
  serverPublicKey: Uint8Array;
  suite?: WireSuite;
  /** Key stretching; default the OPAQUE module's (Argon2id). Must match between enable and recover. */
  ksf?: Ksf;
  rng?: (n: number) => Uint8Array;
  /**
   * Tests only: sees the OPAQUE session key of a successful login (so a test can look for it in what
   * ChatD handled). Never wire this to a log.
   */
  onSessionKey?: (sessionKey: Uint8Array) => void;
}

const defaultRng = (n: number): Uint8Array => new Uint8Array(randomBytes(n));

function pw(password: string | Uint8Array): Uint8Array {
  return typeof password === 'string' ? new TextEncoder().encode(password.normalize('NFC')) : password;
}

async function opaqueFor(o: PasswordOptions): Promise<{ op: Opaque; suite: WireSuite }> {
  const suite = o.suite ?? 'ristretto255-SHA512';
  return { op: await createOpaque({ suite, ksf: o.ksf }), suite };
}

async function call(send: Send, m: DeviceMessage): Promise<VaultReply> {
  const reply = decodeVaultReply(await send(encodeDeviceMessage(m)));
  if (reply.t === 'Error') throw new PasswordError('VAULT_ERROR', `vault refused the request (${reply.code})`, { vaultCode: reply.code });
  return reply;
}

function unexpected(r: VaultReply): PasswordError {
  return new PasswordError('UNEXPECTED_REPLY', `unexpected vault reply ${r.t}`);
}

/** Registers (or re-registers) the password protecting K. `limit`: attempts before lockout (vault bounds apply). */
export async function enablePassword(send: Send, o: PasswordOptions, password: string | Uint8Array, k: Uint8Array, limit?: number): Promise<void> {
  const { op, suite } = await opaqueFor(o);
  const rng = o.rng ?? defaultRng;
  const start = op.clientStartRegistration(pw(password), { rng });
  const r1 = await call(send, { t: 'RegisterStart', suite, request: start.request });
  if (r1.t !== 'RegisterResponse') throw unexpected(r1);
  let record: Uint8Array;
  try {
    // Refuses a response carrying any server key but the pinned one (ChatD could substitute its own).
    ({ record } = op.clientFinishRegistration(start.state, r1.response, { rng, expectedServerPublicKey: o.serverPublicKey }));
  } catch (e) {
    if (e instanceof OpaqueError) throw new PasswordError('VAULT_KEY_MISMATCH', 'registration response does not come from the pinned vault key');
    throw e;
  }
  const ctx = { user: o.user, suite, record };
  const { kUpload, confirmKey } = sealKUpload(op.dh, rng, o.serverPublicKey, ctx, k);
  const r2 = await call(send, { t: 'RegisterFinish', suite, ticket: r1.ticket, record, kUpload, ...(limit === undefined ? {} : { limit }) });
  if (r2.t !== 'Registered') throw unexpected(r2);
  checkRegistrationConfirm(confirmKey, ctx, r2.confirm);
}

/** Change password = register afresh with K re-uploaded (the device holds K; the vault never "keeps" it). */
export const changePassword = enablePassword;

/** Gets K back with the password. Throws PasswordError WRONG_PASSWORD (attemptsLeft) or LOCKED. */
export async function recoverK(send: Send, o: PasswordOptions, password: string | Uint8Array): Promise<Uint8Array> {
  const { op, suite } = await opaqueFor(o);
  const rng = o.rng ?? defaultRng;
  const start = op.clientStartLogin(pw(password), { rng });
  const r1 = await call(send, { t: 'RecoverStart', suite, ke1: start.ke1 });
  if (r1.t === 'Locked') throw new PasswordError('LOCKED', 'the vault has locked this backup: too many wrong passwords');
  if (r1.t !== 'KE2') throw unexpected(r1);
  let finish: { ke3: Uint8Array; sessionKey: Uint8Array } | undefined;
  try {
    finish = op.clientFinishLogin(start.state, r1.ke2, { expectedServerPublicKey: o.serverPublicKey });
  } catch (e) {
    if (!(e instanceof OpaqueError)) throw e;
  }
  const ke3 = finish?.ke3 ?? rng(op.sizes.ke3);
  const r2 = await call(send, { t: 'RecoverFinish', session: r1.session, ke3 });
  switch (r2.t) {
    case 'Released':
      if (!finish) throw unexpected(r2);
      o.onSessionKey?.(finish.sessionKey.slice());
      return openKRelease(finish.sessionKey, r1.session, o.user, r2.kEnc);
    case 'WrongPassword':
      throw new PasswordError('WRONG_PASSWORD', `wrong password; ${r2.attemptsLeft} attempt(s) left`, { attemptsLeft: r2.attemptsLeft });
    case 'Locked':
      throw new PasswordError('LOCKED', 'the vault has locked this backup: too many wrong passwords');
    default:
      throw unexpected(r2);
  }
}

/** Deletes the record and K from the vault. */
export async function disable(send: Send): Promise<void> {
  const r = await call(send, { t: 'Disable' });
  if (r.t !== 'Disabled') throw unexpected(r);
}

export async function status(send: Send): Promise<{ state: RecordState; attemptsLeft: number; limit: number }> {
  const r = await call(send, { t: 'Status' });
  if (r.t !== 'Status') throw unexpected(r);
  return { state: r.state, attemptsLeft: r.attemptsLeft, limit: r.limit };
}
