// The vault firmware: one replica's trusted core, a pure deterministic state machine.
//
//   const fw = new Firmware({ replicaId, token, opaque, rng, policy });
//   const outputs = fw.step(input);
//
// Inputs: a device request, a committed log entry, a timer tick, a leadership change, a proposal the
// log could not take, a snapshot to restore at start. Outputs: replies, proposals (entry bytes for the
// replicated log), snapshots the agent may compact the log to, and health changes. No I/O, no clock,
// no randomness of its own: same inputs + same injected rng and token -> byte-identical outputs.
//
// The rules (docs/vault.md):
// 1. KE1 -> propose Attempt; KE2 (the OPRF evaluation, one guess) is computed only once it committed.
// 2. Every KE3 -> propose Outcome{ok, reset} -> after commit: K encrypted under the session key, or
//    attempts left (from committed state), or Locked. One commit whatever the outcome, so reply
//    latency does not tell a right password from a wrong one.
// 3. At the limit the record is Locked and K erased (Lock entry, an Attempt past the limit, or a wrong
//    Outcome with none left).
// 4. Nothing that depends on replicated state leaves before that state is committed.
// 5. Disable leaves a tombstone: no RegisterFinish whose ticket predates the Delete brings it back.
// 6. A byte-identical copy of a RecoverStart, RecoverFinish or RegisterFinish (same user) is the same
//    request: it waits for the original's commit and gets the original's reply (replies.ts).
import type { Token } from '../../hsm-adapter/token.ts';
import { BkvError } from '../../protocol/errors.ts';
import { registrationConfirm, sealKRelease } from '../../protocol/kbox.ts';
import type { Opaque, ServerLoginState, ServerSecrets } from '../../protocol/opaque/index.ts';
import { tokenServerSecrets } from '../../protocol/opaque/index.ts';
import {
  SESSION_BYTES,
  decodeDeviceMessage,
  pinOf,
  encodeVaultReply,
  type DeviceMessage,
  type VaultReply,
  type WireSuite,
} from '../../protocol/wire.ts';
import { ID_BYTES, USER_RE, decodeEntry, encodeEntry, type VaultEntry } from './entries.ts';
import { FirmwareError } from './errors.ts';
import { deriveFleetKeys, makeTicket, openK, openTicket, sealK, type FleetKeys } from './keys.ts';
import { ReplyMemory } from './replies.ts';
import { VaultState, sameBytes, type ApplyEffect } from './state.ts';
import { ERROR_CODE_RE } from '../../protocol/names.ts';

export interface Policy {
  /** Attempts per record when the device asks for none. */
  defaultLimit: number;
  /** Bounds on what a device may ask for at registration. */
  minLimit: number;
  maxLimit: number;
  /** A correct password resets the counter. */
  resetOnSuccess: boolean;
  /** A recovery session (between KE2 and KE3) lives this long. */
  sessionTtlMs: number;
  /** A request waiting for its entry to commit gives up (TIMEOUT) after this long. */
  requestTtlMs: number;
  /** Live recovery sessions kept at most (oldest dropped first); also the bound on remembered replies. */
  maxSessions: number;
  /** Replies remembered per user for duplicate requests (oldest forgotten first). */
  repliesPerUser: number;
  /** Emit a snapshot (log compaction) at least every this many entries. */
  snapshotEvery: number;
  /** Suite assumed for an unknown user's RecoverStart without one. */
  defaultSuite: WireSuite;
}

export const DEFAULT_POLICY: Readonly<Policy> = Object.freeze({
  defaultLimit: 10,
  minLimit: 3,
  maxLimit: 100,
  resetOnSuccess: true,
  sessionTtlMs: 120_000,
  requestTtlMs: 15_000,
  maxSessions: 100_000,
  repliesPerUser: 8,
  snapshotEvery: 1000,
  defaultSuite: 'ristretto255-SHA512',
});

export interface FirmwareConfig {
  /** Replica name; bound into everything this replica seals. */
  replicaId: string;
  token: Token;
  /** Ready OPAQUE instances, one per suite served (the vault side needs no KSF). */
  opaque: Partial<Record<WireSuite, Opaque>>;
  /** The only randomness the firmware uses. */
  rng: (n: number) => Uint8Array;
  policy?: Partial<Policy>;
  /**
   * A seeded bug the chaos checkers must catch (`bkv chaos sim|live --mutation ke2-before-commit`):
   * the KE2 leaves as soon as the Attempt is proposed, so a charge lost with its leader is a free guess.
   * Test-only; the one use is a single guarded line.
   */
  mutation?: 'ke2-before-commit';
}

export type FirmwareInput =
  /** message: the body already decoded by the session gate (it decodes to enforce its rules); else decoded here. */
  | { kind: 'request'; requestId: number; user: string; body: Uint8Array; message?: DeviceMessage }
  | { kind: 'committed'; index: number; entry: Uint8Array }
  | { kind: 'tick'; now: number }
  | { kind: 'leadership'; leader: boolean }
  | { kind: 'proposalFailed'; tag: number; code: string }
  /** The verified snapshot at start, or a snapshot consensus installs; never older than the applied state. */
  | { kind: 'restore'; index: number; state: Uint8Array }
  /** The host failed under us (disk write, token): stop serving. */
  | { kind: 'fault'; code: string; reason: string };

export type FirmwareOutput =
  /** hint: set by the session gate for an operational refusal the host may retry elsewhere (NOT_LEADER...). */
  | { kind: 'reply'; requestId: number; body: Uint8Array; hint?: string; reply?: VaultReply }
  | { kind: 'propose'; tag: number; entry: Uint8Array }
  /** The agent may replace log entries up to `index` with this state (the K of erased records is gone from it). */
  | { kind: 'snapshot'; index: number; state: Uint8Array }
  | { kind: 'health'; healthy: boolean; code: string; reason: string };

type Pending =
  | { kind: 'register'; requestId: number; limit: number; confirm: Uint8Array }
  | { kind: 'attempt'; requestId: number; user: string; suite: WireSuite; ke1: Uint8Array; session: Uint8Array }
  /** A KE3 waiting for its Outcome entry; oprfId null = an unknown user's fake session, sessionKey null = wrong. */
  | { kind: 'outcome'; requestId: number; user: string; oprfId: Uint8Array | null; session: Uint8Array; sessionKey: Uint8Array | null }
  | { kind: 'lock'; requestId: number; user: string }
  | { kind: 'delete'; requestId: number }
  /** A Lock proposed by the firmware itself (an expired last session): nobody waits. */
  | { kind: 'internal'; user: string };

interface Session {
  user: string;
  /** null: an unknown user's fake session, which never succeeds. */
  oprfId: Uint8Array | null;
  login: ServerLoginState;
  expiresAt: number;
}

/** Credential identifier of RFC 9807: user || 0x00 || per-registration OPRF key id. */
function credentialId(user: string, oprfId: Uint8Array): Uint8Array {
  const u = new TextEncoder().encode(user);
  const out = new Uint8Array(u.length + 1 + oprfId.length);
  out.set(u, 0);
  out.set(oprfId, u.length + 1);
  return out;
}

/** The OPRF key id an unknown user's fake record is evaluated under; no registration ever draws it. */
const UNKNOWN_OPRF_ID = new Uint8Array(ID_BYTES);

class RequestError extends BkvError {}

const hex = (b: Uint8Array): string => Buffer.from(b).toString('hex');

export class Firmware {
  readonly replicaId: string;
  private readonly policy: Policy;
  /** The only randomness (the session gate around this firmware draws from it too). */
  readonly rng: (n: number) => Uint8Array;
  private readonly opaque: Partial<Record<WireSuite, Opaque>>;
  private readonly secrets: Partial<Record<WireSuite, ServerSecrets>> = {};
  private readonly keys: FleetKeys;
  private state = new VaultState();
  /**
   * RFC 9807 identities, once the session gate names the fleet: server = the fleet, client = the
   * account. Unset (the RFC default: public keys as identities) only for tests of the bare firmware.
   */
  private serverIdentity: Uint8Array | null = null;
  readonly token: Token;
  private readonly mutation: FirmwareConfig['mutation'];

  private now = 0;
  private leader = true;
  private healthy = true;
  private nextTag = 1;
  private sinceSnapshot = 0;
  private eraseSinceSnapshot = false;
  /**
   * Proposals waiting for commit, by entry id (hex). `memo`: where the reply is remembered for
   * duplicates; `copies`: request ids of duplicates that arrived meanwhile and get the same reply.
   */
  private readonly pending = new Map<string, Pending & { deadline: number; tag: number; memo: string | null; copies: number[] }>();
  private readonly tagToId = new Map<number, string>();
  private readonly sessions = new Map<string, Session>();
  private readonly replies: ReplyMemory;
  private out: FirmwareOutput[] = [];

  constructor(cfg: FirmwareConfig) {
    this.replicaId = cfg.replicaId;
    this.policy = { ...DEFAULT_POLICY, ...cfg.policy };
    const p = this.policy;
    if (!(p.minLimit >= 1 && p.minLimit <= p.defaultLimit && p.defaultLimit <= p.maxLimit && p.maxLimit <= 1000)) {
      throw new FirmwareError('BAD_CONFIG', 'policy limits must satisfy 1 <= min <= default <= max <= 1000');
    }
    this.rng = cfg.rng;
    this.token = cfg.token;
    this.mutation = cfg.mutation;
    this.opaque = cfg.opaque;
    for (const [suite, op] of Object.entries(cfg.opaque) as Array<[WireSuite, Opaque]>) {
      if (op.suite.id !== suite) throw new FirmwareError('BAD_CONFIG', `OPAQUE instance for ${suite} is for ${op.suite.id}`);
      this.secrets[suite] = tokenServerSecrets(cfg.token, suite);
    }
    if (!this.opaque[this.policy.defaultSuite]) throw new FirmwareError('BAD_CONFIG', 'the default suite has no OPAQUE instance');
    this.keys = deriveFleetKeys(cfg.token);
    this.replies = new ReplyMemory({ perUser: this.policy.repliesPerUser, total: this.policy.maxSessions });
  }

  /** The pinned key devices must be configured with (fleet-wide: same seed in every token). */
  serverPublicKey(suite: WireSuite): Uint8Array {
    const s = this.secrets[suite];
    if (!s) throw new FirmwareError('BAD_CONFIG', `suite ${suite} not served`);
    return s.akeKeyPair.publicKey.slice();
  }

  get settings(): Readonly<Policy> {
    return this.policy;
  }

  /** Binds OPAQUE identities (the session gate calls this with the fleet's identity). */
  useServerIdentity(id: Uint8Array): void {
    this.serverIdentity = id.slice();
  }

  /** SHA-256 of the canonical state: equal on every replica that applied the same entries. */
  /**
   * Committed entries this instance applied, by their effect on a record (charged = an attempt
   * charged, lockout = a record locked just now), for /metrics: counts only, no user.
   */
  readonly effects: Record<string, number> = {};

  digest(): string {
    return this.state.digest();
  }

  get appliedIndex(): number {
    return this.state.appliedIndex;
  }

  get isHealthy(): boolean {
    return this.healthy;
  }

  /** Test/oracle view of a record's counters (no secrets). */
  inspect(user: string): { state: string; used: number; limit: number; hasK: boolean } | undefined {
    const r = this.state.get(user);
    return r && { state: r.locked ? 'locked' : 'registered', used: r.used, limit: r.limit, hasK: r.kSealed !== null };
  }

  step(input: FirmwareInput): FirmwareOutput[] {
    this.out = [];
    try {
      this.dispatch(input);
    } catch (e) {
      // Anything escaping a handler is an inconsistency of committed state or the token: fail closed.
      const code = e instanceof BkvError ? e.code : 'INTERNAL';
      this.becomeUnhealthy(code, e instanceof BkvError ? e.message : 'internal error in firmware');
    }
    const out = this.out;
    this.out = [];
    return out;
  }

  private dispatch(input: FirmwareInput): void {
    switch (input.kind) {
      case 'restore': {
        // At start (from disk), or later when consensus installs a leader's snapshot on a lagging
        // follower; never backwards. Sessions survive: each is re-checked against the record at KE3.
        const s = VaultState.decode(input.state);
        if (s.appliedIndex !== input.index) throw new FirmwareError('BAD_SNAPSHOT', 'snapshot index does not match its state');
        if (s.appliedIndex < this.state.appliedIndex) throw new FirmwareError('BAD_SNAPSHOT', 'snapshot is older than the applied state');
        this.state = s;
        return;
      }
      case 'committed':
        return this.onCommitted(input.index, input.entry);
      case 'tick':
        this.now = Math.max(this.now, input.now);
        return this.onTick();
      case 'leadership':
        this.leader = input.leader;
        return;
      case 'proposalFailed': {
        const id = this.tagToId.get(input.tag);
        if (id === undefined) return;
        return this.fail(id, safeCode(input.code, 'UNAVAILABLE'));
      }
      case 'fault':
        return this.becomeUnhealthy(safeCode(input.code, 'HOST_FAULT'), input.reason);
      case 'request':
        return this.onRequest(input.requestId, input.user, input.body, input.message);
    }
  }

  // ---- device requests ----

  private onRequest(requestId: number, user: string, body: Uint8Array, decoded?: DeviceMessage): void {
    if (!this.healthy) return this.reply(requestId, { t: 'Error', code: 'UNHEALTHY' });
    try {
      if (typeof user !== 'string' || !USER_RE.test(user)) throw new RequestError('BAD_USER', 'user is malformed');
      const m = decoded ?? decodeDeviceMessage(body);
      const memo = REMEMBERED.has(m.t) ? ReplyMemory.key(user, body) : null;
      if (memo !== null && this.replayed(requestId, user, memo)) return;
      this.handle(requestId, user, m, memo);
    } catch (e) {
      if (e instanceof FirmwareError && (e.code === 'TAMPERED' || e.code === 'BAD_CONFIG')) throw e;
      // Device-caused (bad input, bad OPAQUE message) or a token hiccup: typed code, no state touched.
      const code = e instanceof BkvError ? e.code : 'INTERNAL';
      this.reply(requestId, { t: 'Error', code: safeCode(code, 'INTERNAL') });
    }
  }

  /**
   * A copy of a request already proposed or answered: join the original, or get its reply again. Even
   * on a replica that has since lost the leadership: the reply was decided from committed state.
   */
  private replayed(requestId: number, user: string, memo: string): boolean {
    const r = this.replies.lookup(memo, this.now);
    if (!r) return false;
    if (r.kind === 'decided') {
      // Registered / Released stay true only while that registration is live: after a newer one, a
      // Disable or a lock the copy is a new request again (STALE_REGISTRATION, NO_SESSION).
      const live = this.state.get(user);
      if (r.guard && !(live && !live.locked && sameBytes(live.oprfId, r.guard))) {
        this.replies.drop(memo);
        return false;
      }
      this.out.push({ kind: 'reply', requestId, body: r.body });
      return true;
    }
    const p = this.pending.get(r.id);
    if (!p) return false; // (not reached: forgetting a pending entry forgets its memo)
    p.copies.push(requestId);
    return true;
  }

  private handle(requestId: number, user: string, m: DeviceMessage, memo: string | null): void {
    switch (m.t) {
      case 'Status': {
        const s = this.state.status(user);
        return this.reply(requestId, { t: 'Status', ...s });
      }
      case 'RegisterStart': {
        const op = this.op(m.suite);
        this.checkPin(m.suite, m.pin);
        const oprfId = this.rng(ID_BYTES);
        const response = op.serverRegistrationResponse(this.secrets[m.suite]!, m.request, credentialId(user, oprfId));
        // Issued against the state applied now: it lands only if the record does not change meanwhile.
        const ticket = makeTicket(this.keys, m.suite, user, oprfId, this.state.appliedIndex);
        return this.reply(requestId, { t: 'RegisterResponse', response, ticket });
      }
      case 'RegisterFinish': {
        this.needLeader();
        const op = this.op(m.suite);
        const { oprfId, basis } = openTicket(this.keys, m.suite, user, m.ticket);
        if (basis > this.state.appliedIndex) throw new RequestError('BAD_TICKET', 'registration ticket is from a state this replica has not applied');
        // Refused early so a stale K never reaches the log; apply() refuses it again, deterministically.
        if (this.state.isStaleRegistration(user, basis)) {
          throw new RequestError('STALE_REGISTRATION', 'a newer registration or a Disable supersedes this ticket; start again');
        }
        op.decodeRegistrationRecord(m.record);
        const limit = m.limit ?? this.policy.defaultLimit;
        if (limit < this.policy.minLimit || limit > this.policy.maxLimit) {
          throw new RequestError('BAD_LIMIT', `attempt limit must be ${this.policy.minLimit}..${this.policy.maxLimit}`);
        }
        const kSealed = sealK(this.keys, this.rng, user, oprfId, m.k);
        m.k.fill(0);
        const confirm = registrationConfirm({ user, suite: m.suite, limit, ticket: m.ticket, record: m.record, ksf: m.ksf });
        const t = this.state.get(user) ? 'ChangePassword' : 'Register';
        const entry: VaultEntry = { t, id: this.rng(ID_BYTES), user, suite: m.suite, oprfId, record: m.record, kSealed, limit, basis, ksf: m.ksf };
        return this.propose(entry, { kind: 'register', requestId, limit, confirm }, memo);
      }
      case 'RecoverStart': {
        this.needLeader();
        const r = this.state.get(user);
        if (r?.locked) return this.reply(requestId, { t: 'Locked' });
        const suite = r?.suite ?? m.suite ?? this.policy.defaultSuite;
        this.op(suite);
        this.checkPin(suite, m.pin);
        // Free, before any charge: a device stretching with other parameters could only fail.
        if (r && m.ksf !== undefined && r.ksf !== m.ksf) return this.reply(requestId, { t: 'KsfMismatch', ksf: r.ksf });
        this.op(suite).decodeKE1(m.ke1);
        if (r && r.used >= r.limit) {
          return this.propose({ t: 'Lock', id: this.rng(ID_BYTES), user, oprfId: r.oprfId }, { kind: 'lock', requestId, user });
        }
        // Charged before the password is tested: the KE2 waits for this entry to commit.
        const session = this.rng(SESSION_BYTES);
        const attempt: Extract<Pending, { kind: 'attempt' }> = { kind: 'attempt', requestId, user, suite, ke1: m.ke1, session };
        if (this.mutation === 'ke2-before-commit') { this.propose({ t: 'Attempt', id: session, user }, { kind: 'internal', user }); return this.reply(requestId, this.afterAttempt(attempt, { kind: 'charged', attemptsLeft: r ? r.limit - r.used - 1 : 0 })); }
        return this.propose({ t: 'Attempt', id: session, user }, attempt, memo);
      }
      case 'RecoverFinish': {
        const key = hex(m.session);
        const s = this.sessions.get(key);
        if (!s || s.user !== user || s.expiresAt < this.now) throw new RequestError('NO_SESSION', 'no such recovery session (expired, used, or never started)');
        this.sessions.delete(key); // one KE3 per session
        this.needLeader();
        let sessionKey: Uint8Array | null = null;
        try {
          sessionKey = this.op(s.login.suite as WireSuite).serverFinishLogin(s.login, m.ke3).sessionKey;
        } catch (e) {
          if (!(e instanceof BkvError)) throw e;
        }
        if (!s.oprfId && sessionKey) {
          sessionKey.fill(0); // a fake record never succeeds
          sessionKey = null;
        }
        // Every outcome - right, wrong, wrong at the limit, unknown user, locked - commits exactly one
        // entry of one size before its reply; what the reply says is decided from the committed state.
        const ok = sessionKey !== null;
        return this.propose(
          { t: 'Outcome', id: this.rng(ID_BYTES), user, oprfId: s.oprfId ?? UNKNOWN_OPRF_ID, ok, reset: ok && this.policy.resetOnSuccess },
          { kind: 'outcome', requestId, user, oprfId: s.oprfId, session: m.session, sessionKey },
          memo,
        );
      }
      case 'Disable':
        this.needLeader();
        // The tombstone sits at the Delete's own index: every ticket issued before it is stale.
        return this.propose({ t: 'Delete', id: this.rng(ID_BYTES), user }, { kind: 'delete', requestId });
    }
  }

  private release(user: string, oprfId: Uint8Array, session: Uint8Array, sessionKey: Uint8Array): VaultReply {
    const r = this.state.get(user);
    if (!r || r.locked || !r.kSealed) return { t: 'Locked' };
    if (!sameBytes(r.oprfId, oprfId)) return { t: 'Error', code: 'RECORD_CHANGED' };
    const k = openK(this.keys, user, r.oprfId, r.kSealed);
    const kEnc = sealKRelease(this.rng, sessionKey, session, user, k);
    k.fill(0);
    sessionKey.fill(0);
    return { t: 'Released', kEnc };
  }

  // ---- the log ----

  /** `memo`: remember the reply under this key, so a copy of the request joins instead of proposing again. */
  private propose(entry: VaultEntry, p: Pending, memo: string | null = null): void {
    const bytes = encodeEntry(entry);
    const id = hex(entry.id);
    const tag = this.nextTag++;
    this.pending.set(id, { ...p, deadline: this.now + this.policy.requestTtlMs, tag, memo, copies: [] });
    this.tagToId.set(tag, id);
    if (memo !== null) this.replies.waitFor(memo, entry.user, id);
    this.out.push({ kind: 'propose', tag, entry: bytes });
  }

  private forget(id: string): void {
    const p = this.pending.get(id);
    if (p) this.tagToId.delete(p.tag);
    this.pending.delete(id);
  }

  /** A request that will get no outcome: drop it, the session key it may hold, and its memo (a later copy is new). */
  private abandon(id: string): void {
    const p = this.pending.get(id);
    if (p?.kind === 'outcome') p.sessionKey?.fill(0);
    if (p?.memo) this.replies.forget(p.memo, id);
    this.forget(id);
  }

  /** Abandon and tell everyone waiting on it (the original and its copies). */
  private fail(id: string, code: string): void {
    const p = this.pending.get(id);
    this.abandon(id);
    if (p && p.kind !== 'internal') for (const rid of [p.requestId, ...p.copies]) this.reply(rid, { t: 'Error', code });
  }

  private onCommitted(index: number, bytes: Uint8Array): void {
    if (!this.healthy) return;
    const entry = decodeEntry(bytes);
    // Records mutate in place: remember which sealed K was there, to see whether it just left.
    const kBefore = this.state.get(entry.user)?.kSealed ?? null;
    const effect = this.state.apply(index, entry);
    this.effects[effect.kind] = (this.effects[effect.kind] ?? 0) + 1;
    if (effect.kind === 'locked' && effect.justNow) this.effects.lockout = (this.effects.lockout ?? 0) + 1;
    if (kBefore && this.state.get(entry.user)?.kSealed !== kBefore) this.eraseSinceSnapshot = true;
    this.sinceSnapshot++;

    const id = hex(entry.id);
    const p = this.pending.get(id);
    if (p) {
      this.forget(id);
      if (p.kind !== 'internal') {
        // One reply, byte-identical for the original and every copy; remembered for later copies.
        const reply = this.finish(p, effect);
        const body = encodeVaultReply(reply);
        for (const rid of [p.requestId, ...p.copies]) this.out.push({ kind: 'reply', requestId: rid, body, reply });
        if (p.memo) this.replies.settle(p.memo, id, body, this.now + this.policy.sessionTtlMs, guardOf(reply, entry));
      }
    }
    if (this.eraseSinceSnapshot || this.sinceSnapshot >= this.policy.snapshotEvery) {
      // K that left the state must leave the disk too: the agent compacts the log behind this.
      this.eraseSinceSnapshot = false;
      this.sinceSnapshot = 0;
      this.out.push({ kind: 'snapshot', index: this.state.appliedIndex, state: this.state.encode() });
    }
  }

  private finish(p: Exclude<Pending, { kind: 'internal' }>, effect: ApplyEffect): VaultReply {
    switch (p.kind) {
      case 'register':
        if (effect.kind === 'stored') return { t: 'Registered', limit: p.limit, confirm: p.confirm };
        return { t: 'Error', code: 'STALE_REGISTRATION' };
      case 'delete':
        return { t: 'Disabled' };
      case 'lock':
        return { t: 'Locked' };
      case 'outcome':
        return this.afterOutcome(p, effect);
      case 'attempt':
        return this.afterAttempt(p, effect);
    }
  }

  private afterOutcome(p: Extract<Pending, { kind: 'outcome' }>, effect: ApplyEffect): VaultReply {
    const { user, oprfId, sessionKey } = p;
    try {
      const r = this.state.get(user);
      // An unknown user, or a record deleted during the recovery: indistinguishable, as at KE2.
      if (!oprfId || !r) return { t: 'WrongPassword', attemptsLeft: 0 };
      if (r.locked) return { t: 'Locked' };
      if (!sameBytes(r.oprfId, oprfId)) return { t: 'Error', code: 'RECORD_CHANGED' };
      if (sessionKey) return this.release(user, oprfId, p.session, sessionKey);
      const attemptsLeft = effect.kind === 'failed' ? effect.attemptsLeft : r.limit - r.used;
      return { t: 'WrongPassword', attemptsLeft };
    } finally {
      sessionKey?.fill(0);
    }
  }

  private afterAttempt(p: Extract<Pending, { kind: 'attempt' }>, effect: ApplyEffect): VaultReply {
    if (effect.kind === 'locked') return { t: 'Locked' };
    const r = this.state.get(p.user);
    let oprfId: Uint8Array | null = null;
    let record: Uint8Array | null = null;
    let suite = p.suite;
    if (effect.kind === 'charged' && r && !r.locked) {
      oprfId = r.oprfId;
      record = r.record;
      suite = r.suite;
    }
    // The attempt is durable: only now does the OPRF evaluation (one guess) leave the vault.
    let ke2: Uint8Array;
    let login: ServerLoginState;
    try {
      const op = this.op(suite);
      const ids = this.serverIdentity ? { clientIdentity: new TextEncoder().encode(p.user), serverIdentity: this.serverIdentity } : {};
      ({ ke2, state: login } = op.serverStartLogin(this.secrets[suite]!, record, p.ke1, credentialId(p.user, oprfId ?? UNKNOWN_OPRF_ID), {
        rng: this.rng,
        ...ids,
      }));
    } catch (e) {
      const code = e instanceof BkvError ? e.code : 'INTERNAL';
      return { t: 'Error', code: safeCode(code, 'INTERNAL') };
    }
    if (this.sessions.size >= this.policy.maxSessions) {
      const oldest = this.sessions.keys().next().value;
      if (oldest !== undefined) this.sessions.delete(oldest);
    }
    this.sessions.set(hex(p.session), { user: p.user, oprfId, login, expiresAt: this.now + this.policy.sessionTtlMs });
    return { t: 'KE2', session: p.session, ke2 };
  }

  // ---- time ----

  private onTick(): void {
    for (const [id, p] of this.pending) {
      if (p.deadline >= this.now) continue;
      // The entry may still commit later; an attempt then stays charged (unknown outcome = used).
      this.fail(id, 'TIMEOUT');
    }
    this.replies.expire(this.now);
    const expiredUsers = new Set<string>();
    for (const [key, s] of this.sessions) {
      if (s.expiresAt >= this.now) continue;
      this.sessions.delete(key);
      if (s.oprfId) expiredUsers.add(s.user);
    }
    if (!this.leader || !this.healthy) return;
    // A record at its limit whose last session lapsed without a KE3 is locked now, not at the next KE1.
    for (const user of expiredUsers) {
      const r = this.state.get(user);
      if (!r || r.locked || r.used < r.limit) continue;
      if ([...this.sessions.values()].some((s) => s.user === user)) continue;
      if ([...this.pending.values()].some((p) => (p.kind === 'internal' || p.kind === 'lock') && p.user === user)) continue;
      this.propose({ t: 'Lock', id: this.rng(ID_BYTES), user, oprfId: r.oprfId }, { kind: 'internal', user });
    }
  }

  // ---- helpers ----

  private op(suite: WireSuite): Opaque {
    const op = this.opaque[suite];
    if (!op) throw new RequestError('UNSUPPORTED_SUITE', `suite ${suite} is not served by this vault`);
    return op;
  }

  /** The device pinned another AKE key than this vault's: refused before anything is computed or charged. */
  private checkPin(suite: WireSuite, pin: Uint8Array | undefined): void {
    if (pin && !sameBytes(pin, pinOf(this.secrets[suite]!.akeKeyPair.publicKey))) {
      throw new RequestError('VAULT_KEY_MISMATCH', 'the device pinned another vault key than this vault has');
    }
  }

  private needLeader(): void {
    if (!this.leader) throw new RequestError('NOT_LEADER', 'this replica is not the leader');
  }

  private reply(requestId: number, r: VaultReply): void {
    this.out.push({ kind: 'reply', requestId, body: encodeVaultReply(r), reply: r });
  }

  private becomeUnhealthy(code: string, reason: string): void {
    if (!this.healthy) return;
    this.healthy = false;
    this.out.push({ kind: 'health', healthy: false, code, reason });
    // Fail closed: everyone waiting gets an error, every session dies.
    for (const id of [...this.pending.keys()]) this.fail(id, 'UNHEALTHY');
    this.sessions.clear();
    this.replies.clear();
  }
}

/** The registration a remembered reply is only true of while it is live (K stored, K released). */
function guardOf(reply: VaultReply, entry: VaultEntry): Uint8Array | null {
  if (reply.t === 'Registered' && (entry.t === 'Register' || entry.t === 'ChangePassword')) return entry.oprfId;
  if (reply.t === 'Released' && entry.t === 'Outcome') return entry.oprfId;
  return null;
}

/** Requests whose copies are answered from the original (see replies.ts). */
const REMEMBERED: ReadonlySet<DeviceMessage['t']> = new Set(['RecoverStart', 'RecoverFinish', 'RegisterFinish']);

function safeCode(code: string, fallback: string): string {
  return ERROR_CODE_RE.test(code) ? code : fallback;
}
