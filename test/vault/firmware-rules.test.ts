// The firmware alone, driven input by input: the vault's rules, determinism, and its purity.
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import fc from 'fast-check';
import { Packr } from 'msgpackr';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { enablePassword, recoverK, status, disable, type Send } from '../../client/password.ts';
import type { Token } from '../../hsm-adapter/token.ts';
import { createOpaque, identityKsf, tokenServerSecrets, type Opaque } from '../../protocol/opaque/index.ts';
import { fastX25519 } from '../../protocol/opaque/group.ts';
import { tokenSessionKey } from '../../protocol/opaque/secrets.ts';
import { InputError } from '../../protocol/errors.ts';
import { registrationConfirm } from '../../protocol/kbox.ts';
import { FRAME_BYTES, SessionKind, decodeSessionFrame, fleetIdentity } from '../../protocol/session.ts';
import { decodeDeviceMessage, decodeVaultReply, encodeDeviceMessage, pinOf, type WireSuite } from '../../protocol/wire.ts';
import { Firmware, type FirmwareInput } from '../../vault/firmware/firmware.ts';
import { decodeEntry, encodeEntry } from '../../vault/firmware/entries.ts';
import { FirmwareError } from '../../vault/firmware/errors.ts';
import { TICKET_SPAN, VaultState } from '../../vault/firmware/state.ts';
import { provisionTestFleet, type TestFleet } from '../helpers/fleet.ts';
import { Harness, seededRng } from './firmware-harness.ts';

let fleet: TestFleet;
let token: Token;
let opaque: Partial<Record<WireSuite, Opaque>>;
/** The vault's session key devices pin (X25519, from the token's sealed AKE seed). */
let sessionKey: Uint8Array;
/** The device's side of OPAQUE for inner-protocol tests (no key stretching). */
let device: Opaque;
const SUITE: WireSuite = 'ristretto255-SHA512';

beforeAll(async () => {
  fleet = await provisionTestFleet({ replicas: 1 });
  token = fleet.openToken(fleet.replicas[0]!.tokenLabel);
  opaque = { 'ristretto255-SHA512': await createOpaque({ suite: 'ristretto255-SHA512' }), 'P256-SHA256': await createOpaque({ suite: 'P256-SHA256' }) };
  sessionKey = tokenSessionKey(token, fastX25519()).publicKey;
  device = await createOpaque({ suite: SUITE, ksf: identityKsf });
});
afterAll(async () => {
  await fleet?.cleanup();
});

const firmware = (seed: string) => new Firmware({ replicaId: 'r0', token, opaque, rng: seededRng(seed), policy: { defaultLimit: 5 } });
const client = (user: string, seed: string, suite: WireSuite = SUITE) => ({
  user,
  suite,
  ksf: identityKsf,
  serverPublicKey: tokenServerSecrets(token, suite).akeKeyPair.publicKey,
  sessionKey,
  rng: seededRng(seed),
});
/** RFC 9807 identities of a device talking to a gate-wrapped firmware (what client/password.ts passes). */
const ids = (user: string) => ({ clientIdentity: new TextEncoder().encode(user), serverIdentity: fleetIdentity(sessionKey) });
const pin = () => pinOf(tokenServerSecrets(token, SUITE).akeKeyPair.publicKey);

/**
 * The inner protocol a device speaks inside its session, stepped plain into the bare firmware:
 * RegisterStart now, and the RegisterFinish it would send (not sent), made with the identities the
 * gate binds, so the record also works for a device through the gate.
 */
async function innerRegistration(h: Harness, user: string, password: string, seed: string, k: Uint8Array, limit?: number) {
  const rng = seededRng(seed);
  const start = device.clientStartRegistration(new TextEncoder().encode(password), { rng });
  const r1 = decodeVaultReply(await h.send(user)(encodeDeviceMessage({ t: 'RegisterStart', suite: SUITE, request: start.request, pin: pin() })));
  if (r1.t !== 'RegisterResponse') throw new Error(`expected RegisterResponse, got ${r1.t}`);
  const { record } = device.clientFinishRegistration(start.state, r1.response, {
    rng,
    expectedServerPublicKey: tokenServerSecrets(token, SUITE).akeKeyPair.publicKey,
    ...ids(user),
  });
  const finish = encodeDeviceMessage({ t: 'RegisterFinish', suite: SUITE, ticket: r1.ticket, record, k, ksf: identityKsf.name, ...(limit === undefined ? {} : { limit }) });
  return { ticket: r1.ticket, record, finish };
}

/** Moves the log `n` positions on (Raft's own entries leave gaps the firmware never sees), then commits one entry. */
async function advanceLog(h: Harness, n: number): Promise<void> {
  h.index += n - 1;
  // An Attempt for a user nobody registered: it commits at the next index and changes no record.
  await h.send('nobody-at-all')(encodeDeviceMessage({ t: 'RecoverStart', ke1: device.clientStartLogin(new TextEncoder().encode('x')).ke1 }));
}

describe('rules', () => {
  it('KE2 (one guess) leaves only after the Attempt is committed; K only after the resetting Outcome is', async () => {
    const h = new Harness(firmware('rules'));
    expect(Buffer.from(h.gate.sessionPublicKey()).equals(Buffer.from(sessionKey))).toBe(true); // the key devices pin
    h.step({ kind: 'tick', now: 1_000 });
    const k = new Uint8Array(randomBytes(32));
    await enablePassword(h.send('ann'), client('ann', 'c1'), 'pw', k);
    h.autoCommit = false;
    const op = opaque[SUITE]!;
    const op2 = await createOpaque({ suite: SUITE, ksf: identityKsf });
    const start = op2.clientStartLogin(new TextEncoder().encode('pw'));
    const out1 = h.step({ kind: 'request', requestId: 900, user: 'ann', body: encodeDeviceMessage({ t: 'RecoverStart', ke1: start.ke1 }) });
    expect(out1.map((o) => o.kind)).toEqual(['propose']);
    expect(decodeEntry((out1[0] as { entry: Uint8Array }).entry)).toMatchObject({ t: 'Attempt', user: 'ann' });
    expect(h.fw.inspect('ann')?.used).toBe(0);
    h.commitAll();
    expect(h.fw.inspect('ann')?.used).toBe(1);
    const ke2 = decodeVaultReply(h.replies.get(900)!) as { t: string; session: Uint8Array; ke2: Uint8Array };
    expect(ke2.t).toBe('KE2');
    // the gate named the fleet: the KE2 verifies only under the identities the device binds
    expect(() => op2.clientFinishLogin(start.state, ke2.ke2)).toThrow();
    const fin = op2.clientFinishLogin(start.state, ke2.ke2, ids('ann'));
    const out2 = h.step({ kind: 'request', requestId: 901, user: 'ann', body: encodeDeviceMessage({ t: 'RecoverFinish', session: ke2.session, ke3: fin.ke3 }) });
    expect(out2.map((o) => o.kind)).toEqual(['propose']);
    expect(decodeEntry((out2[0] as { entry: Uint8Array }).entry)).toMatchObject({ t: 'Outcome', ok: true, reset: true });
    expect(h.replies.has(901)).toBe(false);
    h.commitAll();
    expect(decodeVaultReply(h.replies.get(901)!).t).toBe('Released');
    expect(h.fw.inspect('ann')?.used).toBe(0);
    expect(op.suite.id).toBe(SUITE);
  });

  it('through the gate too: the Welcome carrying KE2 waits for the Attempt, the Final carrying K for the Outcome', async () => {
    const h = new Harness(firmware('rules-gate'));
    const k = new Uint8Array(randomBytes(32));
    await enablePassword(h.send('amy'), client('amy', 'g1'), 'pw', k);
    const seen: Array<{ kind: string; immediate: string[]; commits: number }> = [];
    const held: Send = async (body) => {
      const { reply, immediate, commits } = h.held('amy', body);
      seen.push({ kind: decodeSessionFrame(reply).kind, immediate, commits });
      return reply;
    };
    expect(await recoverK(held, client('amy', 'g2'), 'pw')).toEqual(k);
    expect(seen).toEqual([
      { kind: 'welcome', immediate: ['propose'], commits: 1 },
      { kind: 'final', immediate: ['propose'], commits: 1 },
    ]);
    expect(h.fw.inspect('amy')?.used).toBe(0);
  });

  it('a proposal the log drops fails the request with a typed error and charges nothing', async () => {
    const h = new Harness(firmware('drop'));
    await enablePassword(h.send('ben'), client('ben', 'c2'), 'pw', new Uint8Array(32).fill(1));
    h.autoCommit = false;
    const start = (await createOpaque({ suite: SUITE, ksf: identityKsf })).clientStartLogin(new TextEncoder().encode('x'));
    const [p] = h.step({ kind: 'request', requestId: 7, user: 'ben', body: encodeDeviceMessage({ t: 'RecoverStart', ke1: start.ke1 }) });
    h.proposed.length = 0;
    h.step({ kind: 'proposalFailed', tag: (p as { tag: number }).tag, code: 'NOT_LEADER' });
    expect(decodeVaultReply(h.replies.get(7)!)).toEqual({ t: 'Error', code: 'NOT_LEADER' });
    expect(h.fw.inspect('ben')?.used).toBe(0);
  });

  it('a crash loses recovery sessions, never the charged attempt', async () => {
    const h = new Harness(firmware('crash'));
    await enablePassword(h.send('cat'), client('cat', 'c3'), 'pw', new Uint8Array(32).fill(2));
    const op = await createOpaque({ suite: SUITE, ksf: identityKsf });
    const start = op.clientStartLogin(new TextEncoder().encode('pw'));
    const ke2 = decodeVaultReply(await h.send('cat')(encodeDeviceMessage({ t: 'RecoverStart', ke1: start.ke1 }))) as { session: Uint8Array; ke2: Uint8Array };
    const fin = op.clientFinishLogin(start.state, ke2.ke2, ids('cat'));
    // restart: a new firmware replays the committed entries
    const h2 = new Harness(firmware('crash-2'));
    for (const i of h.inputs) if (i.kind === 'committed') h2.step(i);
    h2.index = h.index;
    expect(h2.fw.digest()).toBe(h.fw.digest());
    const reply = decodeVaultReply(await h2.send('cat')(encodeDeviceMessage({ t: 'RecoverFinish', session: ke2.session, ke3: fin.ke3 })));
    expect(reply).toEqual({ t: 'Error', code: 'NO_SESSION' });
    expect(await status(h2.send('cat'), client('cat', 'c3-s'))).toMatchObject({ attemptsLeft: 4 });
  });

  it('a session whose KE3 never comes, at the limit, locks the record when it expires', async () => {
    const h = new Harness(firmware('expire'));
    h.step({ kind: 'tick', now: 10_000 });
    await enablePassword(h.send('dan'), client('dan', 'c4'), 'pw', new Uint8Array(32).fill(3), 3);
    for (let i = 0; i < 2; i++) await recoverK(h.send('dan'), client('dan', `w${i}`), 'nope').catch(() => undefined);
    expect(h.fw.inspect('dan')).toMatchObject({ used: 2, hasK: true });
    const op = await createOpaque({ suite: SUITE, ksf: identityKsf });
    await h.send('dan')(encodeDeviceMessage({ t: 'RecoverStart', ke1: op.clientStartLogin(new TextEncoder().encode('pw')).ke1 }));
    expect(h.fw.inspect('dan')).toMatchObject({ used: 3, hasK: true });
    h.step({ kind: 'tick', now: 10_000 + 120_001 });
    expect(h.fw.inspect('dan')).toMatchObject({ state: 'locked', hasK: false });
  });

  it('registration tickets go stale by log position, not by time, and a replayed older registration cannot roll a record back', async () => {
    const h = new Harness(firmware('ticket'));
    h.step({ kind: 'tick', now: 50_000 });
    // an older registration, committed, then superseded by the device's own change of password
    const old = await innerRegistration(h, 'eve', 'old', 'c5', new Uint8Array(32).fill(4));
    expect(decodeVaultReply(await h.send('eve')(old.finish))).toMatchObject({ t: 'Registered' });
    h.step({ kind: 'tick', now: 60_000 });
    const frames: Uint8Array[] = [];
    const answers: Uint8Array[] = [];
    const base = h.send('eve');
    const tap: Send = async (b) => {
      frames.push(b);
      const r = await base(b);
      answers.push(r);
      return r;
    };
    await enablePassword(tap, client('eve', 'c6'), 'new', new Uint8Array(32).fill(5));
    const live = h.fw.digest();
    // the inner message replayed: refused on the log position it was issued at, nothing changes
    expect(decodeVaultReply(await h.send('eve')(old.finish))).toEqual({ t: 'Error', code: 'STALE_REGISTRATION' });
    expect(h.fw.digest()).toBe(live);
    await expect(recoverK(h.send('eve'), client('eve', 'c7'), 'old')).rejects.toMatchObject({ code: 'WRONG_PASSWORD' });
    const afterGuess = h.fw.digest();
    // the device's session frames replayed: the Next is the one Final of a single-use session, never run
    // again; once the session is gone it is refused unopened
    const final = await h.send('eve')(frames[1]!);
    expect(decodeSessionFrame(final).kind).toBe('final');
    expect(Buffer.from(final).equals(Buffer.from(answers[1]!))).toBe(true);
    expect(h.fw.digest()).toBe(afterGuess);
    h.step({ kind: 'tick', now: 60_000 + 120_001 });
    expect(h.gate.sessionCount).toBe(0);
    expect(decodeSessionFrame(await h.send('eve')(frames[1]!))).toEqual({ kind: 'refused', code: 'NO_SESSION' });
    expect(h.fw.digest()).toBe(afterGuess);

    // no clock ends a ticket: ten years later it is still good...
    const a = await innerRegistration(h, 'ivy', 'a', 'c8', new Uint8Array(32).fill(6));
    const b = await innerRegistration(h, 'joe', 'b', 'c9', new Uint8Array(32).fill(6));
    const basis = h.fw.appliedIndex;
    h.step({ kind: 'tick', now: 60_000 + 10 * 365 * 86_400_000 });
    // ...until TICKET_SPAN log positions have passed since it was issued
    await advanceLog(h, TICKET_SPAN - 1);
    expect(h.fw.appliedIndex).toBe(basis + TICKET_SPAN - 1);
    expect(decodeVaultReply(await h.send('ivy')(a.finish))).toMatchObject({ t: 'Registered' }); // commits at basis + TICKET_SPAN
    expect(h.fw.appliedIndex).toBe(basis + TICKET_SPAN);
    const before = h.fw.digest();
    expect(decodeVaultReply(await h.send('joe')(b.finish))).toEqual({ t: 'Error', code: 'STALE_REGISTRATION' }); // would commit one past
    expect(h.fw.digest()).toBe(before);
    expect(await status(h.send('joe'), client('joe', 'c9-s'))).toMatchObject({ state: 'none' });

    // and apply() decides on the index the entry really commits at, not the one the proposer saw
    const c = await innerRegistration(h, 'kay', 'c', 'c10', new Uint8Array(32).fill(7));
    const cBasis = h.fw.appliedIndex;
    await advanceLog(h, TICKET_SPAN - 1);
    h.autoCommit = false;
    const rid = h.nextRequest++;
    expect(h.step({ kind: 'request', requestId: rid, user: 'kay', body: c.finish }).map((o) => o.kind)).toEqual(['propose']); // fresh enough to propose
    h.index = cBasis + TICKET_SPAN; // Raft's own entries take the next position: it commits one past the span
    h.commitAll();
    h.autoCommit = true;
    expect(decodeVaultReply(h.replies.get(rid)!)).toEqual({ t: 'Error', code: 'STALE_REGISTRATION' });
    expect(h.fw.inspect('kay')).toBeUndefined();
  });

  it('a ticket names the replica state it came from: one from a state this replica has not applied is refused', async () => {
    const h = new Harness(firmware('ticket-ahead'));
    await enablePassword(h.send('lia'), client('lia', 'a1'), 'pw', new Uint8Array(32).fill(1));
    await advanceLog(h, 5);
    const t = await innerRegistration(h, 'lia', 'pw2', 'a2', new Uint8Array(32).fill(2));
    // a replica that has applied less (a lagging follower become leader, a restart from an older snapshot)
    const lagging = new Harness(firmware('ticket-ahead-2'));
    for (const i of h.inputs) if (i.kind === 'committed' && i.index <= 1) lagging.step(i);
    lagging.index = 1;
    const before = lagging.fw.digest();
    expect(decodeVaultReply(await lagging.send('lia')(t.finish))).toEqual({ t: 'Error', code: 'BAD_TICKET' });
    expect(lagging.fw.digest()).toBe(before);
    // a forged basis does not verify either
    const forged = decodeDeviceMessage(t.finish) as Extract<ReturnType<typeof decodeDeviceMessage>, { t: 'RegisterFinish' }>;
    const ticket = forged.ticket.slice();
    new DataView(ticket.buffer).setBigUint64(16, 0n);
    expect(decodeVaultReply(await lagging.send('lia')(encodeDeviceMessage({ ...forged, ticket })))).toEqual({ t: 'Error', code: 'BAD_TICKET' });
    expect(lagging.fw.digest()).toBe(before);
    // on the replica that issued it, it lands, and the confirmation names exactly what was committed
    expect(decodeVaultReply(await h.send('lia')(t.finish))).toEqual({
      t: 'Registered',
      limit: 5,
      confirm: registrationConfirm({ user: 'lia', suite: SUITE, limit: 5, ticket: t.ticket, record: t.record, ksf: identityKsf.name }),
    });
  });

  it('K and its record travel in one session: a relay cannot splice a Next into another session, and a bad copy costs the device nothing', async () => {
    const h = new Harness(firmware('swap'));
    const victim: Uint8Array[] = [];
    const attacker: Uint8Array[] = [];
    // ChatD lets the victim's Hello through and holds its Next; it runs its own registration for the same account
    const hold = (into: Uint8Array[], user: string) => async (m: Uint8Array) => {
      into.push(m);
      if (decodeSessionFrame(m).kind === 'next') throw new Error('held by the relay');
      return h.send(user)(m);
    };
    await expect(enablePassword(hold(victim, 'fay'), client('fay', 'c8'), 'victim pw', new Uint8Array(32).fill(6))).rejects.toThrow('held');
    await expect(enablePassword(hold(attacker, 'fay'), client('fay', 'c9'), 'attacker pw', new Uint8Array(32).fill(7))).rejects.toThrow('held');
    const before = h.fw.digest();
    const v = decodeSessionFrame(victim[1]!) as { kind: 'next'; sid: Uint8Array; ciphertext: Uint8Array };
    const a = decodeSessionFrame(attacker[1]!) as typeof v;
    const frame = (sid: Uint8Array, ct: Uint8Array) => Uint8Array.from([...victim[1]!.subarray(0, 2), ...sid, ...ct]);
    expect(victim[1]![1]).toBe(SessionKind.Next);
    const refusals = [
      await h.send('fay')(frame(a.sid, v.ciphertext)), // the victim's request (its K) under the attacker's session
      await h.send('fay')(frame(v.sid, a.ciphertext)), // the attacker's request under the victim's session
      await h.send('gus')(victim[1]!), // relayed as another account
    ];
    const flipped = victim[1]!.slice();
    flipped[flipped.length - 1]! ^= 1;
    refusals.push(await h.send('fay')(flipped)); // altered on the way
    expect(refusals.map((r) => decodeSessionFrame(r))).toEqual([
      { kind: 'refused', code: 'SESSION_REJECTED' },
      { kind: 'refused', code: 'SESSION_REJECTED' },
      { kind: 'refused', code: 'NO_SESSION' },
      { kind: 'refused', code: 'SESSION_REJECTED' },
    ]);
    expect(h.fw.digest()).toBe(before);
    expect(h.fw.inspect('fay')).toBeUndefined();
    // none of them used the victim's session up: its real Next still registers
    const final = await h.send('fay')(victim[1]!);
    expect(final.length).toBe(FRAME_BYTES.final);
    expect(decodeSessionFrame(final).kind).toBe('final');
    expect(h.fw.inspect('fay')).toMatchObject({ state: 'registered', hasK: true });
    expect(await recoverK(h.send('fay'), client('fay', 'c10'), 'victim pw')).toEqual(new Uint8Array(32).fill(6));
  });
});

describe('determinism', () => {
  async function scenario(h: Harness): Promise<void> {
    let now = 1_000;
    const tick = () => h.step({ kind: 'tick', now: (now += 250) });
    tick();
    await enablePassword(h.send('gil'), client('gil', 'd1'), 'pw', new Uint8Array(32).fill(9), 4);
    tick();
    await recoverK(h.send('gil'), client('gil', 'd2'), 'pw');
    await recoverK(h.send('gil'), client('gil', 'd3'), 'bad').catch(() => undefined);
    tick();
    await recoverK(h.send('nobody'), client('nobody', 'd4'), 'x').catch(() => undefined);
    await enablePassword(h.send('hal'), client('hal', 'd5', 'P256-SHA256'), 'pw2', new Uint8Array(32).fill(8));
    await recoverK(h.send('hal'), client('hal', 'd6', 'P256-SHA256'), 'pw2');
    await status(h.send('gil'), client('gil', 'd7'));
    await disable(h.send('hal'), client('hal', 'd8', 'P256-SHA256'));
    tick();
  }

  it('the same inputs with the same rng give byte-identical outputs and state digests', async () => {
    const a = new Harness(firmware('seed-1'));
    await scenario(a);
    const b = new Harness(firmware('seed-1'));
    for (const input of a.inputs) if (input.kind !== 'committed') b.step(input as FirmwareInput);
    expect(b.transcript.length).toBe(a.transcript.length);
    for (let i = 0; i < a.transcript.length; i++) expect(Buffer.from(b.transcript[i]!).equals(Buffer.from(a.transcript[i]!))).toBe(true);
    expect(b.fw.digest()).toBe(a.fw.digest());
    // control: another seed changes the outputs (so the comparison above can fail)
    const c = new Harness(firmware('seed-2'));
    for (const input of a.inputs) if (input.kind !== 'committed') c.step(input as FirmwareInput);
    expect(c.transcript.some((t, i) => !Buffer.from(t).equals(Buffer.from(a.transcript[i]!)))).toBe(true);
  });
});

describe('state and entries', () => {
  const rec = (over = {}) => ({
    t: 'Register' as const,
    id: new Uint8Array(16).fill(1),
    user: 'u',
    suite: SUITE,
    oprfId: new Uint8Array(16).fill(2),
    record: new Uint8Array(192),
    kSealed: new Uint8Array(60).fill(3),
    limit: 3,
    basis: 0,
    ksf: identityKsf.name,
    ...over,
  });

  it('applies deterministically: an Attempt past the limit locks and erases K; stale resets do nothing', () => {
    const s = new VaultState();
    let i = 0;
    s.apply(++i, rec());
    for (let n = 0; n < 3; n++) expect(s.apply(++i, { t: 'Attempt', id: new Uint8Array(16).fill(10 + n), user: 'u' }).kind).toBe('charged');
    expect(s.apply(++i, { t: 'Reset', id: new Uint8Array(16), user: 'u', oprfId: new Uint8Array(16).fill(9) }).kind).toBe('stale');
    expect(s.get('u')?.used).toBe(3);
    expect(s.apply(++i, { t: 'Attempt', id: new Uint8Array(16).fill(20), user: 'u' })).toEqual({ kind: 'locked', justNow: true });
    expect(s.get('u')).toMatchObject({ locked: true, kSealed: null });
    expect(s.apply(++i, { t: 'Reset', id: new Uint8Array(16), user: 'u', oprfId: new Uint8Array(16).fill(2) }).kind).toBe('stale');
    expect(s.apply(++i, { t: 'Attempt', id: new Uint8Array(16).fill(21), user: 'nobody' }).kind).toBe('unknown-user');
    // the registration replayed onto the locked record (a fresh counter) is stale: it was issued before the record was stored
    expect(s.get('u')?.changedAt).toBe(1);
    expect(s.apply(++i, rec({ id: new Uint8Array(16).fill(30), oprfId: new Uint8Array(16).fill(31) })).kind).toBe('stale');
    expect(s.get('u')).toMatchObject({ locked: true, kSealed: null, used: 3, changedAt: 1 });
    const again = VaultState.decode(s.encode());
    expect(again.digest()).toBe(s.digest());
    expect(() => s.apply(i, { t: 'Delete', id: new Uint8Array(16), user: 'u' })).toThrow(FirmwareError);
    expect(s.apply(i + 5, { t: 'Delete', id: new Uint8Array(16), user: 'u' }).kind).toBe('deleted'); // Raft's own entries leave gaps
  });

  it('entries round-trip; random bytes never decode into an entry or a device message', () => {
    const e = rec();
    expect(decodeEntry(encodeEntry(e))).toEqual(e);
    for (const x of [rec({ t: 'ChangePassword' as const, basis: 123_456 }), { t: 'Delete' as const, id: new Uint8Array(16).fill(4), user: 'u' }]) {
      expect(decodeEntry(encodeEntry(x))).toEqual(x);
    }
    // what older firmware wrote (a clock time instead of a log position) is refused, never read as basis 0
    const p = new Packr({ useRecords: false, mapsAsObjects: true, variableMapSize: false });
    const { t: _t, ...fields } = e;
    expect(() => decodeEntry(p.pack({ v: 1, t: 'Register', ...fields }))).toThrow(FirmwareError);
    const { basis: _b, ...noBasis } = fields;
    expect(() => decodeEntry(p.pack({ v: 2, t: 'Register', ...noBasis, issuedAt: 5 }))).toThrow(FirmwareError);
    expect(() => decodeEntry(p.pack({ v: 2, t: 'Register', ...fields, basis: -1 }))).toThrow(FirmwareError);
    expect(() => decodeEntry(p.pack({ v: 2, t: 'Register', ...fields, ksf: 'not a name!' }))).toThrow(FirmwareError);
    expect(() => decodeEntry(p.pack({ v: 2, t: 'Delete', id: new Uint8Array(16), user: 'u', at: 5 }))).toThrow(FirmwareError);
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 400 }), (bytes) => {
        expect(() => decodeEntry(bytes)).toThrow(FirmwareError);
        expect(() => decodeDeviceMessage(bytes)).toThrow(InputError);
      }),
      { numRuns: 500 },
    );
  });

  it('imports no I/O module and reads no clock or ambient randomness', () => {
    const dir = join(import.meta.dirname, '../../vault/firmware');
    const files = readdirSync(dir).filter((f) => f.endsWith('.ts'));
    expect(files.length).toBeGreaterThan(4);
    for (const f of files) {
      const src = readFileSync(join(dir, f), 'utf8');
      const imports = [...src.matchAll(/from '([^']+)'/g)].map((m) => m[1]!);
      for (const m of imports) {
        expect(['fs', 'net', 'http', 'https', 'worker_threads', 'child_process', 'dgram', 'os', 'lmdb', 'ws'].some((x) => m === x || m === `node:${x}` || m.startsWith(`node:${x}/`)), `${f} imports ${m}`).toBe(false);
        expect(m.includes('/agent/') || m.includes('/consensus/'), `${f} imports ${m}`).toBe(false);
      }
      expect(/Date\.now|Math\.random|randomBytes|getRandomValues|setTimeout|setInterval/.test(src.replace(/\/\/.*$/gm, '')), f).toBe(false);
    }
  });
});

describe('wire codec', () => {
  const b = (n: number, fill = 1) => new Uint8Array(n).fill(fill);
  it('round-trips every message and refuses unknown fields, versions and odd encodings', async () => {
    const { encodeVaultReply, FINISH_REPLY_SIZE } = await import('../../protocol/wire.ts');
    const msgs = [
      { t: 'RegisterStart', suite: SUITE, request: b(32) },
      { t: 'RegisterStart', suite: SUITE, request: b(32), pin: b(16, 2) },
      { t: 'RegisterFinish', suite: 'P256-SHA256', ticket: b(40), record: b(129), k: b(32), ksf: identityKsf.name, limit: 7 },
      { t: 'RegisterFinish', suite: SUITE, ticket: b(40), record: b(129), k: b(32), ksf: 'argon2id' },
      { t: 'RecoverStart', ke1: b(96) },
      { t: 'RecoverStart', suite: SUITE, ke1: b(96), pin: b(16, 3), ksf: 'scrypt' },
      { t: 'RecoverFinish', session: b(16), ke3: b(64) },
      { t: 'Status' },
      { t: 'Disable' },
    ] as const;
    for (const m of msgs) expect(decodeDeviceMessage(encodeDeviceMessage(m))).toEqual(m);
    const replies = [
      { t: 'Released', kEnc: b(60) },
      { t: 'WrongPassword', attemptsLeft: 200 },
      { t: 'WrongPassword', attemptsLeft: 0 },
      { t: 'Locked' },
    ] as const;
    for (const r of replies) {
      const bytes = encodeVaultReply(r);
      expect(bytes.length).toBe(FINISH_REPLY_SIZE);
      expect(decodeVaultReply(bytes)).toEqual(r);
    }
    for (const r of [{ t: 'Registered', limit: 7, confirm: b(32, 5) }, { t: 'KsfMismatch', ksf: 'argon2id' }] as const) {
      expect(decodeVaultReply(encodeVaultReply(r))).toEqual(r);
    }
    const p = new Packr({ useRecords: false, mapsAsObjects: true, variableMapSize: false });
    const finish = { v: 2, t: 'RegisterFinish', suite: SUITE, ticket: b(40), record: b(129), k: b(32), ksf: 'identity' };
    expect(decodeDeviceMessage(p.pack(finish))).toMatchObject({ t: 'RegisterFinish' }); // the control: the bad ones below differ in one thing
    const bad = [
      { v: 2, t: 'Status', extra: 1 },
      { v: 1, t: 'Status' }, // the wire version before the session
      { v: 3, t: 'Status' },
      { v: 2, t: 'RecoverStart', ke1: b(96), suite: 'X25519' },
      { v: 2, t: 'RecoverStart', ke1: b(96), pin: b(15) },
      { v: 2, t: 'RecoverStart', ke1: b(96), ksf: 'no spaces allowed' },
      { v: 2, t: 'RegisterStart', suite: SUITE, request: b(32), pin: b(17) },
      { v: 2, t: 'RecoverFinish', session: b(15), ke3: b(64) },
      { ...finish, limit: 1.5 },
      { ...finish, k: b(31) },
      { ...finish, k: undefined },
      { ...finish, ksf: undefined },
      { ...finish, ksf: '' },
      { ...finish, k: undefined, kUpload: b(93) }, // the pre-session K upload
      { v: 2, t: 'RecoverStart', ke1: 'not bytes' },
      { v: 2, t: 'toString' },
    ].map((m) => Object.fromEntries(Object.entries(m).filter(([, x]) => x !== undefined)));
    for (const m of bad) expect(() => decodeDeviceMessage(p.pack(m))).toThrow(InputError);
    // a non-canonical encoding of a valid message (map32 header) is refused too
    const good = encodeDeviceMessage({ t: 'Status' });
    const odd = Buffer.concat([Buffer.of(0xdf, 0, 0, 0, 2), Buffer.from(good.subarray(3))]);
    expect(() => decodeDeviceMessage(odd)).toThrow(InputError);
  });
});
