// The device side of password backups: protect K behind a password with the vault, get it back,
// change the password, disable, ask for status. Each operation is one device-vault session
// (protocol/session.ts) through a `send(bytes) => bytes` function (the CLI wires it to ChatD's relay),
// and trusts nothing it gets back that does not open under that session: the vault's session and AKE
// keys are PINNED by the caller (vault-keys.json / app config), never taken from a reply.
//
// To keep a wrong password invisible in the message flow, the device always sends RecoverFinish, with
// a random KE3 when its own envelope check already failed.
import { randomBytes } from 'node:crypto';
import { BkvError } from '../protocol/errors.ts';
import { checkRegistrationConfirm, openKRelease } from '../protocol/kbox.ts';
import { createOpaque, OpaqueError, type Ksf, type Opaque } from '../protocol/opaque/index.ts';
import { fastX25519 } from '../protocol/opaque/group.ts';
import { DeviceSession, SessionError, fleetIdentity } from '../protocol/session.ts';
import { decodeVaultReply, encodeDeviceMessage, pinOf, type DeviceMessage, type RecordState, type VaultReply, type WireSuite } from '../protocol/wire.ts';

export type Send = (body: Uint8Array) => Promise<Uint8Array>;

export type PasswordErrorCode =
  | 'WRONG_PASSWORD'
  | 'LOCKED'
  | 'NOT_REGISTERED'
  | 'VAULT_ERROR'
  | 'UNEXPECTED_REPLY'
  /** The vault (authenticated) says the pinned AKE key is not its own: nothing was computed or charged. */
  | 'VAULT_KEY_MISMATCH'
  /** The record was registered with other key stretching: nothing was charged. */
  | 'KSF_MISMATCH'
  /** The vault answered KE1 (one attempt charged), then its answer to the KE3 never arrived. */
  | 'OUTCOME_UNKNOWN'
  /** The vault could not open our request (the pinned session key is not this vault's, or it was altered on the way): nothing was spent. */
  | 'SESSION_REFUSED'
  /** A reply did not open or verify under our session: altered on the way, or not from the pinned vault. */
  | 'BAD_VAULT_REPLY';

export class PasswordError extends BkvError {
  declare readonly code: PasswordErrorCode;
  /** For WRONG_PASSWORD: attempts the vault says are left (0 also when there is no record). */
  readonly attemptsLeft?: number;
  /** For VAULT_ERROR: the vault's error code. */
  readonly vaultCode?: string;
  /** For KSF_MISMATCH: the key stretching the record was registered with. */
  readonly ksf?: string;
  constructor(code: PasswordErrorCode, message: string, extra: { attemptsLeft?: number; vaultCode?: string; ksf?: string } = {}) {
    super(code, message);
    this.attemptsLeft = extra.attemptsLeft;
    this.vaultCode = extra.vaultCode;
    this.ksf = extra.ksf;
  }
}

export interface PasswordOptions {
  /** The account as ChatD knows it (bound into the K upload; the vault takes it from ChatD). */
  user: string;
  /** The vault's AKE public key for `suite`, from the fleet manifest / app config. */
  serverPublicKey: Uint8Array;
  /** The vault's session key (X25519), pinned the same way. */
  sessionKey: Uint8Array;
  suite?: WireSuite;
  /** Key stretching; default the OPAQUE module's (Argon2id). Must match between enable and recover. */
  ksf?: Ksf;
  rng?: (n: number) => Uint8Array;
  /**
   * Tests only: sees the OPAQUE session key of a successful login (so a test can look for it in what
   * ChatD handled). Never wire this to a log.
   */
  onSessionKey?: (sessionKey: Uint8Array) => void;
  /** Tests only, like onSessionKey: sees the OPAQUE record and export key a registration made. */
  onRegistered?: (record: Uint8Array, exportKey: Uint8Array) => void;
  /**
   * Sees each vault reply after it opened under the session (the device's own view; awaited before
   * the exchange goes on). For demos and tests that act on a step, e.g. "a KE2 arrived".
   */
  onReply?: (reply: VaultReply) => void | Promise<void>;
  /**
   * Resending a frame the relay did not answer is safe: a byte-identical copy gets the original's
   * reply (or a refusal) from the leader that holds the session. A RecoverStart's Hello that reaches
   * a new leader instead is a KE1 it never saw and is charged again (docs/session.md): a fault may
   * cost an honest device an attempt, never gain anyone a guess. `retryable` says which send errors
   * are worth it (the transport's "unavailable" and timeouts); default none.
   */
  retry?: { attempts: number; delayMs: number; retryable(e: unknown): boolean };
}

const defaultRng = (n: number): Uint8Array => new Uint8Array(randomBytes(n));

function pw(password: string | Uint8Array): Uint8Array {
  return typeof password === 'string' ? new TextEncoder().encode(password.normalize('NFC')) : password;
}

async function opaqueFor(o: PasswordOptions): Promise<{ op: Opaque; suite: WireSuite }> {
  const suite = o.suite ?? 'ristretto255-SHA512';
  return { op: await createOpaque({ suite, ksf: o.ksf }), suite };
}

/** RFC 9807 identities: the account, and the fleet named by the session key the device pins. */
function identities(o: PasswordOptions): { clientIdentity: Uint8Array; serverIdentity: Uint8Array } {
  return { clientIdentity: new TextEncoder().encode(o.user), serverIdentity: fleetIdentity(o.sessionKey) };
}

/** One exchange: a Hello and its Welcome, then optionally a Next and its Final. */
class Exchange {
  private readonly s: DeviceSession;
  private readonly onReply: PasswordOptions['onReply'];
  private readonly retry: PasswordOptions['retry'];
  constructor(
    private readonly send: Send,
    o: PasswordOptions,
    rng: (n: number) => Uint8Array,
  ) {
    this.s = new DeviceSession(fastX25519(), o.user, o.sessionKey, rng);
    this.onReply = o.onReply;
    this.retry = o.retry;
  }
  first(m: DeviceMessage): Promise<VaultReply> {
    return this.call(() => this.s.hello(encodeDeviceMessage(m)), (b) => this.s.openWelcome(b));
  }
  second(m: DeviceMessage): Promise<VaultReply> {
    return this.call(() => this.s.next(encodeDeviceMessage(m)), (b) => this.s.openFinal(b));
  }
  close(): void {
    this.s.close();
  }
  private async sendRetrying(frame: Uint8Array): Promise<Uint8Array> {
    for (let i = 0; ; i++) {
      try {
        return await this.send(frame);
      } catch (e) {
        if (!this.retry || i >= this.retry.attempts || !this.retry.retryable(e)) throw e;
        // A relay that says when to come back (a rate limit) is taken at its word.
        const after = (e as { retryAfterMs?: unknown }).retryAfterMs;
        await new Promise((r) => setTimeout(r, Math.max(this.retry!.delayMs * (i + 1), typeof after === 'number' ? Math.min(after, 10_000) : 0)));
      }
    }
  }
  private async call(write: () => Uint8Array, open: (b: Uint8Array) => Uint8Array): Promise<VaultReply> {
    const out = write();
    const back = await this.sendRetrying(out);
    let inner: Uint8Array;
    try {
      inner = open(back);
    } catch (e) {
      this.s.close();
      // A host that cannot reach a firmware says so unauthenticated; it is only ever "not now".
      if (e instanceof SessionError && e.code === 'SESSION_REFUSED' && HOST_REFUSALS.has(e.refusedCode ?? '')) {
        throw new PasswordError('VAULT_ERROR', `the vault cannot serve right now (${e.refusedCode})`, { vaultCode: e.refusedCode });
      }
      if (e instanceof SessionError && e.code === 'SESSION_REFUSED') {
        throw new PasswordError('SESSION_REFUSED', `the vault could not open this device's request: the pinned vault session key is not this vault's, or the request was altered on the way (${e.message}); nothing was spent`);
      }
      if (e instanceof SessionError) throw new PasswordError('BAD_VAULT_REPLY', `the reply is not from the pinned vault or was altered on the way: ${e.message}`);
      throw e;
    }
    let reply: VaultReply;
    try {
      reply = decodeVaultReply(inner);
    } catch {
      throw new PasswordError('BAD_VAULT_REPLY', 'the vault sent a reply this device cannot read');
    }
    await this.onReply?.(reply);
    if (reply.t === 'Error') {
      if (reply.code === 'VAULT_KEY_MISMATCH') {
        throw new PasswordError('VAULT_KEY_MISMATCH', 'the vault says the AKE key this device pins is not its own (vault-keys.json is from another fleet?); nothing was computed or charged');
      }
      throw new PasswordError('VAULT_ERROR', `vault refused the request (${reply.code})`, { vaultCode: reply.code });
    }
    return reply;
  }
}

/** Refusals that mean "no replica could take this now", not "this request does not open". */
const HOST_REFUSALS: ReadonlySet<string> = new Set(['NOT_LEADER', 'NO_LEADER', 'UNAVAILABLE', 'UNHEALTHY', 'LEADER_CHANGED', 'TIMEOUT', 'CLOSED', 'SESSION_EXPIRED', 'NO_SESSION']);

function unexpected(r: VaultReply): PasswordError {
  return new PasswordError('UNEXPECTED_REPLY', `unexpected vault reply ${r.t}`);
}

/** Registers (or re-registers) the password protecting K. `limit`: attempts before lockout (vault bounds apply). */
export async function enablePassword(send: Send, o: PasswordOptions, password: string | Uint8Array, k: Uint8Array, limit?: number): Promise<void> {
  const { op, suite } = await opaqueFor(o);
  const rng = o.rng ?? defaultRng;
  const x = new Exchange(send, o, rng);
  try {
    const start = op.clientStartRegistration(pw(password), { rng });
    const r1 = await x.first({ t: 'RegisterStart', suite, request: start.request, pin: pinOf(o.serverPublicKey) });
    if (r1.t !== 'RegisterResponse') throw unexpected(r1);
    // The response came through the authenticated session, so the OPRF evaluation in it is the vault's.
    let record: Uint8Array;
    try {
      let exportKey: Uint8Array;
      ({ record, exportKey } = op.clientFinishRegistration(start.state, r1.response, { rng, expectedServerPublicKey: o.serverPublicKey, ...identities(o) }));
      o.onRegistered?.(record.slice(), exportKey.slice());
    } catch (e) {
      if (e instanceof OpaqueError) throw new PasswordError('VAULT_KEY_MISMATCH', 'registration response does not carry the pinned vault key');
      throw e;
    }
    const r2 = await x.second({ t: 'RegisterFinish', suite, ticket: r1.ticket, record, k, ksf: op.ksf.name, ...(limit === undefined ? {} : { limit }) });
    if (r2.t !== 'Registered') throw unexpected(r2);
    if (limit !== undefined && r2.limit !== limit) throw new PasswordError('BAD_VAULT_REPLY', `the vault stored an attempt limit of ${r2.limit}, not the ${limit} asked for`);
    try {
      checkRegistrationConfirm({ user: o.user, suite, limit: r2.limit, ticket: r1.ticket, record, ksf: op.ksf.name }, r2.confirm);
    } catch (e) {
      throw new PasswordError('BAD_VAULT_REPLY', (e as Error).message);
    }
  } finally {
    x.close();
  }
}

/** Change password = register afresh with K re-uploaded (the device holds K; the vault never "keeps" it). */
export const changePassword = enablePassword;

/** Gets K back with the password. Throws PasswordError WRONG_PASSWORD (attemptsLeft) or LOCKED. */
export async function recoverK(send: Send, o: PasswordOptions, password: string | Uint8Array): Promise<Uint8Array> {
  const { op, suite } = await opaqueFor(o);
  const rng = o.rng ?? defaultRng;
  const x = new Exchange(send, o, rng);
  try {
    const start = op.clientStartLogin(pw(password), { rng });
    const r1 = await x.first({ t: 'RecoverStart', suite, ke1: start.ke1, pin: pinOf(o.serverPublicKey), ksf: op.ksf.name });
    if (r1.t === 'Locked') throw new PasswordError('LOCKED', 'the vault has locked this backup: too many wrong passwords');
    if (r1.t === 'KsfMismatch') {
      throw new PasswordError('KSF_MISMATCH', `this backup was registered with key stretching '${r1.ksf}', not '${op.ksf.name}'; nothing was charged`, { ksf: r1.ksf });
    }
    if (r1.t !== 'KE2') throw unexpected(r1);
    let finish: { ke3: Uint8Array; sessionKey: Uint8Array } | undefined;
    try {
      finish = op.clientFinishLogin(start.state, r1.ke2, { expectedServerPublicKey: o.serverPublicKey, ...identities(o) });
    } catch (e) {
      if (!(e instanceof OpaqueError)) throw e;
    }
    const ke3 = finish?.ke3 ?? rng(op.sizes.ke3);
    let r2: VaultReply;
    try {
      r2 = await x.second({ t: 'RecoverFinish', session: r1.session, ke3 });
    } catch (e) {
      if (e instanceof PasswordError) throw e;
      // The KE2 came, so the attempt is charged; what the vault decided about the KE3 is unknown.
      throw new PasswordError('OUTCOME_UNKNOWN', `one attempt was spent: the vault answered the first step, but its answer to the password check did not arrive (${(e as Error)?.message ?? 'no answer'}); try again`);
    }
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
  } finally {
    x.close();
  }
}

/** Deletes the record and K from the vault (Status first: the session's Disable is its second message). */
export async function disable(send: Send, o: PasswordOptions): Promise<void> {
  const x = new Exchange(send, o, o.rng ?? defaultRng);
  try {
    const r1 = await x.first({ t: 'Status' });
    if (r1.t !== 'Status') throw unexpected(r1);
    const r2 = await x.second({ t: 'Disable' });
    if (r2.t !== 'Disabled') throw unexpected(r2);
  } finally {
    x.close();
  }
}

export async function status(send: Send, o: PasswordOptions): Promise<{ state: RecordState; attemptsLeft: number; limit: number }> {
  const x = new Exchange(send, o, o.rng ?? defaultRng);
  try {
    const r = await x.first({ t: 'Status' });
    if (r.t !== 'Status') throw unexpected(r);
    return { state: r.state, attemptsLeft: r.attemptsLeft, limit: r.limit };
  } finally {
    x.close();
  }
}
