// Disable leaves a tombstone in the replicated state, at the Delete's own log index: a RegisterFinish
// replayed (or withheld and released) after the Delete cannot bring the record back, on any replica.
// Replay protection is a function of committed log positions only: a ticket carries the index the
// vault had applied when it was issued (its basis), a registration lands only if the record has not
// changed and no Delete happened since, a ticket more than TICKET_SPAN positions old is stale, and
// tombstones are swept by log distance. No host clock - set back, run forward, or restarted at 0 -
// moves any of it, identically on replicas that applied entries and replicas that restored.
import { Packr } from 'msgpackr';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { disable, enablePassword, recoverK, status, type Send } from '../../client/password.ts';
import type { Token } from '../../hsm-adapter/token.ts';
import { createOpaque, identityKsf, tokenServerSecrets, type Opaque } from '../../protocol/opaque/index.ts';
import { fastX25519 } from '../../protocol/opaque/group.ts';
import { tokenSessionKey } from '../../protocol/opaque/secrets.ts';
import { decodeSessionFrame, fleetIdentity } from '../../protocol/session.ts';
import { decodeVaultReply, encodeDeviceMessage, pinOf, type WireSuite } from '../../protocol/wire.ts';
import { Firmware, type FirmwareOutput, type Policy } from '../../vault/firmware/firmware.ts';
import { decodeEntry, encodeEntry, type VaultEntry } from '../../vault/firmware/entries.ts';
import { FirmwareError } from '../../vault/firmware/errors.ts';
import { TICKET_SPAN, VaultState } from '../../vault/firmware/state.ts';
import { provisionTestFleet, type TestFleet } from '../helpers/fleet.ts';
import { Harness, seededRng } from './firmware-harness.ts';

const SUITE: WireSuite = 'ristretto255-SHA512';
let fleet: TestFleet;
let token: Token;
let opaque: Partial<Record<WireSuite, Opaque>>;
/** The device's side of OPAQUE for inner-protocol registrations (no key stretching). */
let device: Opaque;
/** The vault's session key devices pin. */
let sessionKey: Uint8Array;

beforeAll(async () => {
  fleet = await provisionTestFleet({ replicas: 1 });
  token = fleet.openToken(fleet.replicas[0]!.tokenLabel);
  opaque = { [SUITE]: await createOpaque({ suite: SUITE }) };
  device = await createOpaque({ suite: SUITE, ksf: identityKsf });
  sessionKey = tokenSessionKey(token, fastX25519()).publicKey;
});
afterAll(async () => {
  await fleet?.cleanup();
});

const firmware = (seed: string, policy: Partial<Policy> = {}) => new Firmware({ replicaId: 'r0', token, opaque, rng: seededRng(seed), policy });
const client = (user: string, seed: string) => ({
  user,
  suite: SUITE,
  ksf: identityKsf,
  serverPublicKey: tokenServerSecrets(token, SUITE).akeKeyPair.publicKey,
  sessionKey,
  rng: seededRng(seed),
});
/** RFC 9807 identities a device binds against a gate-wrapped firmware (as client/password.ts does). */
const ids = (user: string) => ({ clientIdentity: new TextEncoder().encode(user), serverIdentity: fleetIdentity(sessionKey) });
const K = new Uint8Array(32).fill(7);
const enc = new TextEncoder();
const YEAR_MS = 365 * 86_400_000;

/**
 * The inner protocol, stepped plain into the bare firmware: RegisterStart now, and the RegisterFinish
 * the device would send inside its session (returned, not sent) - what an attacker who recorded the
 * inner message would hold.
 */
async function innerFinish(h: Harness, user: string, password: string, seed: string, limit?: number): Promise<Uint8Array> {
  const rng = seededRng(seed);
  const akeKey = tokenServerSecrets(token, SUITE).akeKeyPair.publicKey;
  const start = device.clientStartRegistration(enc.encode(password), { rng });
  const r1 = decodeVaultReply(await h.send(user)(encodeDeviceMessage({ t: 'RegisterStart', suite: SUITE, request: start.request, pin: pinOf(akeKey) })));
  if (r1.t !== 'RegisterResponse') throw new Error(`expected RegisterResponse, got ${r1.t}`);
  const { record } = device.clientFinishRegistration(start.state, r1.response, { rng, expectedServerPublicKey: akeKey, ...ids(user) });
  return encodeDeviceMessage({ t: 'RegisterFinish', suite: SUITE, ticket: r1.ticket, record, k: K, ksf: identityKsf.name, ...(limit === undefined ? {} : { limit }) });
}

/** A device registration through the gate whose Next ChatD keeps (the device sees a failure); returns the frames. */
async function withheldFrames(h: Harness, user: string, password: string, seed: string): Promise<{ hello: Uint8Array; next: Uint8Array }> {
  const frames: Uint8Array[] = [];
  const chatd: Send = async (m) => {
    frames.push(m);
    if (decodeSessionFrame(m).kind === 'next') throw new Error('held by the relay');
    return h.send(user)(m);
  };
  await expect(enablePassword(chatd, client(user, seed), password, K)).rejects.toThrow('held');
  return { hello: frames[0]!, next: frames[1]! };
}

/** A device's send() that records every frame it sends (ChatD's view). */
function recording(h: Harness, user: string, into: Uint8Array[]): Send {
  const base = h.send(user);
  return async (m) => (into.push(m), base(m));
}

/** Moves the log `n` positions on (Raft's own entries leave gaps the firmware never sees), ending on one committed entry. */
async function advanceLog(h: Harness, n: number): Promise<void> {
  h.index += n - 1;
  // A Disable of a user nobody registered: it commits at the next index and changes no record.
  expect(decodeVaultReply(await h.send('nobody-at-all')(encodeDeviceMessage({ t: 'Disable' })))).toEqual({ t: 'Disabled' });
}

/** The last snapshot the firmware emitted (what a restarting replica loads). */
function lastSnapshot(h: Harness): { index: number; state: Uint8Array } {
  const p = new Packr({ useRecords: false, mapsAsObjects: true });
  for (let i = h.transcript.length - 1; i >= 0; i--) {
    const outs = p.unpack(h.transcript[i]!) as FirmwareOutput[];
    const s = outs.find((o) => o.kind === 'snapshot');
    if (s && s.kind === 'snapshot') return { index: s.index, state: new Uint8Array(s.state) };
  }
  throw new Error('no snapshot emitted');
}

describe('tombstones', () => {
  it('a RegisterFinish replayed after Disable is refused, and the record stays gone', async () => {
    const h = new Harness(firmware('tomb-replay'));
    h.step({ kind: 'tick', now: 1_000_000 });
    const original = await innerFinish(h, 'ann', 'pw', 'a1');
    expect(decodeVaultReply(await h.send('ann')(original))).toMatchObject({ t: 'Registered' });
    h.step({ kind: 'tick', now: 1_010_000 });
    const held = await innerFinish(h, 'ann', 'pw2', 'a2'); // issued after the record was stored: not stale by the record alone
    const frames = await withheldFrames(h, 'ann', 'pw3', 'a3'); // the same, through the gate
    h.step({ kind: 'tick', now: 1_020_000 });
    expect(decodeVaultReply(await h.send('ann')(encodeDeviceMessage({ t: 'Disable' })))).toEqual({ t: 'Disabled' });
    const gone = h.fw.digest();
    for (const now of [1_030_000, 0, 1_020_000 + 100 * YEAR_MS]) {
      h.step({ kind: 'tick', now }); // whatever the host says the time is
      for (const replay of [held, original]) {
        expect(decodeVaultReply(await h.send('ann')(replay))).toEqual({ t: 'Error', code: 'STALE_REGISTRATION' });
      }
      expect(h.fw.digest()).toBe(gone);
    }
    // the withheld Next released now (its session is gone with the clock jump): refused unopened
    expect(decodeSessionFrame(await h.send('ann')(frames.next))).toEqual({ kind: 'refused', code: 'NO_SESSION' });
    expect(h.fw.digest()).toBe(gone);
    expect(await status(h.send('ann'), client('ann', 'a4'))).toMatchObject({ state: 'none' });
  });

  it('a withheld Next released after Disable, in its still-open session, lands on the tombstone and changes nothing', async () => {
    const h = new Harness(firmware('tomb-withheld'));
    await enablePassword(h.send('abe'), client('abe', 'w1'), 'pw', K);
    const frames = await withheldFrames(h, 'abe', 'pw2', 'w2');
    await disable(h.send('abe'), client('abe', 'w3'));
    const gone = h.fw.digest();
    expect(h.gate.sessionCount).toBeGreaterThan(0);
    const final = decodeSessionFrame(await h.send('abe')(frames.next));
    expect(final.kind).toBe('final'); // the session opens it (only the device can read the refusal inside)...
    expect(h.fw.digest()).toBe(gone); // ...and nothing was stored
    expect(h.proposed).toEqual([]);
    expect(await status(h.send('abe'), client('abe', 'w4'))).toMatchObject({ state: 'none' });
  });

  it('the attack: a recorded RegisterFinish replayed after the tombstone is swept, on a restarted replica with its clock set anywhere, does not restore the record with a fresh counter', async () => {
    const h = new Harness(firmware('tomb-attack', { snapshotEvery: 1 }));
    h.step({ kind: 'tick', now: 5_000_000 });
    await advanceLog(h, 3); // the recorded registration's basis is not 0
    // the registration the attacker recorded (inner message), and the user's later change of password
    // through the gate (the frames ChatD saw)
    const recorded = await innerFinish(h, 'bob', 'pw', 'b1', 3);
    expect(decodeVaultReply(await h.send('bob')(recorded))).toMatchObject({ t: 'Registered', limit: 3 });
    const frames: Uint8Array[] = [];
    await enablePassword(recording(h, 'bob', frames), client('bob', 'b2'), 'pw2', K, 3);
    // two wrong guesses: the counter is no longer fresh
    for (const g of ['x', 'y']) await expect(recoverK(h.send('bob'), client('bob', `g-${g}`), g)).rejects.toMatchObject({ code: 'WRONG_PASSWORD' });
    expect(h.fw.inspect('bob')).toMatchObject({ used: 2, limit: 3 });
    // while the record lives, the recorded registration cannot reset its counter
    let before = h.fw.digest();
    expect(decodeVaultReply(await h.send('bob')(recorded))).toEqual({ t: 'Error', code: 'STALE_REGISTRATION' });
    expect(h.fw.digest()).toBe(before);
    expect(h.fw.inspect('bob')).toMatchObject({ used: 2 });

    await disable(h.send('bob'), client('bob', 'b3'));
    const deletedAt = h.fw.appliedIndex;
    expect(VaultState.decode(lastSnapshot(h).state).tombstone('bob')).toEqual({ at: deletedAt });
    // the log moves on far enough that the tombstone is swept (any Register or Delete applied sweeps)
    await advanceLog(h, TICKET_SPAN + 1);
    const snap = lastSnapshot(h);
    expect(snap.index).toBe(h.fw.appliedIndex);
    const swept = VaultState.decode(snap.state);
    expect(swept.tombstone('bob')).toBeUndefined();
    expect(swept.get('bob')).toBeUndefined();
    const gone = h.fw.digest();

    // the replica that swept it, its clock set back to 0 (a tick never moves the firmware's time back) and far forward
    for (const now of [0, 1, 5_000_000 + 50 * YEAR_MS]) {
      h.step({ kind: 'tick', now });
      expect(decodeVaultReply(await h.send('bob')(recorded))).toEqual({ t: 'Error', code: 'STALE_REGISTRATION' });
      expect(h.fw.digest()).toBe(gone);
    }

    // restarted replicas: from the snapshot, or replaying the whole log, each with its clock anywhere (a
    // restarted firmware's clock starts at 0, so "set back" is the default)
    const restarts: Array<{ name: string; start: (r: Harness) => void; now: number | null }> = [
      { name: 'snapshot, no tick', start: (r) => r.step({ kind: 'restore', ...snap }), now: null },
      { name: 'snapshot, clock 0', start: (r) => r.step({ kind: 'restore', ...snap }), now: 0 },
      { name: 'snapshot, clock before the Delete', start: (r) => r.step({ kind: 'restore', ...snap }), now: 4_000_000 },
      { name: 'snapshot, clock a century on', start: (r) => r.step({ kind: 'restore', ...snap }), now: 5_000_000 + 100 * YEAR_MS },
      { name: 'log replay, clock 0', start: (r) => h.inputs.forEach((i) => i.kind === 'committed' && r.step(i)), now: 0 },
    ];
    for (const [n, x] of restarts.entries()) {
      const r = new Harness(firmware(`tomb-attack-restart-${n}`, { snapshotEvery: 1 }));
      x.start(r);
      r.index = h.index;
      if (x.now !== null) r.step({ kind: 'tick', now: x.now });
      expect(r.fw.digest(), x.name).toBe(gone);
      // inner protocol, stepped straight into the firmware
      expect(decodeVaultReply(await r.send('bob')(recorded)), x.name).toEqual({ t: 'Error', code: 'STALE_REGISTRATION' });
      expect(r.fw.digest(), x.name).toBe(gone);
      // through the gate: the recorded Next alone (no session after a restart)...
      expect(decodeSessionFrame(await r.send('bob')(frames[1]!)), x.name).toEqual({ kind: 'refused', code: 'NO_SESSION' });
      // ...and after its recorded Hello, which opens a new session with new keys the old Next does not open under
      expect(decodeSessionFrame(await r.send('bob')(frames[0]!)).kind, x.name).toBe('welcome');
      expect(decodeSessionFrame(await r.send('bob')(frames[1]!)), x.name).toEqual({ kind: 'refused', code: 'SESSION_REJECTED' });
      expect(r.fw.digest(), x.name).toBe(gone);
      expect(r.proposed, x.name).toEqual([]);
      expect(r.fw.inspect('bob'), x.name).toBeUndefined();
      expect(await status(r.send('bob'), client('bob', `s-${n}`)), x.name).toEqual({ state: 'none', attemptsLeft: 0, limit: 0 });
    }

    // a replica restarted without the log up to the ticket's basis cannot take it either
    const empty = new Harness(firmware('tomb-attack-empty'));
    before = empty.fw.digest();
    expect(decodeVaultReply(await empty.send('bob')(recorded))).toEqual({ t: 'Error', code: 'BAD_TICKET' });
    expect(empty.fw.digest()).toBe(before);
  });

  it('apply() refuses it too: a replay proposed before the Delete committed loses on every replica', async () => {
    const h = new Harness(firmware('tomb-race'));
    h.step({ kind: 'tick', now: 2_000_000 });
    await enablePassword(h.send('cal'), client('cal', 'c1'), 'pw', K);
    const held = await innerFinish(h, 'cal', 'pw2', 'c2');
    h.autoCommit = false;
    h.step({ kind: 'request', requestId: 50, user: 'cal', body: encodeDeviceMessage({ t: 'Disable' }) });
    h.step({ kind: 'request', requestId: 51, user: 'cal', body: held });
    expect(h.proposed.map((p) => decodeEntry(p.entry).t)).toEqual(['Delete', 'ChangePassword']); // the leader's pre-check could not see the Delete yet
    h.commitAll();
    expect(decodeVaultReply(h.replies.get(50)!)).toEqual({ t: 'Disabled' });
    expect(decodeVaultReply(h.replies.get(51)!)).toEqual({ t: 'Error', code: 'STALE_REGISTRATION' });
    expect(h.fw.inspect('cal')).toBeUndefined();
    // a follower applying the same committed entries, with another clock, ends in the same state
    const f = new Harness(firmware('tomb-race-follower'));
    f.step({ kind: 'tick', now: 7 });
    for (const i of h.inputs) if (i.kind === 'committed') f.step(i);
    expect(f.fw.digest()).toBe(h.fw.digest());
    expect(f.fw.inspect('cal')).toBeUndefined();
  });

  it('the user can enable again right after Disable: a ticket issued once the Delete is applied is good', async () => {
    const h = new Harness(firmware('tomb-again'));
    h.step({ kind: 'tick', now: 3_000_000 });
    await enablePassword(h.send('dot'), client('dot', 'd1'), 'old', K);
    await disable(h.send('dot'), client('dot', 'd2'));
    const k2 = new Uint8Array(32).fill(9);
    await enablePassword(h.send('dot'), client('dot', 'd3'), 'new', k2); // no tick in between: no clock to wait for
    expect(await recoverK(h.send('dot'), client('dot', 'd4'), 'new')).toEqual(k2);
    await expect(recoverK(h.send('dot'), client('dot', 'd5'), 'old')).rejects.toMatchObject({ code: 'WRONG_PASSWORD' });
    // the inner protocol too: a ticket whose basis is the Delete's own index
    await h.send('dot')(encodeDeviceMessage({ t: 'Disable' }));
    const finish = await innerFinish(h, 'dot', 'newer', 'd6');
    expect(decodeVaultReply(await h.send('dot')(finish))).toMatchObject({ t: 'Registered' });
    expect(h.fw.inspect('dot')).toMatchObject({ state: 'registered', used: 0, hasK: true });
  });
});

describe('tombstones in VaultState', () => {
  const id = (n: number) => new Uint8Array(16).fill(n);
  const reg = (user: string, basis: number, n: number): VaultEntry => ({
    t: 'Register',
    id: id(n),
    user,
    suite: SUITE,
    oprfId: id(100 + n),
    record: new Uint8Array(192),
    kSealed: new Uint8Array(60).fill(3),
    limit: 3,
    basis,
    ksf: identityKsf.name,
  });
  const del = (user: string, n: number): VaultEntry => ({ t: 'Delete', id: id(n), user });

  it('refuses registrations issued before the Delete, sweeps by log distance, and agrees after a restore', () => {
    const s = new VaultState();
    const log: Array<[number, VaultEntry]> = [
      [1, reg('u', 0, 1)],
      [2, del('u', 2)],
      [3, reg('u', 1, 3)], // issued before the Delete
      [4, reg('u', 0, 4)], // and older still
      [5, del('v', 5)],
    ];
    expect(log.map(([i, e]) => s.apply(i, e).kind)).toEqual(['stored', 'deleted', 'stale', 'stale', 'deleted']);
    expect(s.tombstone('u')).toEqual({ at: 2 });
    expect(s.tombstone('v')).toEqual({ at: 5 });
    expect(s.get('u')).toBeUndefined();
    expect([1, 2, 3].map((b) => s.isStaleRegistration('u', b))).toEqual([true, false, false]);

    // a replica restored from a snapshot here, and one that keeps applying, stay identical from now on
    const restored = VaultState.decode(s.encode());
    expect(restored.digest()).toBe(s.digest());
    const more: Array<[number, VaultEntry]> = [
      [2 + TICKET_SPAN, del('w', 6)], // u's tombstone is exactly TICKET_SPAN old: kept
      [3 + TICKET_SPAN, del('x', 7)], // one more: u goes, v (younger) stays
      [4 + TICKET_SPAN, reg('u', 1, 8)], // the old ticket: no tombstone now, but TICKET_SPAN + 3 positions old
      [5 + TICKET_SPAN, reg('u', 2 + TICKET_SPAN, 9)], // a fresh one
      [6 + TICKET_SPAN + TICKET_SPAN, del('y', 10)], // far on: every older tombstone goes
    ];
    const kinds: string[][] = [[], []];
    for (const [n, [i, e]] of more.entries()) {
      kinds[0]!.push(s.apply(i, e).kind);
      kinds[1]!.push(restored.apply(i, e).kind);
      expect(restored.digest()).toBe(s.digest());
      if (n === 0) expect(['u', 'v', 'w'].map((u) => s.tombstone(u))).toEqual([{ at: 2 }, { at: 5 }, { at: 2 + TICKET_SPAN }]);
      if (n === 1) expect(['u', 'v', 'w', 'x'].map((u) => s.tombstone(u))).toEqual([undefined, { at: 5 }, { at: 2 + TICKET_SPAN }, { at: 3 + TICKET_SPAN }]);
      if (n === 4) expect(['u', 'v', 'w', 'x', 'y'].map((u) => s.tombstone(u))).toEqual([undefined, undefined, undefined, undefined, { at: 6 + 2 * TICKET_SPAN }]);
    }
    expect(kinds[0]).toEqual(['deleted', 'deleted', 'stale', 'stored', 'deleted']);
    expect(kinds[1]).toEqual(kinds[0]);
    expect(s.get('u')).toMatchObject({ changedAt: 5 + TICKET_SPAN, used: 0 });
    // whatever a sweep dropped, no ticket older than it is good: the span refuses it on its own
    for (const basis of [0, 1, 2, 5]) expect(s.isStaleRegistration('nobody', basis)).toBe(true);
  });

  it('a newer registration clears the tombstone; a second Delete moves it forward; no clock is involved', () => {
    const s = new VaultState();
    s.apply(1, del('u', 1));
    s.apply(2, del('u', 2));
    expect(s.tombstone('u')).toEqual({ at: 2 });
    expect(s.apply(3, reg('u', 1, 3)).kind).toBe('stale');
    expect(s.apply(4, reg('u', 2, 4)).kind).toBe('stored'); // issued once the Delete was applied
    expect(s.tombstone('u')).toBeUndefined();
    // the record itself now refuses what was issued before it (changedAt), tombstone or not
    expect(s.get('u')?.changedAt).toBe(4);
    expect(s.apply(5, reg('u', 3, 5)).kind).toBe('stale');
    expect(s.apply(6, reg('u', 4, 6)).kind).toBe('stored');
    expect(s.apply(8, del('u', 7)).kind).toBe('deleted'); // gaps: Raft's own entries
    expect(s.apply(9, reg('u', 7, 8)).kind).toBe('stale');
    expect(s.apply(10, reg('u', 8, 9)).kind).toBe('stored');
    // a host that jumps the log to the end cannot make the state unloadable, and every ticket is then stale
    s.apply(Number.MAX_SAFE_INTEGER - 5, del('z', 10));
    expect(s.tombstone('z')).toEqual({ at: Number.MAX_SAFE_INTEGER - 5 });
    expect(VaultState.decode(s.encode()).digest()).toBe(s.digest());
    expect(s.isStaleRegistration('fresh', 10)).toBe(true);
    expect(() => s.apply(11, reg('u', 10, 11))).toThrow(FirmwareError); // and the log never goes back
  });

  it('snapshots carry tombstones and refuse malformed ones; older snapshot and entry formats are refused', () => {
    const s = new VaultState();
    s.apply(1, reg('a', 0, 1));
    s.apply(2, del('b', 2));
    const again = VaultState.decode(s.encode());
    expect(again.tombstone('b')).toEqual({ at: 2 });
    expect(again.get('a')).toMatchObject({ changedAt: 1, ksf: identityKsf.name });
    expect(again.digest()).toBe(s.digest());
    const p = new Packr({ useRecords: false, mapsAsObjects: true, variableMapSize: false });
    const body = p.unpack(s.encode()) as { v: number; index: number; users: unknown[][]; tombstones: unknown[] };
    expect(body.v).toBe(3);
    const row = body.users[0]!;
    const bad = [
      { ...body, tombstones: [['b', 3]] }, // a Delete past the snapshot's own index
      { ...body, tombstones: [['c', 2], ['b', 2]] }, // unsorted
      { ...body, tombstones: [['a', 2]] }, // a live record with a tombstone
      { ...body, tombstones: [['b', -1]] },
      { ...body, tombstones: [['b', 2, 10_002]] }, // the clock-time shape (before, until)
      { ...body, users: [[...row.slice(0, 6), 3, ...row.slice(7)]] }, // changedAt past the index
      { ...body, users: [[...row.slice(0, 7), 'not a name!', ...row.slice(8)]] }, // key stretching
      { ...body, users: [[...row.slice(0, 6), ...row.slice(8)]] }, // a record without changedAt and ksf
      { ...body, extra: 1 },
      { ...body, v: 2 }, // the clock-time format
      { ...body, v: 1 },
    ];
    for (const b of bad) expect(() => VaultState.decode(p.pack(b))).toThrow(FirmwareError);
    expect(VaultState.decode(p.pack(body)).digest()).toBe(s.digest()); // the control: only the change above is refused
    // entries: a Delete carries no time; older entry formats (clock times) are refused, never read as basis 0
    for (const x of [del('a', 5), reg('a', 7, 6), { t: 'Outcome' as const, id: id(1), user: 'a', oprfId: id(2), ok: false, reset: false }]) {
      expect(decodeEntry(encodeEntry(x))).toEqual(x);
    }
    expect(() => decodeEntry(p.pack({ v: 2, t: 'Delete', id: id(9), user: 'a', at: 5 }))).toThrow(FirmwareError);
    expect(() => decodeEntry(p.pack({ v: 2, t: 'Delete', id: id(9), user: 'a', at: 5, tombstoneMs: 10_000 }))).toThrow(FirmwareError);
    expect(() => decodeEntry(p.pack({ v: 1, t: 'Delete', id: id(9), user: 'a' }))).toThrow(FirmwareError);
    const { basis: _basis, ...clockReg } = reg('a', 0, 9) as Extract<VaultEntry, { t: 'Register' }>;
    expect(() => decodeEntry(p.pack({ v: 2, ...clockReg, issuedAt: 5 }))).toThrow(FirmwareError);
    expect(() => decodeEntry(p.pack({ v: 2, t: 'Outcome', id: id(9), user: 'a', oprfId: id(2), ok: false, reset: true }))).toThrow(FirmwareError);
  });
});
