// Disable leaves a tombstone in the replicated state: a RegisterFinish replayed (or withheld and
// released) after the Delete cannot bring the record back, on any replica; tombstones expire on the
// committed entries' time, identically on replicas that applied entries and replicas that restored.
import { Packr } from 'msgpackr';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { enablePassword, recoverK, status } from '../../client/password.ts';
import type { Token } from '../../hsm-adapter/token.ts';
import { createOpaque, identityKsf, tokenServerSecrets, type Opaque } from '../../protocol/opaque/index.ts';
import { decodeDeviceMessage, decodeVaultReply, encodeDeviceMessage, encodeVaultReply, type WireSuite } from '../../protocol/wire.ts';
import { DEFAULT_POLICY, Firmware } from '../../vault/firmware/firmware.ts';
import { decodeEntry, encodeEntry, type Entry } from '../../vault/firmware/entries.ts';
import { FirmwareError } from '../../vault/firmware/errors.ts';
import { VaultState } from '../../vault/firmware/state.ts';
import { provisionTestFleet, type TestFleet } from '../helpers/fleet.ts';
import { Harness, seededRng } from './firmware-harness.ts';

const SUITE: WireSuite = 'ristretto255-SHA512';
let fleet: TestFleet;
let token: Token;
let opaque: Partial<Record<WireSuite, Opaque>>;

beforeAll(async () => {
  fleet = await provisionTestFleet({ replicas: 1 });
  token = fleet.openToken(fleet.replicas[0]!.tokenLabel);
  opaque = { [SUITE]: await createOpaque({ suite: SUITE }) };
});
afterAll(async () => {
  await fleet?.cleanup();
});

const firmware = (seed: string) => new Firmware({ replicaId: 'r0', token, opaque, rng: seededRng(seed) });
const client = (user: string, seed: string) => ({
  user,
  suite: SUITE,
  ksf: identityKsf,
  serverPublicKey: tokenServerSecrets(token, SUITE).akeKeyPair.publicKey,
  rng: seededRng(seed),
});
const K = new Uint8Array(32).fill(7);

/** Runs a registration whose RegisterFinish ChatD keeps (the device sees a failure); returns that message. */
async function withheldFinish(h: Harness, user: string, password: string, seed: string): Promise<Uint8Array> {
  let finish: Uint8Array | undefined;
  const chatd = async (m: Uint8Array) => {
    if (decodeDeviceMessage(m).t !== 'RegisterFinish') return h.send(user)(m);
    finish = m;
    return encodeVaultReply({ t: 'Error', code: 'UNAVAILABLE' });
  };
  await expect(enablePassword(chatd, client(user, seed), password, K)).rejects.toBeDefined();
  return finish!;
}

describe('tombstones', () => {
  it('a RegisterFinish replayed after Disable (within the ticket lifetime) is refused, and the record stays gone', async () => {
    const h = new Harness(firmware('tomb-replay'));
    h.step({ kind: 'tick', now: 1_000_000 });
    const captured: Uint8Array[] = [];
    await enablePassword(async (m) => (captured.push(m), h.send('ann')(m)), client('ann', 'a1'), 'pw', K);
    h.step({ kind: 'tick', now: 1_010_000 });
    const held = await withheldFinish(h, 'ann', 'pw2', 'a2'); // newer than the record: not stale by issuedAt alone
    h.step({ kind: 'tick', now: 1_020_000 });
    expect(decodeVaultReply(await h.send('ann')(encodeDeviceMessage({ t: 'Disable' })))).toEqual({ t: 'Disabled' });
    h.step({ kind: 'tick', now: 1_030_000 });
    for (const replay of [held, captured[1]!]) {
      expect(decodeVaultReply(await h.send('ann')(replay))).toEqual({ t: 'Error', code: 'STALE_REGISTRATION' });
    }
    expect(await status(h.send('ann'))).toMatchObject({ state: 'none' });
    // past the ticket lifetime the proposer refuses it on its own
    h.step({ kind: 'tick', now: 1_010_000 + DEFAULT_POLICY.ticketTtlMs + 1 });
    expect(decodeVaultReply(await h.send('ann')(held))).toEqual({ t: 'Error', code: 'TICKET_EXPIRED' });
  });

  it('apply() refuses it too: a replay proposed before the Delete committed loses on every replica', async () => {
    const h = new Harness(firmware('tomb-race'));
    h.step({ kind: 'tick', now: 2_000_000 });
    await enablePassword(h.send('bob'), client('bob', 'b1'), 'pw', K);
    h.step({ kind: 'tick', now: 2_001_000 });
    const held = await withheldFinish(h, 'bob', 'pw2', 'b2');
    h.step({ kind: 'tick', now: 2_002_000 });
    h.autoCommit = false;
    h.step({ kind: 'request', requestId: 50, user: 'bob', body: encodeDeviceMessage({ t: 'Disable' }) });
    h.step({ kind: 'request', requestId: 51, user: 'bob', body: held });
    expect(h.proposed.map((p) => decodeEntry(p.entry).t)).toEqual(['Delete', 'ChangePassword']); // the leader's pre-check could not see the Delete yet
    h.commitAll();
    expect(decodeVaultReply(h.replies.get(50)!)).toEqual({ t: 'Disabled' });
    expect(decodeVaultReply(h.replies.get(51)!)).toEqual({ t: 'Error', code: 'STALE_REGISTRATION' });
    expect(h.fw.inspect('bob')).toBeUndefined();
    // a follower applying the same committed entries ends in the same state
    const f = new Harness(firmware('tomb-race-follower'));
    for (const i of h.inputs) if (i.kind === 'committed') f.step(i);
    expect(f.fw.digest()).toBe(h.fw.digest());
    expect(f.fw.inspect('bob')).toBeUndefined();
  });

  it('the user can enable again right after Disable, even in the same millisecond', async () => {
    const h = new Harness(firmware('tomb-again'));
    h.step({ kind: 'tick', now: 3_000_000 });
    await enablePassword(h.send('cat'), client('cat', 'c1'), 'old', K);
    await h.send('cat')(encodeDeviceMessage({ t: 'Disable' }));
    const k2 = new Uint8Array(32).fill(9);
    await enablePassword(h.send('cat'), client('cat', 'c2'), 'new', k2);
    expect(await recoverK(h.send('cat'), client('cat', 'c3'), 'new')).toEqual(k2);
  });
});

describe('tombstones in VaultState', () => {
  const id = (n: number) => new Uint8Array(16).fill(n);
  const reg = (user: string, issuedAt: number, n: number): Entry => ({
    t: 'Register',
    id: id(n),
    user,
    suite: SUITE,
    oprfId: id(100 + n),
    record: new Uint8Array(192),
    kSealed: new Uint8Array(60).fill(3),
    limit: 3,
    issuedAt,
  });
  const del = (user: string, at: number, n: number, tombstoneMs = 10_000): Entry => ({ t: 'Delete', id: id(n), user, at, tombstoneMs });

  it('refuses registrations issued at or before the Delete, expires on entry time, and agrees after a restore', () => {
    const s = new VaultState();
    const log: Entry[] = [reg('u', 500, 1), del('u', 1_000, 2), reg('u', 900, 3), reg('u', 1_000, 4), del('v', 5_000, 5)];
    const effects = log.map((e, i) => s.apply(i + 1, e).kind);
    expect(effects).toEqual(['stored', 'deleted', 'stale', 'stale', 'deleted']);
    expect(s.tombstone('u')).toEqual({ before: 1_000, until: 11_000 });
    expect(s.get('u')).toBeUndefined();

    // a replica restored from a snapshot here, and one that keeps applying, stay identical from now on
    const restored = VaultState.decode(s.encode());
    expect(restored.digest()).toBe(s.digest());
    const more: Entry[] = [
      del('w', 20_000, 6), // 11_000 is past due, but not yet by the sweep slack: u stays
      del('x', 71_001, 7), // u is past due by more than the slack: every tombstone past due goes (u, v, w)
      reg('u', 1_000, 8), // the old ticket is no longer refused by the state (the proposer refuses it as expired)
    ];
    const kinds: string[][] = [[], []];
    for (const [i, e] of more.entries()) {
      kinds[0]!.push(s.apply(10 + i, e).kind);
      kinds[1]!.push(restored.apply(10 + i, e).kind);
      expect(restored.digest()).toBe(s.digest());
      if (i === 0) expect(s.tombstone('u')).toBeDefined();
      if (i === 1) expect(['u', 'v', 'w', 'x'].map((u) => s.tombstone(u))).toEqual([undefined, undefined, undefined, { before: 71_001, until: 81_001 }]);
    }
    expect(kinds[0]).toEqual(['deleted', 'deleted', 'stored']);
    expect(kinds[1]).toEqual(kinds[0]);
  });

  it('a newer registration clears the tombstone; a second Delete never lowers the boundary', () => {
    const s = new VaultState();
    s.apply(1, del('u', 2_000, 1));
    s.apply(2, del('u', 1_500, 2)); // a proposer with a slower clock
    expect(s.tombstone('u')).toEqual({ before: 2_000, until: 12_000 });
    expect(s.apply(3, reg('u', 2_001, 3)).kind).toBe('stored');
    expect(s.tombstone('u')).toBeUndefined();
    // a record issued by a replica whose clock ran ahead of the deleting leader's: its own ticket stays refused
    s.apply(4, reg('u', 9_000, 4));
    s.apply(5, del('u', 3_000, 5));
    expect(s.tombstone('u')?.before).toBe(9_000);
    expect(s.apply(6, reg('u', 9_000, 6)).kind).toBe('stale');
    // a host that fed the proposer an absurd clock cannot make the state unloadable
    s.apply(7, del('z', Number.MAX_SAFE_INTEGER - 5, 7, 720_000));
    expect(VaultState.decode(s.encode()).digest()).toBe(s.digest());
  });

  it('snapshots carry tombstones and refuse malformed ones; older snapshots and Delete entries still load', () => {
    const s = new VaultState();
    s.apply(1, reg('a', 10, 1));
    s.apply(2, del('b', 20, 2));
    const again = VaultState.decode(s.encode());
    expect(again.tombstone('b')).toEqual({ before: 20, until: 10_020 });
    const p = new Packr({ useRecords: false, mapsAsObjects: true, variableMapSize: false });
    const body = p.unpack(s.encode()) as { v: number; index: number; users: unknown[]; tombstones: unknown[] };
    const bad = [
      { ...body, tombstones: [['b', 20, 10]] }, // until before its boundary
      { ...body, tombstones: [['b', 20, 10_020], ['a', 1, 2]] }, // unsorted
      { ...body, tombstones: [['a', 20, 10_020]] }, // a live record with a tombstone
      { ...body, tombstones: [['b', -1, 10_020]] },
      { ...body, extra: 1 },
    ];
    for (const b of bad) expect(() => VaultState.decode(p.pack(b))).toThrow(FirmwareError);
    // v1 (before tombstones)
    const v1 = VaultState.decode(p.pack({ v: 1, index: body.index, users: body.users }));
    expect(v1.get('a')).toBeDefined();
    expect(v1.tombstone('b')).toBeUndefined();
    expect(() => VaultState.decode(p.pack({ v: 1, index: body.index, users: body.users, tombstones: [] }))).toThrow(FirmwareError);
    // a Delete written by older firmware: decodes, deletes, leaves no tombstone
    const legacy = p.pack({ v: 1, t: 'Delete', id: id(9), user: 'a' });
    const e = decodeEntry(legacy);
    expect(e).toEqual({ t: 'Delete', id: id(9), user: 'a' });
    expect(s.apply(3, e)).toEqual({ kind: 'deleted', existed: true });
    expect(s.tombstone('a')).toBeUndefined();
    // new entries round-trip; half a tombstone, or a reset on a wrong password, is refused
    for (const x of [del('a', 5, 1), { t: 'Outcome' as const, id: id(1), user: 'a', oprfId: id(2), ok: false, reset: false }]) expect(decodeEntry(encodeEntry(x))).toEqual(x);
    expect(() => decodeEntry(p.pack({ v: 1, t: 'Delete', id: id(9), user: 'a', at: 5 }))).toThrow(FirmwareError);
    expect(() => decodeEntry(p.pack({ v: 1, t: 'Outcome', id: id(9), user: 'a', oprfId: id(2), ok: false, reset: true }))).toThrow(FirmwareError);
  });
});
