// Everything ChatD could do to a device's traffic, done by a malicious ChatD that holds the relay key
// and forwards through ChatD's own code to a real vault (SoftHSM2 token, LMDB, loopback HTTP). For each
// attack: the device gets a typed error (never success, never a wrong value), the vault changes no
// state (beyond an attempt charged for a KE1 the device really sent), no more OPRF evaluations are
// charged than the device asked for, and nothing ChatD saw holds a secret.
import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { PasswordError, disable, enablePassword, recoverK, status, type PasswordOptions } from '../../client/password.ts';
import { fastX25519 } from '../../protocol/opaque/group.ts';
import { DeviceSession, FRAME_BYTES, decodeSessionFrame, encodeRefused, SessionKind } from '../../protocol/session.ts';
import { decodeDeviceMessage, decodeVaultReply, encodeDeviceMessage, encodeVaultReply } from '../../protocol/wire.ts';
import { startVaultServer, type VaultServer } from '../../vault/agent/server.ts';
import type { Replica } from '../../vault/agent/replica.ts';
import { vaultFixture, type VaultFixture } from '../vault/agent-fixture.ts';
import { MaliciousChatd, containsWindow, flip } from '../../scripts/chaos/malicious-chatd.ts';

const RELAY_KEY = randomBytes(32).toString('hex');
let fx: VaultFixture;
let replica: Replica;
let server: VaultServer;
let chatd: MaliciousChatd;
let userN = 0;

beforeAll(async () => {
  fx = await vaultFixture();
  replica = await fx.open({ tickMs: 200 });
  server = await startVaultServer(replica, { relayKey: RELAY_KEY });
  chatd = new MaliciousChatd(server.url, RELAY_KEY);
}, 120_000);

afterAll(async () => {
  chatd?.close();
  await server?.close();
  await fx?.cleanup();
});

const newUser = () => `+1555000${String(++userN).padStart(4, '0')}`;
const opts = (user: string): PasswordOptions => fx.client(user);
const K = () => new Uint8Array(randomBytes(32));

/** Registers `user` through an honest relay. */
async function registered(user: string, pw = 'correct horse', limit = 5): Promise<Uint8Array> {
  chatd.attack();
  const k = K();
  await enablePassword(chatd.deviceSend(user), opts(user), pw, k, limit);
  return k;
}

/** The vault's view of a user (no secrets): what no attack may change. */
const vaultView = (user: string) => JSON.stringify(replica.firmware.inspect(user) ?? null);

async function expectTyped(p: Promise<unknown>): Promise<unknown> {
  const e = await p.then(
    () => undefined,
    (err: unknown) => err,
  );
  expect(e, 'the device must not succeed').toBeDefined();
  expect(typeof (e as { code?: unknown }).code, `typed error expected, got ${String(e)}`).toBe('string');
  return e;
}

describe('what ChatD sees', () => {
  it('holds no window of K, the password, the record, its masking key, the export or session key; no body decodes as a message', async () => {
    const user = newUser();
    const pw = `pw ${randomBytes(8).toString('hex')}`;
    const k = K();
    const secrets: Array<[string, Uint8Array]> = [
      ['K', k],
      ['password', new TextEncoder().encode(pw)],
    ];
    const o: PasswordOptions = {
      ...opts(user),
      onRegistered: (record, exportKey) => {
        secrets.push(['record', record], ['masking key', record.subarray(32, 96)], ['export key', exportKey]);
      },
      onSessionKey: (sk) => secrets.push(['session key', sk]),
    };
    const from = chatd.recorded.length;
    chatd.attack();
    await enablePassword(chatd.deviceSend(user), o, pw, k, 5);
    expect(await recoverK(chatd.deviceSend(user), o, pw)).toEqual(k);
    await expectTyped(recoverK(chatd.deviceSend(user), o, 'wrong'));
    expect((await status(chatd.deviceSend(user), o)).state).toBe('registered');
    await disable(chatd.deviceSend(user), o);
    const seen = chatd.recorded.slice(from);
    expect(seen.length).toBeGreaterThanOrEqual(14);
    expect(secrets.length).toBeGreaterThanOrEqual(6);
    for (const r of seen) {
      for (const [name, s] of secrets) expect(containsWindow(r.bytes, s), `${name} in a ${r.dir} body`).toBe(false);
      expect(() => decodeDeviceMessage(r.bytes)).toThrow();
      expect(() => decodeVaultReply(r.bytes)).toThrow();
    }
    // One size per position, whatever the step or its outcome.
    const sizes = new Set(seen.map((r) => r.bytes.length));
    for (const n of sizes) expect(Object.values(FRAME_BYTES)).toContain(n);
  });

  it('a new user and a registered one look alike: same frame sizes for Status and RecoverStart', async () => {
    const known = newUser();
    await registered(known);
    const unknown = newUser();
    const sizes = async (user: string) => {
      const from = chatd.recorded.length;
      chatd.attack();
      await status(chatd.deviceSend(user), opts(user));
      await recoverK(chatd.deviceSend(user), opts(user), 'guess').catch(() => undefined);
      return chatd.recorded.slice(from).map((r) => `${r.dir}:${r.bytes.length}`);
    };
    expect(await sizes(unknown)).toEqual(await sizes(known));
  });
});

describe('registration under attack', () => {
  /** Runs enablePassword with the hooks; checks the device failed typed and the vault holds nothing for the user. */
  async function attackRegistration(hooks: Parameters<MaliciousChatd['attack']>[0]): Promise<{ error: unknown; sent: number }> {
    const user = newUser();
    const before = vaultView(user);
    const from = chatd.recorded.length;
    chatd.attack(hooks);
    const error = await expectTyped(enablePassword(chatd.deviceSend(user), opts(user), 'pw', K(), 5));
    expect(vaultView(user)).toBe(before);
    expect(replica.firmware.inspect(user)).toBeUndefined();
    return { error, sent: chatd.recorded.slice(from).filter((r) => r.dir === 'up').length };
  }

  it('OPRF swap: any change to the vault\'s RegisterResponse is refused before anything derived from the password leaves the device', async () => {
    for (const i of [2, 17, 40, 100, 300, FRAME_BYTES.welcome - 1]) {
      const { error, sent } = await attackRegistration({ down: (b, _u, n) => (n === 0 ? flip(b, i, 0x40) : b) });
      expect((error as PasswordError).code).toBe('BAD_VAULT_REPLY');
      expect(sent, 'no RegisterFinish after a tampered RegisterResponse').toBe(1);
    }
    // ChatD's own evaluation in a Welcome of its own: it has no session with the device, so it can only forge.
    const forged = new Uint8Array(FRAME_BYTES.welcome);
    forged.set([2, SessionKind.Welcome]);
    forged.set(randomBytes(FRAME_BYTES.welcome - 2), 2);
    const { sent } = await attackRegistration({ up: () => ({ answer: forged }) });
    expect(sent).toBe(1);
  });

  it('limit, ticket, record or K rewritten on the way up: the vault cannot open it and stores nothing', async () => {
    for (const i of [2, 10, 33, 34, 60, 200, 400, 600, FRAME_BYTES.next - 1]) {
      const { error } = await attackRegistration({ up: (b, _u, n) => ({ forward: n === 1 ? flip(b, i) : b }) });
      // Inside the session id the vault finds no such session; elsewhere the frame does not open.
      const e = error as PasswordError;
      if (i < 34) expect([e.code, e.vaultCode]).toEqual(['VAULT_ERROR', 'NO_SESSION']);
      else expect(e.code).toBe('SESSION_REFUSED');
    }
  });

  it('a RegisterFinish paired with another session (its ticket) is refused, and the other session is not disturbed', async () => {
    // Record a whole honest registration's Next, then play it in place of another device's Next.
    const victim = newUser();
    let recordedNext: Uint8Array | undefined;
    chatd.attack({ up: (b, _u, n) => { if (n === 1) recordedNext = b; return { forward: b }; } });
    await enablePassword(chatd.deviceSend(victim), opts(victim), 'pw', K(), 5);
    const after = vaultView(victim);
    await attackRegistration({ up: (b, _u, n) => ({ forward: n === 1 ? recordedNext! : b }) });
    const again = newUser();
    // Even for the same user as the recording (the replay of a used session): refused, nothing changes.
    chatd.attack({ up: (b, _u, n) => ({ forward: n === 1 ? recordedNext! : b }) });
    await expectTyped(enablePassword(chatd.deviceSend(victim), opts(victim), 'pw2', K(), 5));
    expect(vaultView(victim)).toBe(after);
    expect(replica.firmware.inspect(again)).toBeUndefined();
  });

  it('truncated, dropped, reflected, or plaintext replies are typed errors', async () => {
    await attackRegistration({ down: (b) => b.subarray(0, b.length - 1) });
    await attackRegistration({ up: () => ({ drop: true }) });
    await attackRegistration({ up: (b) => ({ answer: b }) }); // the device's own Hello reflected
    await attackRegistration({ up: () => ({ answer: encodeVaultReply({ t: 'Registered', limit: 5, confirm: new Uint8Array(32) }) }) });
    await attackRegistration({ up: () => ({ answer: encodeRefused('NOT_LEADER') }) });
  });

  it('a Hello relayed as another user does not open; neither user\'s record changes', async () => {
    const alice = newUser();
    const bob = newUser();
    await registered(bob);
    const bobBefore = vaultView(bob);
    const { error } = await attackRegistration({ up: (b) => ({ forward: b, as: bob }) });
    expect((error as PasswordError).code).toBe('SESSION_REFUSED');
    expect(vaultView(bob)).toBe(bobBefore);
    expect(replica.firmware.inspect(alice)).toBeUndefined();
  });
});

describe('recovery under attack', () => {
  it('a flipped KE2 or Released is refused; K never comes out wrong; only the attempts the device really started are charged', async () => {
    const user = newUser();
    const k = await registered(user, 'pw', 10);
    const used = () => replica.firmware.inspect(user)!.used;
    // The KE2 altered on the way down: the device stops before its KE3. Its KE1 was charged, once.
    for (const i of [2, 50, 400, FRAME_BYTES.welcome - 1]) {
      const before = used();
      chatd.attack({ down: (b, _u, n) => (n === 0 ? flip(b, i, 0x80) : b) });
      const e = await expectTyped(recoverK(chatd.deviceSend(user), opts(user), 'pw'));
      expect((e as PasswordError).code).toBe('BAD_VAULT_REPLY');
      expect(used()).toBe(before + 1);
    }
    // ChatD answers the KE3 itself with an outcome of its making: refused, one charge per KE1 still.
    for (const forged of [encodeVaultReply({ t: 'WrongPassword', attemptsLeft: 0 }), encodeVaultReply({ t: 'Locked' }), new Uint8Array(FRAME_BYTES.final)]) {
      const before = used();
      chatd.attack({ up: (b, _u, n) => (n === 1 ? { answer: forged } : { forward: b }) });
      const e = await expectTyped(recoverK(chatd.deviceSend(user), opts(user), 'pw'));
      expect((e as PasswordError).code).toBe('BAD_VAULT_REPLY');
      expect(used()).toBe(before + 1);
    }
    // The Released altered on the way down: the device gets no K (and no wrong K). The vault did see a
    // correct KE3 from the real device, so its reset stands.
    for (const i of [2, 60, FRAME_BYTES.final - 1]) {
      chatd.attack({ down: (b, _u, n) => (n === 1 ? flip(b, i, 0x80) : b) });
      const e = await expectTyped(recoverK(chatd.deviceSend(user), opts(user), 'pw'));
      expect((e as PasswordError).code).toBe('BAD_VAULT_REPLY');
      expect(used()).toBe(0);
    }
    chatd.attack();
    expect(await recoverK(chatd.deviceSend(user), opts(user), 'pw')).toEqual(k);
    expect(replica.firmware.inspect(user)?.state).toBe('registered');
  });

  it('a delayed exchange still completes: delay alone is no attack on correctness', async () => {
    const user = newUser();
    const k = await registered(user, 'pw', 10);
    chatd.attack({ up: async (b) => { await new Promise((r) => setTimeout(r, 300)); return { forward: b }; } });
    expect(await recoverK(chatd.deviceSend(user), opts(user), 'pw')).toEqual(k);
  });

  it('a replayed RecoverStart is answered from memory (no second charge) and its KE2 is sealed to the device\'s key', async () => {
    const user = newUser();
    await registered(user, 'pw', 10);
    let hello: Uint8Array | undefined;
    chatd.attack({ up: (b, _u, n) => { if (n === 0) hello = b; return { forward: b }; } });
    await recoverK(chatd.deviceSend(user), opts(user), 'pw');
    const used = replica.firmware.inspect(user)!.used;
    const replies = [await chatd.forward(user, hello!), await chatd.forward(user, hello!)];
    expect(replica.firmware.inspect(user)!.used).toBe(used);
    // ChatD gets a Welcome it cannot open: nothing in it decodes.
    for (const r of replies) expect(() => decodeVaultReply(r)).toThrow();
  });

  it('a RecoverFinish from one session replayed into another is refused without a charge or a release', async () => {
    const user = newUser();
    await registered(user, 'pw', 10);
    let next: Uint8Array | undefined;
    chatd.attack({ up: (b, _u, n) => { if (n === 1) next = b; return { forward: b }; } });
    await recoverK(chatd.deviceSend(user), opts(user), 'pw');
    const before = vaultView(user);
    const r = await chatd.forward(user, next!);
    // The used session's own reply, byte for byte, or a refusal: never a new outcome.
    const f = decodeSessionFrame(r);
    expect(['final', 'refused']).toContain(f.kind);
    expect(vaultView(user)).toBe(before);
  });
});

describe('Status and Disable under attack', () => {
  it('ChatD cannot answer Disable itself: the device refuses, the record and K stay where they were', async () => {
    const user = newUser();
    const k = await registered(user);
    for (const hooks of [
      { up: (b: Uint8Array, _u: string, n: number) => (n === 1 ? { answer: encodeVaultReply({ t: 'Disabled' }) } : { forward: b }) },
      { up: (b: Uint8Array, _u: string, n: number) => (n === 1 ? { answer: new Uint8Array(FRAME_BYTES.final) } : { forward: b }) },
      { up: (b: Uint8Array, _u: string, n: number) => (n === 1 ? ({ drop: true } as const) : { forward: b }) },
    ]) {
      chatd.attack(hooks);
      await expectTyped(disable(chatd.deviceSend(user), opts(user)));
      expect(replica.firmware.inspect(user)?.hasK).toBe(true);
    }
    chatd.attack();
    expect(await recoverK(chatd.deviceSend(user), opts(user), 'correct horse')).toEqual(k);
  });

  it('a replayed Disable (its Next) from an earlier session deletes nothing later', async () => {
    const user = newUser();
    let disableNext: Uint8Array | undefined;
    await registered(user);
    chatd.attack({ up: (b, _u, n) => { if (n === 1) disableNext = b; return { forward: b }; } });
    await disable(chatd.deviceSend(user), opts(user));
    const k = await registered(user);
    const r = await chatd.forward(user, disableNext!);
    expect(['final', 'refused']).toContain(decodeSessionFrame(r).kind);
    expect(replica.firmware.inspect(user)?.hasK).toBe(true);
    chatd.attack();
    expect(await recoverK(chatd.deviceSend(user), opts(user), 'correct horse')).toEqual(k);
  });

  it('a forged Status (no record, locked, attempts) is refused', async () => {
    const user = newUser();
    await registered(user);
    for (const forged of [encodeVaultReply({ t: 'Status', state: 'none', attemptsLeft: 0, limit: 0 }), new Uint8Array(FRAME_BYTES.welcome)]) {
      chatd.attack({ up: () => ({ answer: forged }) });
      await expectTyped(status(chatd.deviceSend(user), opts(user)));
    }
  });

  it('a Disable is never accepted as a first message (a replayed Hello cannot delete)', async () => {
    const user = newUser();
    await registered(user);
    const s = new DeviceSession(fastX25519(), user, fx.sessionKey, (n) => new Uint8Array(randomBytes(n)));
    const reply = await chatd.forward(user, s.hello(encodeDeviceMessage({ t: 'Disable' })));
    expect(decodeVaultReply(s.openWelcome(reply))).toEqual({ t: 'Error', code: 'WRONG_STEP' });
    expect(replica.firmware.inspect(user)?.hasK).toBe(true);
  });
});

describe('the ChatD -> vault hop', () => {
  it('a request without the relay key never reaches the vault', async () => {
    const user = newUser();
    await registered(user);
    const before = vaultView(user);
    const s = new DeviceSession(fastX25519(), user, fx.sessionKey, (n) => new Uint8Array(randomBytes(n)));
    const hello = Buffer.from(s.hello(encodeDeviceMessage({ t: 'Status' })));
    for (const key of [undefined, randomBytes(32).toString('hex'), `${RELAY_KEY.slice(0, 63)}${RELAY_KEY.endsWith('0') ? '1' : '0'}`]) {
      const res = await fetch(server.url + '/v1/relay', {
        method: 'POST',
        headers: key ? { authorization: `Bearer ${key}` } : {},
        body: hello,
      });
      expect(res.status).toBe(401);
    }
    expect(vaultView(user)).toBe(before);
  });
});

describe('a device configured for another vault, or other key stretching, spends nothing', () => {
  it('another pinned AKE key: VAULT_KEY_MISMATCH, no attempt charged', async () => {
    const user = newUser();
    await registered(user);
    const wrong = { ...opts(user), serverPublicKey: fx.client(user, 'P256-SHA256').serverPublicKey.subarray(1) };
    chatd.attack();
    const e = await expectTyped(recoverK(chatd.deviceSend(user), wrong, 'correct horse'));
    expect((e as PasswordError).code).toBe('VAULT_KEY_MISMATCH');
    expect(replica.firmware.inspect(user)?.used).toBe(0);
    const other = newUser();
    const e2 = await expectTyped(enablePassword(chatd.deviceSend(other), { ...wrong, user: other }, 'pw', K(), 5));
    expect(replica.firmware.inspect(other)).toBeUndefined();
    expect((e2 as PasswordError).code).toBe('VAULT_KEY_MISMATCH');
  });

  it('another pinned session key: the vault cannot open the request (SESSION_REFUSED), no attempt charged', async () => {
    const user = newUser();
    await registered(user);
    const wrong = { ...opts(user), sessionKey: fastX25519().publicKey(new Uint8Array(32).fill(9)) };
    chatd.attack();
    const e = await expectTyped(recoverK(chatd.deviceSend(user), wrong, 'correct horse'));
    expect((e as PasswordError).code).toBe('SESSION_REFUSED');
    expect(replica.firmware.inspect(user)?.used).toBe(0);
  });

  it('other key stretching than the record was made with: KSF_MISMATCH naming the right one, no attempt charged', async () => {
    const user = newUser();
    const k = await registered(user);
    const { scryptKsf } = await import('../../protocol/opaque/ksf.ts');
    chatd.attack();
    const e = await expectTyped(recoverK(chatd.deviceSend(user), { ...opts(user), ksf: scryptKsf({ N: 1024, r: 8, p: 1 }) }, 'correct horse'));
    expect((e as PasswordError).code).toBe('KSF_MISMATCH');
    expect((e as PasswordError).ksf).toBe('identity');
    expect(replica.firmware.inspect(user)?.used).toBe(0);
    expect(await recoverK(chatd.deviceSend(user), opts(user), 'correct horse')).toEqual(k);
  });
});
