// One replica end to end: real SoftHSM2 token, real LMDB, real OPAQUE (cheap KSF), through the
// device helpers of client/password.ts.
import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { changePassword, disable, enablePassword, PasswordError, recoverK, status, type Send } from '../../client/password.ts';
import { createOpaque, identityKsf } from '../../protocol/opaque/index.ts';
import { FINISH_REPLY_SIZE, decodeVaultReply, encodeDeviceMessage, type VaultReply } from '../../protocol/wire.ts';
import { decodeEntry } from '../../vault/firmware/entries.ts';
import { SealedStorage } from '../../vault/firmware/storage.ts';
import { VaultState } from '../../vault/firmware/state.ts';
import { LogStore } from '../../vault/agent/store.ts';
import type { Replica } from '../../vault/agent/replica.ts';
import type { SoloLog } from '../../vault/agent/log.ts';
import { vaultFixture, type VaultFixture } from './agent-fixture.ts';

let fx: VaultFixture;
beforeAll(async () => {
  fx = await vaultFixture();
});
afterAll(async () => {
  await fx?.cleanup();
});

const K = () => new Uint8Array(randomBytes(32));

/** A send that also records every raw reply (what leaves the vault). */
function recording(r: Replica, user: string): { send: Send; replies: Uint8Array[]; decoded: () => VaultReply[] } {
  const replies: Uint8Array[] = [];
  return {
    replies,
    send: async (body) => {
      const reply = await r.handle(user, body);
      replies.push(reply);
      return reply;
    },
    decoded: () => replies.map((b) => decodeVaultReply(b)),
  };
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
    expect(await status(fx.sendVia(r, user))).toEqual({ state: 'registered', attemptsLeft: 10, limit: 10 });
    const got = await recoverK(fx.sendVia(r, user), fx.client(user), 'correct horse');
    expect(Buffer.from(got).equals(Buffer.from(k))).toBe(true);
    // the correct password reset the counter it had charged
    expect(await status(fx.sendVia(r, user))).toEqual({ state: 'registered', attemptsLeft: 10, limit: 10 });
    const err = await recoverK(fx.sendVia(r, user), fx.client(user), 'wrong').catch((e) => e);
    expect(err).toBeInstanceOf(PasswordError);
    expect(err.code).toBe('WRONG_PASSWORD');
    expect(err.attemptsLeft).toBe(9);
    await disable(fx.sendVia(r, user));
    expect((await status(fx.sendVia(r, user))).state).toBe('none');
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
    expect((await status(fx.sendVia(r, 'mallory'))).state).toBe('none');
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
      const e = (await recoverK(rec.send, fx.client(user), `wrong ${i}`).catch((x: PasswordError) => x)) as PasswordError;
      outcomes.push(`${e.code}${e.attemptsLeft === undefined ? '' : `:${e.attemptsLeft}`}`);
    }
    expect(outcomes).toEqual(['WRONG_PASSWORD:2', 'WRONG_PASSWORD:1', 'LOCKED', 'LOCKED', 'LOCKED']);
    expect(rec.decoded().filter((m) => m.t === 'KE2')).toHaveLength(3);
    await expect(recoverK(fx.sendVia(r2, user), fx.client(user), 'right')).rejects.toMatchObject({ code: 'LOCKED' });
    expect(await status(fx.sendVia(r2, user))).toEqual({ state: 'locked', attemptsLeft: 0, limit: 3 });
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
      Array.from({ length: 30 }, (_, i) => recoverK(rec.send, fx.client(user), `guess ${i}`).then(() => 'K', (e: PasswordError) => e.code)),
    );
    expect(results).not.toContain('K');
    const ke2 = rec.decoded().filter((m) => m.t === 'KE2').length;
    expect(ke2).toBe(10);
    expect((await status(fx.sendVia(r, user))).state).toBe('locked');
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
    expect(await status(fx.sendVia(r, user))).toMatchObject({ attemptsLeft: 4 });
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
    const finishSizes: Record<string, number> = {};
    const ke2Sizes: Record<string, number> = {};
    const probe = async (who: string, pw: string) => {
      const rec = recording(r, who);
      await recoverK(rec.send, fx.client(who), pw).catch(() => undefined);
      const [first, last] = [rec.replies[0]!, rec.replies[rec.replies.length - 1]!];
      if (decodeVaultReply(first).t === 'KE2') ke2Sizes[who === user ? 'known' : 'unknown'] = first.length;
      finishSizes[decodeVaultReply(last).t] = last.length;
    };
    await probe(user, 'right'); // Released
    await probe('nobody-here', 'x'); // unknown user: KE2 from a fake record, then WrongPassword
    await probe(user, 'wrong'); // WrongPassword
    await probe(user, 'wrong');
    await probe(user, 'wrong'); // Locked
    expect(Object.keys(finishSizes).sort()).toEqual(['Locked', 'Released', 'WrongPassword']);
    expect(new Set(Object.values(finishSizes))).toEqual(new Set([FINISH_REPLY_SIZE]));
    expect(ke2Sizes.known).toBeGreaterThan(0);
    expect(ke2Sizes.known).toBe(ke2Sizes.unknown);
    await r.close();
  });

  it('a malformed device message gets a typed error and changes no state', async () => {
    const r = await fx.open();
    const user = 'gina';
    await enablePassword(fx.sendVia(r, user), fx.client(user), 'right', K());
    const digest = r.firmware.digest();
    const index = r.firmware.appliedIndex;
    const good = encodeDeviceMessage({ t: 'RecoverStart', ke1: new Uint8Array(96) });
    const cases: Uint8Array[] = [
      new Uint8Array([0xc1]),
      new Uint8Array(randomBytes(40)),
      Uint8Array.of(0x93, 1, 2, 3),
      Buffer.concat([good, Buffer.of(0)]),
      good, // all-zero KE1: not a group element
      encodeDeviceMessage({ t: 'RecoverFinish', session: new Uint8Array(16), ke3: new Uint8Array(64) }), // no such session
      encodeDeviceMessage({
        t: 'RegisterFinish',
        suite: 'ristretto255-SHA512',
        ticket: new Uint8Array(40),
        record: new Uint8Array(192),
        kUpload: new Uint8Array(92),
      }), // forged ticket
    ];
    const codes: string[] = [];
    for (const body of cases) {
      const reply = decodeVaultReply(await r.handle(user, body));
      expect(reply.t).toBe('Error');
      codes.push((reply as { code: string }).code);
    }
    expect(codes.slice(0, 4)).toEqual(Array(4).fill('BAD_DEVICE_MESSAGE'));
    expect(codes[5]).toBe('NO_SESSION');
    expect(codes[6]).toBe('BAD_TICKET');
    await fc.assert(
      fc.asyncProperty(fc.uint8Array({ minLength: 1, maxLength: 300 }), async (bytes) => {
        const reply = decodeVaultReply(await r.handle(user, bytes));
        return reply.t === 'Error';
      }),
      { numRuns: 200 },
    );
    expect(r.firmware.digest()).toBe(digest);
    expect(r.firmware.appliedIndex).toBe(index);
    expect(r.health.healthy).toBe(true);
    await r.close();
  });

  it('no secret reaches a log line, an error reply or a health reason', async () => {
    fx.logLines.length = 0;
    const r = await fx.open();
    const user = 'hank';
    const k = K();
    const password = 'a fairly long secret password 1234567890';
    const seen: Uint8Array[] = [];
    const send: Send = async (b) => {
      const reply = await r.handle(user, b);
      seen.push(reply);
      return reply;
    };
    await enablePassword(send, fx.client(user), password, k);
    // a manual recovery, to learn the session key the vault derived
    const op = await createOpaque({ suite: 'ristretto255-SHA512', ksf: identityKsf });
    const start = op.clientStartLogin(new TextEncoder().encode(password));
    const ke2 = decodeVaultReply(await send(encodeDeviceMessage({ t: 'RecoverStart', ke1: start.ke1 }))) as { session: Uint8Array; ke2: Uint8Array };
    const fin = op.clientFinishLogin(start.state, ke2.ke2);
    await send(encodeDeviceMessage({ t: 'RecoverFinish', session: ke2.session, ke3: fin.ke3 }));
    // provoke errors: bad messages, a replayed finish, a wrong password
    await send(encodeDeviceMessage({ t: 'RecoverFinish', session: ke2.session, ke3: fin.ke3 }));
    await send(new Uint8Array(randomBytes(64)));
    await recoverK(send, fx.client(user), 'not it').catch(() => undefined);
    await r.close();

    const errors = seen.map((b) => decodeVaultReply(b)).filter((m) => m.t === 'Error');
    expect(errors.length).toBeGreaterThan(0);
    const text = [...fx.logLines, JSON.stringify(r.health), ...errors.map((e) => JSON.stringify(e))].join('\n');
    const errorBytes = Buffer.concat(seen.filter((b) => decodeVaultReply(b).t === 'Error'));
    for (const secret of [k, new TextEncoder().encode(password), fin.sessionKey]) {
      for (let i = 0; i + 16 <= secret.length; i++) {
        const w = Buffer.from(secret.subarray(i, i + 16));
        expect(text.includes(w.toString('hex'))).toBe(false);
        expect(text.includes(w.toString('base64'))).toBe(false);
        expect(text.includes(w.toString('latin1'))).toBe(false);
        expect(errorBytes.indexOf(w)).toBe(-1);
      }
    }
  });
});
