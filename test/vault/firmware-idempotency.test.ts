// A device request delivered twice (a retrying ChatD, a duplicating network) is one request: the copy
// is not charged or proposed again, and it gets the original's reply bytes, whether it arrives while
// the original's entry waits for its commit or after. A request that differs in any byte is new.
// Two layers do this: the session gate answers a byte-identical Hello or Next with its one Welcome or
// Final (a device link that duplicates frames); the firmware remembers its replies to inner requests
// (stepped plain into it here), which is what still holds when a copy reaches it in a new session.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { enablePassword, recoverK, status, type Send } from '../../client/password.ts';
import type { Token } from '../../hsm-adapter/token.ts';
import { createOpaque, identityKsf, tokenServerSecrets, type Opaque } from '../../protocol/opaque/index.ts';
import { fastX25519 } from '../../protocol/opaque/group.ts';
import { tokenSessionKey } from '../../protocol/opaque/secrets.ts';
import { registrationConfirm } from '../../protocol/kbox.ts';
import { decodeSessionFrame, fleetIdentity } from '../../protocol/session.ts';
import { FINISH_REPLY_SIZE, decodeVaultReply, encodeDeviceMessage, pinOf, type DeviceMessage, type WireSuite } from '../../protocol/wire.ts';
import { Firmware, type Policy } from '../../vault/firmware/firmware.ts';
import { decodeEntry } from '../../vault/firmware/entries.ts';
import { provisionTestFleet, type TestFleet } from '../helpers/fleet.ts';
import { Harness, seededRng } from './firmware-harness.ts';

const SUITE: WireSuite = 'ristretto255-SHA512';
const SESSION_TTL = 120_000;
let fleet: TestFleet;
let token: Token;
let opaque: Partial<Record<WireSuite, Opaque>>;
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

const firmware = (seed: string, policy: Partial<Policy> = {}) =>
  new Firmware({ replicaId: 'r0', token, opaque, rng: seededRng(seed), policy: { minLimit: 3, defaultLimit: 5, sessionTtlMs: SESSION_TTL, ...policy } });
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
const enc = (m: DeviceMessage) => encodeDeviceMessage(m);
const hexOf = (b: Uint8Array | undefined) => (b ? Buffer.from(b).toString('hex') : 'none');

/** Entry types proposed by the harness so far (committed or not). */
function proposedTypes(h: Harness, from: number): string[] {
  return h.inputs.slice(from).flatMap((i) => (i.kind === 'committed' ? [decodeEntry(i.entry).t] : []));
}

/** Sends one request with commits held back; returns its id and what the step put out at once. */
function hold(h: Harness, user: string, body: Uint8Array): { rid: number; kinds: string[] } {
  h.autoCommit = false;
  const rid = h.nextRequest++;
  const out = h.step({ kind: 'request', requestId: rid, user, body });
  return { rid, kinds: out.map((o) => o.kind) };
}

function commit(h: Harness): number {
  const n = h.proposed.length;
  h.commitAll();
  h.autoCommit = true;
  return n;
}

/**
 * A device link that delivers every session frame twice: the copy lands before the original's entry
 * commits ('before') or after its reply left ('after'). Both replies must be byte-identical (the gate
 * answers a copied Hello or Next with the one Welcome or Final of that session, RegisterStart's too).
 */
function duplicating(h: Harness, user: string, when: 'before' | 'after', log: { proposals: number; copies: number }): Send {
  return async (body) => {
    const a = hold(h, user, body);
    let b: { rid: number; kinds: string[] } | null = null;
    if (when === 'before') b = hold(h, user, body);
    log.proposals += commit(h);
    if (when === 'after') {
      b = hold(h, user, body);
      log.proposals += h.proposed.length; // a copy after the answer must propose nothing
      commit(h);
    }
    const ra = h.replies.get(a.rid);
    const rb = h.replies.get(b!.rid);
    expect(ra, 'original answered').toBeDefined();
    expect(decodeSessionFrame(ra!).kind).not.toBe('refused');
    expect(hexOf(rb)).toBe(hexOf(ra));
    log.copies++;
    return ra!;
  };
}

describe('RecoverStart: an identical KE1 is one attempt', () => {
  it('a copy before the commit waits for it and gets the same KE2; a copy after gets it at once; neither is charged', async () => {
    const h = new Harness(firmware('ke1'));
    h.step({ kind: 'tick', now: 1_000 });
    await enablePassword(h.send('ann'), client('ann', 'c-ann'), 'right', new Uint8Array(32).fill(1), 3);
    const start = device.clientStartLogin(new TextEncoder().encode('wrong'));
    const body = enc({ t: 'RecoverStart', ke1: start.ke1 });
    const mark = h.inputs.length;

    const a = hold(h, 'ann', body);
    expect(a.kinds).toEqual(['propose']);
    const b = hold(h, 'ann', body); // duplicate before the commit: joins, proposes nothing, says nothing yet
    expect(b.kinds).toEqual([]);
    expect(h.proposed.length).toBe(1);
    expect(h.replies.has(a.rid) || h.replies.has(b.rid)).toBe(false);
    expect(commit(h)).toBe(1);
    const ke2 = h.replies.get(a.rid)!;
    expect(decodeVaultReply(ke2).t).toBe('KE2');
    expect(hexOf(h.replies.get(b.rid))).toBe(hexOf(ke2)); // both answered on the one commit, same bytes
    expect(h.fw.inspect('ann')?.used).toBe(1);

    h.step({ kind: 'tick', now: 60_000 });
    const c = hold(h, 'ann', body); // duplicate after: the same KE2 at once, no entry
    expect(c.kinds).toEqual(['reply']);
    expect(h.proposed.length).toBe(0);
    commit(h);
    expect(hexOf(h.replies.get(c.rid))).toBe(hexOf(ke2));
    expect(proposedTypes(h, mark)).toEqual(['Attempt']);
    expect(h.fw.inspect('ann')?.used).toBe(1);

    // The replayed KE2 is a working session: the device's KE3 gets its outcome.
    const k2 = decodeVaultReply(ke2) as { session: Uint8Array; ke2: Uint8Array };
    let ke3: Uint8Array;
    try {
      ke3 = device.clientFinishLogin(start.state, k2.ke2, ids('ann')).ke3;
    } catch {
      ke3 = seededRng('fake-ke3')(device.sizes.ke3);
    }
    expect(decodeVaultReply(await h.send('ann')(enc({ t: 'RecoverFinish', session: k2.session, ke3 })))).toEqual({ t: 'WrongPassword', attemptsLeft: 2 });
  });

  it('a genuinely new KE1 (other bytes, even for the same password) is charged; so is the same KE1 for another user', async () => {
    const h = new Harness(firmware('ke1-new'));
    for (const u of ['bob', 'bea']) await enablePassword(h.send(u), client(u, `c-${u}`), 'right', new Uint8Array(32).fill(2), 5);
    const first = enc({ t: 'RecoverStart', ke1: device.clientStartLogin(new TextEncoder().encode('guess')).ke1 });
    const second = enc({ t: 'RecoverStart', ke1: device.clientStartLogin(new TextEncoder().encode('guess')).ke1 });
    expect(hexOf(first)).not.toBe(hexOf(second)); // fresh blinding
    const r1 = decodeVaultReply(await h.send('bob')(first)) as { session: Uint8Array };
    const r2 = decodeVaultReply(await h.send('bob')(second)) as { session: Uint8Array };
    expect(hexOf(r1.session)).not.toBe(hexOf(r2.session));
    expect(h.fw.inspect('bob')?.used).toBe(2);
    // the same bytes relayed for another account are that account's request, charged to it
    const r3 = decodeVaultReply(await h.send('bea')(first)) as { session: Uint8Array };
    expect(hexOf(r3.session)).not.toBe(hexOf(r1.session));
    expect(h.fw.inspect('bea')?.used).toBe(1);
    expect(h.fw.inspect('bob')?.used).toBe(2);
  });

  it('the memory lasts a session lifetime, and a crash forgets it: a later copy is charged (never free)', async () => {
    const h = new Harness(firmware('ke1-expiry'));
    h.step({ kind: 'tick', now: 1_000 });
    await enablePassword(h.send('cal'), client('cal', 'c-cal'), 'right', new Uint8Array(32).fill(3), 5);
    const body = enc({ t: 'RecoverStart', ke1: device.clientStartLogin(new TextEncoder().encode('g')).ke1 });
    const ke2 = await h.send('cal')(body);
    h.step({ kind: 'tick', now: 1_000 + SESSION_TTL });
    expect(hexOf(await h.send('cal')(body))).toBe(hexOf(ke2)); // still within the lifetime
    expect(h.fw.inspect('cal')?.used).toBe(1);
    h.step({ kind: 'tick', now: 1_000 + SESSION_TTL + 1 });
    const late = await h.send('cal')(body);
    expect(hexOf(late)).not.toBe(hexOf(ke2));
    expect(h.fw.inspect('cal')?.used).toBe(2);

    // restart: a new firmware replays the log; the copy is a new request
    const h2 = new Harness(firmware('ke1-expiry-2'));
    for (const i of h.inputs) if (i.kind === 'committed') h2.step(i);
    h2.index = h.index;
    h2.step({ kind: 'tick', now: 1_000 + SESSION_TTL + 2 });
    expect(hexOf(await h2.send('cal')(body))).not.toBe(hexOf(late));
    expect(h2.fw.inspect('cal')?.used).toBe(3);
  });

  it('a copy of a KE1 whose proposal is lost gets the same error; the next copy is a new request', async () => {
    const h = new Harness(firmware('ke1-lost'));
    await enablePassword(h.send('dot'), client('dot', 'c-dot'), 'right', new Uint8Array(32).fill(4), 5);
    const body = enc({ t: 'RecoverStart', ke1: device.clientStartLogin(new TextEncoder().encode('g')).ke1 });
    const a = hold(h, 'dot', body);
    const b = hold(h, 'dot', body);
    const [p] = h.proposed.splice(0);
    h.step({ kind: 'proposalFailed', tag: p!.tag, code: 'NOT_LEADER' });
    for (const rid of [a.rid, b.rid]) expect(decodeVaultReply(h.replies.get(rid)!)).toEqual({ t: 'Error', code: 'NOT_LEADER' });
    expect(h.fw.inspect('dot')?.used).toBe(0);
    const c = hold(h, 'dot', body);
    expect(c.kinds).toEqual(['propose']);
    commit(h);
    expect(decodeVaultReply(h.replies.get(c.rid)!).t).toBe('KE2');
    expect(h.fw.inspect('dot')?.used).toBe(1);
  });

  it('a copied Hello the gate no longer holds (evicted) reaches the firmware again: its memory answers the same KE2, uncharged', async () => {
    const h = new Harness(firmware('ke1-evicted', { maxSessions: 2 }));
    await enablePassword(h.send('ola'), client('ola', 'c-ola'), 'right', new Uint8Array(32).fill(13), 5);
    const frames: Uint8Array[] = [];
    const answers: Uint8Array[] = [];
    const base = h.send('ola');
    const tap: Send = async (b) => {
      frames.push(b);
      const r = await base(b);
      answers.push(r);
      return r;
    };
    await expect(recoverK(tap, client('ola', 'g-ola'), 'wrong')).rejects.toMatchObject({ code: 'WRONG_PASSWORD' });
    expect(h.fw.inspect('ola')?.used).toBe(1);
    // while the gate holds the session, a copy is its one Welcome
    expect(hexOf(await base(frames[0]!))).toBe(hexOf(answers[0]));
    // two other sessions push it out (the gate keeps maxSessions)
    for (const u of ['oli', 'oma']) await status(h.send(u), client(u, `c-${u}`));
    expect(h.gate.sessionCount).toBe(2);
    const mark = h.inputs.length;
    const again = await base(frames[0]!);
    expect(decodeSessionFrame(again).kind).toBe('welcome');
    expect(hexOf(again)).not.toBe(hexOf(answers[0])); // a new session (new vault ephemeral)...
    expect(proposedTypes(h, mark)).toEqual([]); // ...answered from the firmware's memory: no Attempt
    expect(h.fw.inspect('ola')?.used).toBe(1);
    // and the recorded Next does not open under the new session's keys: no second outcome
    expect(decodeSessionFrame(await base(frames[1]!))).toEqual({ kind: 'refused', code: 'SESSION_REJECTED' });
    expect(proposedTypes(h, mark)).toEqual([]);
  });

  it('memory is bounded per user: past the cap the oldest is forgotten and its copy is charged', async () => {
    const h = new Harness(firmware('ke1-cap', { repliesPerUser: 2, defaultLimit: 10 }));
    await enablePassword(h.send('eva'), client('eva', 'c-eva'), 'right', new Uint8Array(32).fill(5));
    const bodies = [0, 1, 2].map((i) => enc({ t: 'RecoverStart', ke1: device.clientStartLogin(new TextEncoder().encode(`g${i}`)).ke1 }));
    const ke2s: Uint8Array[] = [];
    for (const b of bodies) ke2s.push(await h.send('eva')(b));
    expect(h.fw.inspect('eva')?.used).toBe(3);
    expect(hexOf(await h.send('eva')(bodies[2]!))).toBe(hexOf(ke2s[2])); // remembered
    expect(hexOf(await h.send('eva')(bodies[1]!))).toBe(hexOf(ke2s[1])); // remembered
    expect(h.fw.inspect('eva')?.used).toBe(3);
    expect(hexOf(await h.send('eva')(bodies[0]!))).not.toBe(hexOf(ke2s[0])); // forgotten: charged again
    expect(h.fw.inspect('eva')?.used).toBe(4);
  });

  it('end to end over a link that duplicates every request: limit 3, three wrong guesses use exactly three attempts', async () => {
    for (const when of ['before', 'after'] as const) {
      const h = new Harness(firmware(`dup-${when}`));
      const log = { proposals: 0, copies: 0 };
      const send = duplicating(h, 'fay', when, log);
      await enablePassword(send, client('fay', `c-fay-${when}`), 'right', new Uint8Array(32).fill(6), 3);
      const outcomes: string[] = [];
      for (let i = 0; i < 3; i++) {
        outcomes.push(await recoverK(send, client('fay', `g-${when}-${i}`), `wrong ${i}`).then(() => 'released', (e: { code: string }) => e.code));
      }
      expect(outcomes, when).toEqual(['WRONG_PASSWORD', 'WRONG_PASSWORD', 'LOCKED']);
      expect(log.proposals, when).toBe(1 + 3 + 3); // Register, then an Attempt and an Outcome per guess
      expect(log.copies, when).toBe(2 + 3 * 2); // every frame: RegisterStart and RegisterFinish, then KE1 and KE3 per guess
      expect(h.fw.inspect('fay'), when).toMatchObject({ state: 'locked', used: 3 });
    }
  });
});

describe('RecoverFinish: a copy of a decided KE3 gets the same outcome', () => {
  async function ke2For(h: Harness, user: string, password: string) {
    const start = device.clientStartLogin(new TextEncoder().encode(password));
    const r = decodeVaultReply(await h.send(user)(enc({ t: 'RecoverStart', ke1: start.ke1 }))) as { t: string; session: Uint8Array; ke2: Uint8Array };
    let ke3: Uint8Array;
    try {
      ke3 = device.clientFinishLogin(start.state, r.ke2, ids(user)).ke3;
    } catch {
      ke3 = seededRng(`${user}-${password}`)(device.sizes.ke3);
    }
    return { session: r.session, ke3 };
  }

  it('wrong password: a copy before the commit and one after both get the one commit\'s reply; one Outcome', async () => {
    const h = new Harness(firmware('ke3-wrong'));
    h.step({ kind: 'tick', now: 1_000 });
    await enablePassword(h.send('gus'), client('gus', 'c-gus'), 'right', new Uint8Array(32).fill(7), 4);
    const s = await ke2For(h, 'gus', 'wrong');
    const body = enc({ t: 'RecoverFinish', session: s.session, ke3: s.ke3 });
    const mark = h.inputs.length;
    const a = hold(h, 'gus', body);
    const b = hold(h, 'gus', body);
    expect([a.kinds, b.kinds]).toEqual([['propose'], []]);
    expect(h.replies.has(a.rid) || h.replies.has(b.rid)).toBe(false); // no NO_SESSION ahead of the real answer
    expect(commit(h)).toBe(1);
    const want = h.replies.get(a.rid)!;
    expect(decodeVaultReply(want)).toEqual({ t: 'WrongPassword', attemptsLeft: 3 });
    expect(want.length).toBe(FINISH_REPLY_SIZE);
    expect(hexOf(h.replies.get(b.rid))).toBe(hexOf(want));
    h.step({ kind: 'tick', now: 100_000 });
    const c = hold(h, 'gus', body);
    expect(c.kinds).toEqual(['reply']);
    commit(h);
    expect(hexOf(h.replies.get(c.rid))).toBe(hexOf(want));
    expect(proposedTypes(h, mark)).toEqual(['Outcome']);
    expect(h.fw.inspect('gus')?.used).toBe(1);
    // still one KE3 per session: another KE3 is no copy
    const other = enc({ t: 'RecoverFinish', session: s.session, ke3: seededRng('other')(s.ke3.length) });
    expect(decodeVaultReply(await h.send('gus')(other))).toEqual({ t: 'Error', code: 'NO_SESSION' });
    // and the reply is remembered a session lifetime from when it was decided, no longer
    h.step({ kind: 'tick', now: 1_000 + SESSION_TTL + 1 });
    expect(decodeVaultReply(await h.send('gus')(body))).toEqual({ t: 'Error', code: 'NO_SESSION' });
  });

  it('right password: the copy gets the same Released bytes (one release, one reset); the same body from another user does not', async () => {
    const h = new Harness(firmware('ke3-right'));
    const k = new Uint8Array(32).fill(8);
    await enablePassword(h.send('hal'), client('hal', 'c-hal'), 'right', k, 4);
    await ke2For(h, 'hal', 'x'); // a stray attempt, reset by the success below
    const s = await ke2For(h, 'hal', 'right');
    const body = enc({ t: 'RecoverFinish', session: s.session, ke3: s.ke3 });
    const a = hold(h, 'hal', body);
    commit(h);
    const released = h.replies.get(a.rid)!;
    expect(decodeVaultReply(released).t).toBe('Released');
    expect(h.fw.inspect('hal')?.used).toBe(0);
    const b = hold(h, 'hal', body);
    expect([b.kinds, h.proposed.length]).toEqual([['reply'], 0]);
    commit(h);
    expect(hexOf(h.replies.get(b.rid))).toBe(hexOf(released));
    expect(decodeVaultReply(await h.send('ian')(body))).toEqual({ t: 'Error', code: 'NO_SESSION' });
    // and the device's own recovery works end to end over a duplicating link
    const log = { proposals: 0, copies: 0 };
    const got = await recoverK(duplicating(h, 'hal', 'before', log), client('hal', 'c-hal-2'), 'right');
    expect(Buffer.from(got).equals(Buffer.from(k))).toBe(true);
    expect(log.proposals).toBe(2);
  });

  it('a KE3 whose Outcome times out tells both copies TIMEOUT; a later copy is refused, never proposed again', async () => {
    const h = new Harness(firmware('ke3-timeout', { requestTtlMs: 1_000 }));
    h.step({ kind: 'tick', now: 1_000 });
    await enablePassword(h.send('jo'), client('jo', 'c-jo'), 'right', new Uint8Array(32).fill(9), 4);
    const s = await ke2For(h, 'jo', 'wrong');
    const body = enc({ t: 'RecoverFinish', session: s.session, ke3: s.ke3 });
    const a = hold(h, 'jo', body);
    const b = hold(h, 'jo', body);
    h.step({ kind: 'tick', now: 2_001 });
    for (const rid of [a.rid, b.rid]) expect(decodeVaultReply(h.replies.get(rid)!)).toEqual({ t: 'Error', code: 'TIMEOUT' });
    const c = hold(h, 'jo', body);
    expect(c.kinds).toEqual(['reply']);
    expect(decodeVaultReply(h.replies.get(c.rid)!)).toEqual({ t: 'Error', code: 'NO_SESSION' });
    expect(h.proposed.length).toBe(1); // only the original's Outcome, still in flight
    commit(h);
    expect(h.fw.inspect('jo')?.used).toBe(1);
  });
});

describe('RegisterFinish: a copy is the same registration', () => {
  const LIMIT = 4;
  const confirms = new Map<string, Uint8Array>();
  /**
   * Runs RegisterStart (inner protocol, plain into the firmware) and builds the RegisterFinish the
   * device would send inside its session, without sending it. Remembers the confirmation it expects.
   */
  async function finishBody(h: Harness, user: string, seed: string, password: string): Promise<Uint8Array> {
    const rng = seededRng(seed);
    const akeKey = tokenServerSecrets(token, SUITE).akeKeyPair.publicKey;
    const start = device.clientStartRegistration(new TextEncoder().encode(password), { rng });
    const r1 = decodeVaultReply(await h.send(user)(enc({ t: 'RegisterStart', suite: SUITE, request: start.request, pin: pinOf(akeKey) })));
    if (r1.t !== 'RegisterResponse') throw new Error(`expected RegisterResponse, got ${r1.t}`);
    const { record } = device.clientFinishRegistration(start.state, r1.response, { rng, expectedServerPublicKey: akeKey, ...ids(user) });
    const body = enc({ t: 'RegisterFinish', suite: SUITE, ticket: r1.ticket, record, k: new Uint8Array(32).fill(10), ksf: identityKsf.name, limit: LIMIT });
    confirms.set(hexOf(body), registrationConfirm({ user, suite: SUITE, limit: LIMIT, ticket: r1.ticket, record, ksf: identityKsf.name }));
    return body;
  }

  it('a copy before the commit joins it; a copy after gets the same Registered; one Register entry', async () => {
    const h = new Harness(firmware('reg'));
    h.step({ kind: 'tick', now: 5_000 });
    const body = await finishBody(h, 'kim', 'c-kim', 'pw');
    const mark = h.inputs.length;
    const a = hold(h, 'kim', body);
    const b = hold(h, 'kim', body);
    expect([a.kinds, b.kinds, h.proposed.length]).toEqual([['propose'], [], 1]);
    commit(h);
    const registered = h.replies.get(a.rid)!;
    expect(decodeVaultReply(registered)).toEqual({ t: 'Registered', limit: LIMIT, confirm: confirms.get(hexOf(body)) });
    expect(hexOf(h.replies.get(b.rid))).toBe(hexOf(registered));
    h.step({ kind: 'tick', now: 60_000 });
    const c = hold(h, 'kim', body);
    expect(c.kinds).toEqual(['reply']);
    commit(h);
    expect(hexOf(h.replies.get(c.rid))).toBe(hexOf(registered)); // not STALE_REGISTRATION
    expect(proposedTypes(h, mark)).toEqual(['Register']);
    expect(await status(h.send('kim'), client('kim', 'c-kim-s'))).toEqual({ state: 'registered', attemptsLeft: 4, limit: 4 });
    // the copy did not disturb the record: the password works
    await recoverK(h.send('kim'), client('kim', 'c-kim-r'), 'pw');
  });

  it('a different RegisterFinish is no copy; a copy of a superseded registration is stale, not Registered', async () => {
    const h = new Harness(firmware('reg-other'));
    h.step({ kind: 'tick', now: 5_000 });
    const first = await finishBody(h, 'lou', 'c-lou-1', 'one');
    expect(decodeVaultReply(await h.send('lou')(first)).t).toBe('Registered');
    h.step({ kind: 'tick', now: 6_000 });
    const second = await finishBody(h, 'lou', 'c-lou-2', 'two');
    const mark = h.inputs.length;
    expect(decodeVaultReply(await h.send('lou')(second)).t).toBe('Registered');
    expect(proposedTypes(h, mark)).toEqual(['ChangePassword']);
    // a copy of the first, within its memory but no longer live: the ordinary rules answer (stale,
    // nothing proposed), never a Registered for a record that is not there
    expect(decodeVaultReply(await h.send('lou')(first))).toEqual({ t: 'Error', code: 'STALE_REGISTRATION' });
    expect(proposedTypes(h, mark)).toEqual(['ChangePassword']);
    // while the second is live, its copy is Registered; after a Disable it is refused
    expect(decodeVaultReply(await h.send('lou')(second)).t).toBe('Registered');
    await recoverK(h.send('lou'), client('lou', 'c-lou-r'), 'two');
    await h.send('lou')(enc({ t: 'Disable' }));
    expect(decodeVaultReply(await h.send('lou')(second))).toEqual({ t: 'Error', code: 'STALE_REGISTRATION' });
    expect(proposedTypes(h, mark).filter((t) => t !== 'Attempt' && t !== 'Outcome')).toEqual(['ChangePassword', 'Delete']);
    expect(await status(h.send('lou'), client('lou', 'c-lou-s'))).toMatchObject({ state: 'none' });
  });

  it('a copy of a KE3 that released K is not answered with K once the record locked or went away', async () => {
    const h = new Harness(firmware('ke3-gone'));
    await enablePassword(h.send('meg'), client('meg', 'c-meg'), 'right', new Uint8Array(32).fill(12), 3);
    const start = device.clientStartLogin(new TextEncoder().encode('right'));
    const k2 = decodeVaultReply(await h.send('meg')(enc({ t: 'RecoverStart', ke1: start.ke1 }))) as { session: Uint8Array; ke2: Uint8Array };
    const body = enc({ t: 'RecoverFinish', session: k2.session, ke3: device.clientFinishLogin(start.state, k2.ke2, ids('meg')).ke3 });
    const released = await h.send('meg')(body);
    expect(decodeVaultReply(released).t).toBe('Released');
    expect(hexOf(await h.send('meg')(body))).toBe(hexOf(released));
    await h.send('meg')(enc({ t: 'Disable' }));
    expect(decodeVaultReply(await h.send('meg')(body))).toEqual({ t: 'Error', code: 'NO_SESSION' });
  });
});

describe('determinism', () => {
  it('the same inputs, copies included, give byte-identical outputs', async () => {
    const run = async () => {
      const h = new Harness(firmware('det'));
      const log = { proposals: 0, copies: 0 };
      const send = duplicating(h, 'max', 'before', log);
      await enablePassword(send, client('max', 'd1'), 'pw', new Uint8Array(32).fill(11), 3);
      await recoverK(send, client('max', 'd2'), 'nope').catch(() => undefined);
      await recoverK(send, client('max', 'd3'), 'pw');
      return h;
    };
    const a = await run();
    const b = await run();
    expect(b.transcript.map(hexOf)).toEqual(a.transcript.map(hexOf));
    expect(b.fw.digest()).toBe(a.fw.digest());
  });
});
