// One replica end to end: real SoftHSM2 token, real LMDB, real OPAQUE (cheap KSF), through the
// device helpers of client/password.ts.
import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { changePassword, disable, enablePassword, PasswordError, recoverK, status, type Send } from '../../client/password.ts';
import { createOpaque, identityKsf } from '../../protocol/opaque/index.ts';
import { fastX25519 } from '../../protocol/opaque/group.ts';
import { FRAME_BYTES, SESSION_VERSION, SessionKind, decodeSessionFrame, fleetIdentity } from '../../protocol/session.ts';
import { FINISH_REPLY_SIZE, encodeDeviceMessage, pinOf, type VaultReply } from '../../protocol/wire.ts';
import { decodeEntry } from '../../vault/firmware/entries.ts';
import { SealedStorage } from '../../vault/firmware/storage.ts';
import { VaultState } from '../../vault/firmware/state.ts';
import { LogStore } from '../../vault/agent/store.ts';
import type { Replica } from '../../vault/agent/replica.ts';
import type { SoloLog } from '../../vault/agent/log.ts';
import { handSession, innerOf, sessionTap, vaultFixture, type SessionTap, type VaultFixture } from './agent-fixture.ts';

let fx: VaultFixture;
beforeAll(async () => {
  fx = await vaultFixture();
});
afterAll(async () => {
  await fx?.cleanup();
});

const K = () => new Uint8Array(randomBytes(32));

/**
 * Records every reply that leaves the vault for `user` (the outer session frames, what a relay sees)
 * and, through a session tap, what each carried inside. Pass `opts(user)` as the device's options:
 * the tap must be the device's rng to open its sessions.
 */
function recording(r: Replica, user: string): { send: Send; tap: SessionTap; opts: ReturnType<VaultFixture['client']>; decoded: () => VaultReply[] } {
  const tap = sessionTap(fx.vaultSessionKey);
  return { tap, send: tap.wrap(fx.sendVia(r, user), user), opts: { ...fx.client(user), rng: tap.rng }, decoded: () => tap.replies() };
}

/** Opens everything the replica stored, with its token, as the firmware would at start. */
async function storedView(): Promise<{ entries: ReturnType<typeof decodeEntry>[]; snapshot?: VaultState; plaintexts: Uint8Array[] }> {
  const store = LogStore.open(fx.dbDir);
  try {
    const v = new SealedStorage(fx.token, fx.replicaId).verify(store.readAll());
    const plaintexts = v.entries.map((e) => e.entry);
    if (v.snapshot) plaintexts.push(v.snapshot.state);
    return { entries: v.entries.map((e) => decodeEntry(e.entry)), snapshot: v.snapshot && VaultState.decode(v.snapshot.state), plaintexts };
  } finally {
    await store.close();
  }
}

function contains(hay: Uint8Array, needle: Uint8Array): boolean {
  return Buffer.from(hay).indexOf(Buffer.from(needle)) >= 0;
}

describe('one replica: register and recover', () => {
  it('releases the same K for the right password, counts wrong ones, and disables', async () => {
    const r = await fx.open();
    const user = 'alice';
    const k = K();
    await enablePassword(fx.sendVia(r, user), fx.client(user), 'correct horse', k);
    expect(await status(fx.sendVia(r, user), fx.client(user))).toEqual({ state: 'registered', attemptsLeft: 10, limit: 10 });
    const got = await recoverK(fx.sendVia(r, user), fx.client(user), 'correct horse');
    expect(Buffer.from(got).equals(Buffer.from(k))).toBe(true);
    // the correct password reset the counter it had charged
    expect(await status(fx.sendVia(r, user), fx.client(user))).toEqual({ state: 'registered', attemptsLeft: 10, limit: 10 });
    const err = await recoverK(fx.sendVia(r, user), fx.client(user), 'wrong').catch((e) => e);
    expect(err).toBeInstanceOf(PasswordError);
    expect(err.code).toBe('WRONG_PASSWORD');
    expect(err.attemptsLeft).toBe(9);
    await disable(fx.sendVia(r, user), fx.client(user));
    expect((await status(fx.sendVia(r, user), fx.client(user))).state).toBe('none');
    await r.close();
  });

  it('change password: the old one stops working, K (re-uploaded) still comes back', async () => {
    const r = await fx.open();
    const user = 'carol';
    const k = K();
    await enablePassword(fx.sendVia(r, user), fx.client(user), 'old pass', k);
    await changePassword(fx.sendVia(r, user), fx.client(user), 'new pass', k);
    await expect(recoverK(fx.sendVia(r, user), fx.client(user), 'old pass')).rejects.toMatchObject({ code: 'WRONG_PASSWORD' });
    const got = await recoverK(fx.sendVia(r, user), fx.client(user), 'new pass');
    expect(Buffer.from(got).equals(Buffer.from(k))).toBe(true);
    await r.close();
  });

  it('a device refuses a vault key other than the pinned one', async () => {
    const r = await fx.open();
    const other = (await createOpaque({ suite: 'ristretto255-SHA512' })).deriveAkeKeyPair(new Uint8Array(32).fill(7)).publicKey;
    await expect(enablePassword(fx.sendVia(r, 'mallory'), { ...fx.client('mallory'), serverPublicKey: other }, 'pw', K())).rejects.toMatchObject({
      code: 'VAULT_KEY_MISMATCH',
    });
    expect((await status(fx.sendVia(r, 'mallory'), fx.client('mallory'))).state).toBe('none');
    await r.close();
  });

  it('a device pinning another session key is refused before anything is computed, and trusts no reply', async () => {
    const r = await fx.open();
    const digest = r.firmware.digest();
    const wrongKey = fastX25519().publicKey(new Uint8Array(32).fill(9));
    const o = { ...fx.client('mallory'), sessionKey: wrongKey };
    await expect(enablePassword(fx.sendVia(r, 'mallory'), o, 'pw', K())).rejects.toMatchObject({ code: 'SESSION_REFUSED' });
    await expect(recoverK(fx.sendVia(r, 'mallory'), o, 'pw')).rejects.toMatchObject({ code: 'SESSION_REFUSED' });
    await expect(status(fx.sendVia(r, 'mallory'), o)).rejects.toMatchObject({ code: 'SESSION_REFUSED' });
    // A reply altered on the way (one bit of a Welcome) does not open: the device accepts nothing.
    const flip: Send = async (b) => {
      const reply = await r.handle('mallory', b);
      const c = reply.slice();
      c[c.length - 1]! ^= 1;
      return c;
    };
    await expect(status(flip, fx.client('mallory'))).rejects.toMatchObject({ code: 'BAD_VAULT_REPLY' });
    expect(r.firmware.digest()).toBe(digest);
    await r.close();
  });

  it('locks after exactly the limit of wrong passwords, then forever; K is erased from state and disk', async () => {
    const r = await fx.open();
    const user = 'bob';
    const k = K();
    await enablePassword(fx.sendVia(r, user), fx.client(user), 'right', k, 3);
    await r.close();
    const before = await storedView();
    const reg = before.entries.find((e) => e.user === user && e.t === 'Register');
    expect(reg).toBeDefined();
    const kSealed = (reg as { kSealed: Uint8Array }).kSealed;

    const r2 = await fx.open();
    const rec = recording(r2, user);
    const outcomes: string[] = [];
    for (let i = 0; i < 5; i++) {
      const e = (await recoverK(rec.send, rec.opts, `wrong ${i}`).catch((x: PasswordError) => x)) as PasswordError;
      outcomes.push(`${e.code}${e.attemptsLeft === undefined ? '' : `:${e.attemptsLeft}`}`);
    }
    expect(outcomes).toEqual(['WRONG_PASSWORD:2', 'WRONG_PASSWORD:1', 'LOCKED', 'LOCKED', 'LOCKED']);
    expect(rec.decoded().filter((m) => m.t === 'KE2')).toHaveLength(3);
    // Every reply opened (the tap saw each one's inside): five Welcomes, three Finals.
    expect(rec.tap.seen.filter((t) => t.reply).map((t) => t.kind)).toEqual(['welcome', 'final', 'welcome', 'final', 'welcome', 'final', 'welcome', 'welcome']);
    await expect(recoverK(fx.sendVia(r2, user), fx.client(user), 'right')).rejects.toMatchObject({ code: 'LOCKED' });
    expect(await status(fx.sendVia(r2, user), fx.client(user))).toEqual({ state: 'locked', attemptsLeft: 0, limit: 3 });
    expect(r2.firmware.inspect(user)).toMatchObject({ state: 'locked', hasK: false });
    await r2.close();

    const after = await storedView();
    expect(after.entries.some((e) => e.user === user && (e.t === 'Register' || e.t === 'ChangePassword'))).toBe(false);
    expect(after.snapshot?.get(user)).toMatchObject({ locked: true, kSealed: null });
    for (const p of after.plaintexts) {
      expect(contains(p, kSealed)).toBe(false);
      expect(contains(p, k)).toBe(false);
    }
    // and it stays locked across a restart
    const r3 = await fx.open();
    await expect(recoverK(fx.sendVia(r3, user), fx.client(user), 'right')).rejects.toMatchObject({ code: 'LOCKED' });
    await r3.close();
  });

  it('many devices guessing one user at once never get more KE2s than the limit', async () => {
    const r = await fx.open();
    const user = 'dave';
    await enablePassword(fx.sendVia(r, user), fx.client(user), 'right', K(), 10);
    const rec = recording(r, user);
    const results = await Promise.all(
      Array.from({ length: 30 }, (_, i) => recoverK(rec.send, rec.opts, `guess ${i}`).then(() => 'K', (e: PasswordError) => e.code)),
    );
    expect(results).not.toContain('K');
    // Every one of the 30 first replies opened: none is hidden from the count.
    expect(rec.tap.seen.filter((t) => t.kind === 'welcome' && t.reply)).toHaveLength(30);
    const ke2 = rec.decoded().filter((m) => m.t === 'KE2').length;
    expect(ke2).toBe(10);
    expect((await status(fx.sendVia(r, user), fx.client(user))).state).toBe('locked');
    // concurrent proposals share a flush and an anchor write
    const stats = (r.log as SoloLog).stats;
    expect(stats.batches).toBeLessThan(stats.entries);
    await r.close();
  });

  it('a restart between attempts does not reset the counter', async () => {
    const user = 'erin';
    let r = await fx.open();
    await enablePassword(fx.sendVia(r, user), fx.client(user), 'right', K(), 5);
    await expect(recoverK(fx.sendVia(r, user), fx.client(user), 'w1')).rejects.toMatchObject({ attemptsLeft: 4 });
    await r.close();
    r = await fx.open();
    expect(await status(fx.sendVia(r, user), fx.client(user))).toMatchObject({ attemptsLeft: 4 });
    await expect(recoverK(fx.sendVia(r, user), fx.client(user), 'w2')).rejects.toMatchObject({ attemptsLeft: 3 });
    await r.close();
    r = await fx.open();
    await expect(recoverK(fx.sendVia(r, user), fx.client(user), 'w3')).rejects.toMatchObject({ attemptsLeft: 2 });
    await r.close();
  });

  it('replies that would tell the outcome have fixed sizes', async () => {
    const r = await fx.open();
    const user = 'frank';
    await enablePassword(fx.sendVia(r, user), fx.client(user), 'right', K(), 3);
    // Outside (what ChatD sees): every Welcome one size, every Final one size, whatever the outcome.
    const frameSizes: Record<string, Set<number>> = { welcome: new Set(), final: new Set() };
    // Inside (what the device opens): the three outcomes padded alike, KE2 alike for known and unknown users.
    const finishSizes: Record<string, number> = {};
    const ke2Sizes: Record<string, number> = {};
    const probe = async (who: string, pw: string) => {
      const rec = recording(r, who);
      await recoverK(rec.send, rec.opts, pw).catch(() => undefined);
      for (const t of rec.tap.seen) frameSizes[t.kind]!.add(t.frame.length);
      const [first, last] = [rec.tap.seen[0]!, rec.tap.seen[rec.tap.seen.length - 1]!];
      expect(first.kind).toBe('welcome');
      if (first.reply?.t === 'KE2') ke2Sizes[who === user ? 'known' : 'unknown'] = first.inner!.length;
      expect(last.kind).toBe('final');
      finishSizes[last.reply!.t] = last.inner!.length;
    };
    await probe(user, 'right'); // Released
    await probe('nobody-here', 'x'); // unknown user: KE2 from a fake record, then WrongPassword
    await probe(user, 'wrong'); // WrongPassword
    await probe(user, 'wrong');
    await probe(user, 'wrong'); // Locked
    expect(frameSizes.welcome).toEqual(new Set([FRAME_BYTES.welcome]));
    expect(frameSizes.final).toEqual(new Set([FRAME_BYTES.final]));
    expect(Object.keys(finishSizes).sort()).toEqual(['Locked', 'Released', 'WrongPassword']);
    expect(new Set(Object.values(finishSizes))).toEqual(new Set([FINISH_REPLY_SIZE]));
    expect(ke2Sizes.known).toBeGreaterThan(0);
    expect(ke2Sizes.known).toBe(ke2Sizes.unknown);
    // A Locked first reply (no KE2) leaves in a Welcome of the same size too.
    const rec = recording(r, user);
    await expect(recoverK(rec.send, rec.opts, 'right')).rejects.toMatchObject({ code: 'LOCKED' });
    expect(rec.tap.seen.map((t) => [t.kind, t.frame.length, t.reply?.t])).toEqual([['welcome', FRAME_BYTES.welcome, 'Locked']]);
    await r.close();
  });

  it('a malformed device message gets a typed error and changes no state', async () => {
    const r = await fx.open();
    const user = 'gina';
    await enablePassword(fx.sendVia(r, user), fx.client(user), 'right', K());
    const digest = r.firmware.digest();
    const index = r.firmware.appliedIndex;
    const send = fx.sendVia(r, user);
    const hand = () => handSession(send, user, fx.sessionKey);
    const good = encodeDeviceMessage({ t: 'RecoverStart', ke1: new Uint8Array(96) });
    // Inside a session that opens: the firmware (or the gate) answers each with a typed error.
    const firsts: Uint8Array[] = [
      new Uint8Array([0xc1]),
      new Uint8Array(randomBytes(40)),
      Uint8Array.of(0x93, 1, 2, 3),
      Buffer.concat([good, Buffer.of(0)]),
      good, // all-zero KE1: not a group element
      encodeDeviceMessage({ t: 'RecoverFinish', session: new Uint8Array(16), ke3: new Uint8Array(64) }), // a second message first
      encodeDeviceMessage({
        t: 'RegisterFinish',
        suite: 'ristretto255-SHA512',
        ticket: new Uint8Array(40),
        record: new Uint8Array(64),
        k: new Uint8Array(32),
        ksf: identityKsf.name,
      }), // a second message first (and a forged ticket)
    ];
    const codes: string[] = [];
    for (const body of firsts) {
      const reply = await hand().first(body);
      expect(reply.kind).toBe('welcome');
      expect(reply.reply!.t).toBe('Error');
      codes.push((reply.reply as { code: string }).code);
    }
    expect(codes.slice(0, 4)).toEqual(Array(4).fill('BAD_DEVICE_MESSAGE'));
    expect(codes[4]).toMatch(/^[A-Z_]+$/);
    expect(codes.slice(5)).toEqual(['WRONG_STEP', 'WRONG_STEP']);

    // Second messages: only the one the first calls for, naming what this session was issued.
    const op = await createOpaque({ suite: 'ristretto255-SHA512', ksf: identityKsf });
    // A RecoverFinish naming a recovery this session did not start (its RecoverStart was refused).
    let h = hand();
    expect(innerOf(await h.first(good)).t).toBe('Error');
    expect(innerOf(await h.second({ t: 'RecoverFinish', session: new Uint8Array(16), ke3: new Uint8Array(64) }))).toEqual({ t: 'Error', code: 'NO_SESSION' });
    // A RegisterFinish with a forged ticket after a real RegisterStart (which commits nothing).
    h = hand();
    const reg = op.clientStartRegistration(new TextEncoder().encode('other'));
    const r1 = innerOf(await h.first({ t: 'RegisterStart', suite: 'ristretto255-SHA512', request: reg.request, pin: pinOf(fx.client(user).serverPublicKey) }));
    expect(r1.t).toBe('RegisterResponse');
    const forged = {
      t: 'RegisterFinish', suite: 'ristretto255-SHA512', ticket: new Uint8Array(40), record: new Uint8Array(192), k: new Uint8Array(32), ksf: identityKsf.name,
    } as const;
    expect(innerOf(await h.second(forged))).toEqual({ t: 'Error', code: 'WRONG_TICKET' });
    // A Disable only as the Next of a Status; anything else after a Status is the wrong step.
    h = hand();
    expect(innerOf(await h.first({ t: 'Status' })).t).toBe('Status');
    expect(innerOf(await h.second(forged))).toEqual({ t: 'Error', code: 'WRONG_STEP' });
    h = hand();
    expect(innerOf(await h.first(good)).t).toBe('Error');
    expect(innerOf(await h.second({ t: 'Disable' }))).toEqual({ t: 'Error', code: 'WRONG_STEP' });

    // Outside a session: whatever the bytes, an unauthenticated Refused frame (never an outcome).
    await fc.assert(
      fc.asyncProperty(fc.uint8Array({ minLength: 1, maxLength: 700 }), async (bytes) => {
        return decodeSessionFrame(await send(bytes)).kind === 'refused';
      }),
      { numRuns: 200 },
    );
    // Frames of the right kinds and sizes that do not open (random Hellos, Nexts of no session).
    await fc.assert(
      fc.asyncProperty(fc.boolean(), fc.uint8Array({ minLength: FRAME_BYTES.next, maxLength: FRAME_BYTES.next }), async (isHello, bytes) => {
        const f = bytes.slice(0, isHello ? FRAME_BYTES.hello : FRAME_BYTES.next);
        f[0] = SESSION_VERSION;
        f[1] = isHello ? SessionKind.Hello : SessionKind.Next;
        const reply = decodeSessionFrame(await send(f));
        return reply.kind === 'refused' && reply.code === (isHello ? 'SESSION_REJECTED' : 'NO_SESSION');
      }),
      { numRuns: 100 },
    );
    // Inside a session: whatever the bytes, a typed error.
    await fc.assert(
      fc.asyncProperty(fc.uint8Array({ minLength: 1, maxLength: 254 }), async (bytes) => {
        const reply = await hand().first(bytes);
        return reply.kind === 'welcome' && reply.reply?.t === 'Error';
      }),
      { numRuns: 200 },
    );
    expect(r.firmware.digest()).toBe(digest);
    expect(r.firmware.appliedIndex).toBe(index);
    expect(r.health.healthy).toBe(true);
    await r.close();
  });

  it('no secret reaches a log line, an error reply, a health reason or the relay', async () => {
    fx.logLines.length = 0;
    const r = await fx.open();
    const user = 'hank';
    const k = K();
    const password = 'a fairly long secret password 1234567890';
    // Every frame a relay would carry, both ways; and every inner reply, opened by a tap.
    const frames: Uint8Array[] = [];
    const tap = sessionTap(fx.vaultSessionKey);
    const send: Send = tap.wrap(async (b) => {
      frames.push(b);
      const reply = await r.handle(user, b);
      frames.push(reply);
      return reply;
    }, user);
    const o = { ...fx.client(user), rng: tap.rng };
    await enablePassword(send, o, password, k);
    // a manual recovery, to learn the session key the vault derived
    const op = await createOpaque({ suite: 'ristretto255-SHA512', ksf: identityKsf });
    const start = op.clientStartLogin(new TextEncoder().encode(password));
    const h = handSession(send, user, fx.sessionKey, tap.rng);
    const ke2 = (await h.first({ t: 'RecoverStart', ke1: start.ke1, pin: pinOf(o.serverPublicKey), ksf: identityKsf.name })).reply as { session: Uint8Array; ke2: Uint8Array };
    const fin = op.clientFinishLogin(start.state, ke2.ke2, {
      expectedServerPublicKey: o.serverPublicKey,
      clientIdentity: new TextEncoder().encode(user),
      serverIdentity: fleetIdentity(fx.sessionKey),
    });
    expect((await h.second({ t: 'RecoverFinish', session: ke2.session, ke3: fin.ke3 })).reply?.t).toBe('Released');
    // provoke errors: a replayed finish (byte-identical: the same Final again, nothing new), the
    // finish in a new session, bad messages, a wrong password
    const again = await send(h.sent[1]!);
    expect(Buffer.from(again).equals(Buffer.from(frames[frames.length - 3]!))).toBe(true);
    const h2 = handSession(send, user, fx.sessionKey, tap.rng);
    expect((await h2.first({ t: 'RecoverFinish', session: ke2.session, ke3: fin.ke3 })).reply).toEqual({ t: 'Error', code: 'WRONG_STEP' });
    // (the same RecoverStart again would be a copy, answered with the same KE2: a fresh KE1 here)
    const h3 = handSession(send, user, fx.sessionKey, tap.rng);
    const ke1b = op.clientStartLogin(new TextEncoder().encode(password)).ke1;
    expect((await h3.first({ t: 'RecoverStart', ke1: ke1b, pin: pinOf(o.serverPublicKey), ksf: identityKsf.name })).reply?.t).toBe('KE2');
    expect((await h3.second({ t: 'RecoverFinish', session: ke2.session, ke3: fin.ke3 })).reply).toEqual({ t: 'Error', code: 'NO_SESSION' });
    await send(new Uint8Array(randomBytes(64)));
    await handSession(send, user, fx.sessionKey, tap.rng).first(new Uint8Array(randomBytes(64)));
    await recoverK(send, o, 'not it').catch(() => undefined);
    await r.close();

    const errors = tap.seen.filter((t) => t.reply?.t === 'Error' || t.kind === 'refused');
    expect(errors.length).toBeGreaterThanOrEqual(4);
    const text = [...fx.logLines, JSON.stringify(r.health), ...errors.map((e) => JSON.stringify(e.reply ?? e.refused))].join('\n');
    const errorBytes = Buffer.concat(errors.map((e) => e.inner ?? e.frame));
    const relayBytes = Buffer.concat(frames);
    for (const secret of [k, new TextEncoder().encode(password), fin.sessionKey]) {
      for (let i = 0; i + 16 <= secret.length; i++) {
        const w = Buffer.from(secret.subarray(i, i + 16));
        expect(text.includes(w.toString('hex'))).toBe(false);
        expect(text.includes(w.toString('base64'))).toBe(false);
        expect(text.includes(w.toString('latin1'))).toBe(false);
        expect(errorBytes.indexOf(w)).toBe(-1);
        // K travels in RegisterFinish and comes back in Released: both only inside the session.
        expect(relayBytes.indexOf(w)).toBe(-1);
      }
    }
  });
});
