// The firmware alone, driven input by input: the vault's rules, determinism, and its purity.
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { enablePassword, recoverK, status, disable } from '../../client/password.ts';
import type { Token } from '../../hsm-adapter/token.ts';
import { createOpaque, identityKsf, tokenServerSecrets, type Opaque } from '../../protocol/opaque/index.ts';
import { InputError } from '../../protocol/errors.ts';
import { decodeDeviceMessage, decodeVaultReply, encodeDeviceMessage, encodeVaultReply, type WireSuite } from '../../protocol/wire.ts';
import { Firmware, type FirmwareInput } from '../../vault/firmware/firmware.ts';
import { decodeEntry, encodeEntry } from '../../vault/firmware/entries.ts';
import { FirmwareError } from '../../vault/firmware/errors.ts';
import { VaultState } from '../../vault/firmware/state.ts';
import { provisionTestFleet, type TestFleet } from '../helpers/fleet.ts';
import { Harness, seededRng } from './firmware-harness.ts';

let fleet: TestFleet;
let token: Token;
let opaque: Partial<Record<WireSuite, Opaque>>;
const SUITE: WireSuite = 'ristretto255-SHA512';

beforeAll(async () => {
  fleet = await provisionTestFleet({ replicas: 1 });
  token = fleet.openToken(fleet.replicas[0]!.tokenLabel);
  opaque = { 'ristretto255-SHA512': await createOpaque({ suite: 'ristretto255-SHA512' }), 'P256-SHA256': await createOpaque({ suite: 'P256-SHA256' }) };
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
  rng: seededRng(seed),
});

describe('rules', () => {
  it('KE2 (one guess) leaves only after the Attempt is committed; K only after the resetting Outcome is', async () => {
    const h = new Harness(firmware('rules'));
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
    const fin = op2.clientFinishLogin(start.state, ke2.ke2);
    const out2 = h.step({ kind: 'request', requestId: 901, user: 'ann', body: encodeDeviceMessage({ t: 'RecoverFinish', session: ke2.session, ke3: fin.ke3 }) });
    expect(out2.map((o) => o.kind)).toEqual(['propose']);
    expect(decodeEntry((out2[0] as { entry: Uint8Array }).entry)).toMatchObject({ t: 'Outcome', ok: true, reset: true });
    expect(h.replies.has(901)).toBe(false);
    h.commitAll();
    expect(decodeVaultReply(h.replies.get(901)!).t).toBe('Released');
    expect(h.fw.inspect('ann')?.used).toBe(0);
    expect(op.suite.id).toBe(SUITE);
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
    const fin = op.clientFinishLogin(start.state, ke2.ke2);
    // restart: a new firmware replays the committed entries
    const h2 = new Harness(firmware('crash-2'));
    for (const i of h.inputs) if (i.kind === 'committed') h2.step(i);
    h2.index = h.index;
    expect(h2.fw.digest()).toBe(h.fw.digest());
    const reply = decodeVaultReply(await h2.send('cat')(encodeDeviceMessage({ t: 'RecoverFinish', session: ke2.session, ke3: fin.ke3 })));
    expect(reply).toEqual({ t: 'Error', code: 'NO_SESSION' });
    expect(await status(h2.send('cat'))).toMatchObject({ attemptsLeft: 4 });
  });

  it('a session whose KE3 never comes, at the limit, locks the record when it expires', async () => {
    const h = new Harness(firmware('expire'));
    h.step({ kind: 'tick', now: 10_000 });
    await enablePassword(h.send('dan'), client('dan', 'c4'), 'pw', new Uint8Array(32).fill(3), 3);
    for (let i = 0; i < 2; i++) await recoverK(h.send('dan'), client('dan', `w${i}`), 'nope').catch(() => undefined);
    const op = await createOpaque({ suite: SUITE, ksf: identityKsf });
    await h.send('dan')(encodeDeviceMessage({ t: 'RecoverStart', ke1: op.clientStartLogin(new TextEncoder().encode('pw')).ke1 }));
    expect(h.fw.inspect('dan')).toMatchObject({ used: 3, hasK: true });
    h.step({ kind: 'tick', now: 10_000 + 120_001 });
    expect(h.fw.inspect('dan')).toMatchObject({ state: 'locked', hasK: false });
  });

  it('registration tickets expire, and a replayed older registration cannot roll a record back', async () => {
    const h = new Harness(firmware('ticket'));
    h.step({ kind: 'tick', now: 50_000 });
    const captured: Uint8Array[] = [];
    const base = h.send('eve');
    const spy = async (b: Uint8Array) => {
      captured.push(b);
      return base(b);
    };
    await enablePassword(spy, client('eve', 'c5'), 'old', new Uint8Array(32).fill(4));
    const oldFinish = captured[1]!;
    h.step({ kind: 'tick', now: 60_000 });
    await enablePassword(h.send('eve'), client('eve', 'c6'), 'new', new Uint8Array(32).fill(5));
    expect(decodeVaultReply(await h.send('eve')(oldFinish))).toEqual({ t: 'Error', code: 'STALE_REGISTRATION' });
    await expect(recoverK(h.send('eve'), client('eve', 'c7'), 'old')).rejects.toMatchObject({ code: 'WRONG_PASSWORD' });
    h.step({ kind: 'tick', now: 60_000 + 600_001 });
    expect(decodeVaultReply(await h.send('eve')(oldFinish))).toEqual({ t: 'Error', code: 'TICKET_EXPIRED' });
  });

  it('a K upload re-paired with another record (a ChatD swap) is refused', async () => {
    const h = new Harness(firmware('swap'));
    const a: Uint8Array[] = [];
    const b: Uint8Array[] = [];
    const tap = (into: Uint8Array[], user: string) => async (m: Uint8Array) => (into.push(m), h.send(user)(m));
    await enablePassword(tap(a, 'fay'), client('fay', 'c8'), 'victim pw', new Uint8Array(32).fill(6));
    // ChatD holds the attacker's own RegisterFinish back and sends a forged one instead
    const withhold = async (m: Uint8Array) => (b.push(m), b.length === 2 ? encodeVaultReply({ t: 'Error', code: 'UNAVAILABLE' }) : h.send('fay')(m));
    await enablePassword(withhold, client('fay', 'c9'), 'attacker pw', new Uint8Array(32).fill(7)).catch(() => undefined);
    const victim = decodeDeviceMessage(a[1]!) as Extract<ReturnType<typeof decodeDeviceMessage>, { t: 'RegisterFinish' }>;
    const attacker = decodeDeviceMessage(b[1]!) as typeof victim;
    const forged = encodeDeviceMessage({ ...attacker, kUpload: victim.kUpload });
    expect(decodeVaultReply(await h.send('fay')(forged))).toEqual({ t: 'Error', code: 'BAD_K_UPLOAD' });
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
    await status(h.send('gil'));
    await disable(h.send('hal'));
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
    issuedAt: 5,
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
    const again = VaultState.decode(s.encode());
    expect(again.digest()).toBe(s.digest());
    expect(() => s.apply(i, { t: 'Delete', id: new Uint8Array(16), user: 'u' })).toThrow(FirmwareError);
    expect(s.apply(i + 5, { t: 'Delete', id: new Uint8Array(16), user: 'u' }).kind).toBe('deleted'); // Raft's own entries leave gaps
  });

  it('entries round-trip; random bytes never decode into an entry or a device message', () => {
    const e = rec();
    expect(decodeEntry(encodeEntry(e))).toEqual(e);
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
    const { Packr } = await import('msgpackr');
    const msgs = [
      { t: 'RegisterStart', suite: SUITE, request: b(32) },
      { t: 'RegisterFinish', suite: 'P256-SHA256', ticket: b(40), record: b(129), kUpload: b(93), limit: 7 },
      { t: 'RecoverStart', ke1: b(96) },
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
    const p = new Packr({ useRecords: false, mapsAsObjects: true, variableMapSize: false });
    const bad = [
      { v: 1, t: 'Status', extra: 1 },
      { v: 2, t: 'Status' },
      { v: 1, t: 'RecoverStart', ke1: b(96), suite: 'X25519' },
      { v: 1, t: 'RecoverFinish', session: b(15), ke3: b(64) },
      { v: 1, t: 'RegisterFinish', suite: SUITE, ticket: b(40), record: b(129), kUpload: b(93), limit: 1.5 },
      { v: 1, t: 'RecoverStart', ke1: 'not bytes' },
      { v: 1, t: 'toString' },
    ];
    for (const m of bad) expect(() => decodeDeviceMessage(p.pack(m))).toThrow(InputError);
    // a non-canonical encoding of a valid message (map32 header) is refused too
    const good = encodeDeviceMessage({ t: 'Status' });
    const odd = Buffer.concat([Buffer.of(0xdf, 0, 0, 0, 2), Buffer.from(good.subarray(3))]);
    expect(() => decodeDeviceMessage(odd)).toThrow(InputError);
  });
});
