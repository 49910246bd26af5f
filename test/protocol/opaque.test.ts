// OPAQUE behaviour beyond the RFC vectors: every suite and backend end to end, failures with typed
// codes, fake records for unknown users, the KSFs, and strict decoding.
import { beforeAll, describe, expect, it } from 'vitest';
import {
  OpaqueError,
  argon2idKsf,
  backendStatus,
  createOpaque,
  defaultKsf,
  identityKsf,
  ksfFromName,
  makeOpaque,
  ready,
  scryptKsf,
  softwareServerSecrets,
  softwareServerSecretsFromSeed,
  type BackendId,
  type Opaque,
  type SuiteId,
} from '../../protocol/opaque/index.ts';
import { hex, replayRng, unhex } from '../fixtures/opaque-helpers.ts';

beforeAll(async () => {
  await ready();
});

const enc = new TextEncoder();
const seed64 = new Uint8Array(64).map((_, i) => i);
const akeSeed = new Uint8Array(32).map((_, i) => 200 - i);

function codeOf(fn: () => unknown): string {
  try {
    fn();
  } catch (e) {
    if (e instanceof OpaqueError) return e.code;
    throw e;
  }
  return 'NO_ERROR';
}

const configs: Array<{ suite: SuiteId; backend: BackendId }> = [
  { suite: 'ristretto255-SHA512', backend: 'libsodium' },
  { suite: 'ristretto255-SHA512', backend: 'noble' },
  { suite: 'P256-SHA256', backend: 'noble' },
  { suite: 'ristretto255-SHA512-X25519', backend: 'libsodium' },
  { suite: 'ristretto255-SHA512-X25519', backend: 'noble' },
];

for (const { suite, backend } of configs) {
  describe(`${suite} [${backend}]`, () => {
    const op = makeOpaque({ suite, backend, ksf: identityKsf });
    const secrets = softwareServerSecretsFromSeed(suite, seed64, akeSeed);
    const password = enc.encode('hunter2 is not a password');
    const credId = enc.encode('alice');
    const reg = () => {
      const r = op.clientStartRegistration(password);
      return op.clientFinishRegistration(r.state, op.serverRegistrationResponse(secrets, r.request, credId));
    };

    it('round trip: both sides agree on the session key; messages have the fixed sizes', () => {
      const { record, exportKey } = reg();
      expect(record.length).toBe(op.sizes.registrationRecord);
      const s = op.clientStartLogin(password);
      expect(s.ke1.length).toBe(op.sizes.ke1);
      const v = op.serverStartLogin(secrets, record, s.ke1, credId);
      expect(v.ke2.length).toBe(op.sizes.ke2);
      const c = op.clientFinishLogin(s.state, v.ke2, { expectedServerPublicKey: secrets.akeKeyPair.publicKey });
      expect(c.ke3.length).toBe(op.sizes.ke3);
      expect(hex(op.serverFinishLogin(v.state, c.ke3).sessionKey)).toBe(hex(c.sessionKey));
      expect(hex(c.exportKey)).toBe(hex(exportKey));
    });

    it('identities are bound: a login with other identities than the registration fails', () => {
      const ids = { clientIdentity: enc.encode('alice@bkv'), serverIdentity: enc.encode('vault.bkv') };
      const r = op.clientStartRegistration(password);
      const { record } = op.clientFinishRegistration(r.state, op.serverRegistrationResponse(secrets, r.request, credId), ids);
      const s = op.clientStartLogin(password);
      const v = op.serverStartLogin(secrets, record, s.ke1, credId, ids);
      const c = op.clientFinishLogin(s.state, v.ke2, ids);
      expect(hex(op.serverFinishLogin(v.state, c.ke3).sessionKey)).toBe(hex(c.sessionKey));
      const s2 = op.clientStartLogin(password);
      const v2 = op.serverStartLogin(secrets, record, s2.ke1, credId, ids);
      expect(codeOf(() => op.clientFinishLogin(s2.state, v2.ke2, { ...ids, serverIdentity: enc.encode('evil.bkv') }))).toBe('AUTH_FAILED');
    });

    it('wrong password, tampered KE2, forged KE3, pinned-key mismatch: AUTH_FAILED', () => {
      const { record } = reg();
      const s = op.clientStartLogin(enc.encode('hunter3 is not a password'));
      const v = op.serverStartLogin(secrets, record, s.ke1, credId);
      expect(codeOf(() => op.clientFinishLogin(s.state, v.ke2))).toBe('AUTH_FAILED');
      expect(codeOf(() => op.serverFinishLogin(v.state, new Uint8Array(op.sizes.ke3)))).toBe('AUTH_FAILED');

      const s2 = op.clientStartLogin(password);
      const v2 = op.serverStartLogin(secrets, record, s2.ke1, credId);
      const mac = v2.ke2.slice();
      mac[mac.length - 1]! ^= 1; // server MAC
      expect(codeOf(() => op.clientFinishLogin(s2.state, mac))).toBe('AUTH_FAILED');
      const masked = v2.ke2.slice();
      masked[op.suite.Noe + op.suite.Nn + 3]! ^= 0x80; // inside the masked response
      expect(codeOf(() => op.clientFinishLogin(s2.state, masked))).toBe('AUTH_FAILED');
      const other = softwareServerSecretsFromSeed(suite, seed64, new Uint8Array(32).fill(5)).akeKeyPair.publicKey;
      expect(codeOf(() => op.clientFinishLogin(s2.state, v2.ke2, { expectedServerPublicKey: other }))).toBe('AUTH_FAILED');
      // and the untouched KE2 still works, so the failures above came from the tampering
      const c = op.clientFinishLogin(s2.state, v2.ke2);
      expect(hex(op.serverFinishLogin(v2.state, c.ke3).sessionKey)).toBe(hex(c.sessionKey));
    });

    it('unknown user: same size, deterministic per credential identifier, fails like a wrong password', () => {
      const s = op.clientStartLogin(password);
      const rnd = 'ab'.repeat(96);
      const f1 = op.serverStartLogin(secrets, null, s.ke1, enc.encode('nobody'), { rng: replayRng(rnd) }).ke2;
      const f2 = op.serverStartLogin(secrets, null, s.ke1, enc.encode('nobody'), { rng: replayRng(rnd) }).ke2;
      const f3 = op.serverStartLogin(secrets, null, s.ke1, enc.encode('nobody2'), { rng: replayRng(rnd) }).ke2;
      expect(f1.length).toBe(op.sizes.ke2);
      expect(hex(f1)).toBe(hex(f2));
      expect(hex(f1)).not.toBe(hex(f3));
      expect(hex(op.fakeRecord(secrets, enc.encode('nobody')))).toBe(hex(op.fakeRecord(secrets, enc.encode('nobody'))));
      expect(op.decodeRegistrationRecord(op.fakeRecord(secrets, enc.encode('nobody'))).clientPublicKey.length).toBe(op.suite.Npk);
      expect(codeOf(() => op.clientFinishLogin(s.state, f1))).toBe('AUTH_FAILED');
      // fresh randomness: two probes differ on the wire
      const g1 = op.serverStartLogin(secrets, null, s.ke1, enc.encode('nobody')).ke2;
      const g2 = op.serverStartLogin(secrets, null, s.ke1, enc.encode('nobody')).ke2;
      expect(hex(g1)).not.toBe(hex(g2));
    });

    it('rejects bad input with typed errors and no partial result', () => {
      const { record } = reg();
      const s = op.clientStartLogin(password);
      expect(codeOf(() => op.serverStartLogin(secrets, record, s.ke1.subarray(1), credId))).toBe('BAD_LENGTH');
      expect(codeOf(() => op.serverStartLogin(secrets, record.subarray(1), s.ke1, credId))).toBe('BAD_LENGTH');
      const zeroBlind = s.ke1.slice();
      zeroBlind.fill(0, 0, op.suite.Noe);
      expect(codeOf(() => op.serverStartLogin(secrets, record, zeroBlind, credId))).toMatch(/BAD_ELEMENT|BAD_LENGTH/);
      expect(codeOf(() => op.decodeKE1(zeroBlind))).toBe('BAD_ELEMENT');
      expect(codeOf(() => op.serverRegistrationResponse(secrets, new Uint8Array(op.suite.Noe), credId))).toBe('BAD_ELEMENT');
      expect(codeOf(() => op.serverFinishLogin(op.serverStartLogin(secrets, record, s.ke1, credId).state, new Uint8Array(3)))).toBe('BAD_LENGTH');
      expect(codeOf(() => op.clientStartLogin(password, { blind: new Uint8Array(32) }))).toMatch(/BAD_SCALAR/);
      const otherSuite: SuiteId = suite === 'P256-SHA256' ? 'ristretto255-SHA512' : 'P256-SHA256';
      expect(codeOf(() => op.serverStartLogin(softwareServerSecretsFromSeed(otherSuite, seed64, akeSeed), record, s.ke1, credId))).toBe('BAD_CONFIG');
    });
  });
}

describe('configuration', () => {
  it('refuses P-256 on libsodium, unknown suites and KSF names', async () => {
    expect(codeOf(() => makeOpaque({ suite: 'P256-SHA256', backend: 'libsodium' }))).toBe('BAD_CONFIG');
    expect(codeOf(() => makeOpaque({ suite: 'nope' as SuiteId }))).toBe('BAD_CONFIG');
    expect(codeOf(() => ksfFromName('md5' as 'identity'))).toBe('BAD_CONFIG');
    expect(codeOf(() => scryptKsf({ N: 1000, r: 8, p: 1 }))).toBe('BAD_CONFIG');
    expect(codeOf(() => argon2idKsf({ m: 4, t: 1, p: 1 }))).toBe('BAD_CONFIG');
    const op = await createOpaque();
    expect(op.suite.id).toBe('ristretto255-SHA512');
    // native when the addon loaded in this thread, else libsodium (WebAssembly)
    expect(op.backend).toBe(backendStatus().native.loaded ? 'native' : 'libsodium');
    expect(op.ksf.name).toBe('argon2id-m65536-t3-p4');
    expect(defaultKsf().name).toBe('argon2id-m65536-t3-p4');
  });

  it('software secrets check the AKE private key', () => {
    expect(codeOf(() => softwareServerSecrets('ristretto255-SHA512', seed64, new Uint8Array(32)))).toBe('BAD_SCALAR');
    expect(codeOf(() => softwareServerSecrets('P256-SHA256', seed64, new Uint8Array(31).fill(1)))).toBe('BAD_LENGTH');
    expect(codeOf(() => softwareServerSecrets('ristretto255-SHA512', seed64.subarray(0, 16), akeSeed))).toBe('BAD_LENGTH');
  });
});

describe('key stretching', () => {
  const cheapArgon = argon2idKsf({ m: 256, t: 1, p: 2 });
  const cheapScrypt = scryptKsf({ N: 1024, r: 8, p: 1 });

  it('Argon2id and scrypt stretch to Nh bytes, deterministically, and differ from each other', () => {
    const msg = unhex('00112233'.repeat(16));
    for (const k of [cheapArgon, cheapScrypt]) {
      expect(k.stretch(msg, 64).length).toBe(64);
      expect(k.stretch(msg, 32).length).toBe(32);
      expect(hex(k.stretch(msg, 64))).toBe(hex(k.stretch(msg, 64)));
    }
    expect(hex(cheapArgon.stretch(msg, 64))).not.toBe(hex(cheapScrypt.stretch(msg, 64)));
    expect(hex(identityKsf.stretch(msg, 64))).toBe(hex(msg));
  });

  it('the KSF is part of the password: a record made under one KSF does not open under another', async () => {
    const secrets = softwareServerSecretsFromSeed('ristretto255-SHA512', seed64, akeSeed);
    const a = await createOpaque({ ksf: cheapArgon });
    const b = await createOpaque({ ksf: cheapScrypt });
    const pw = enc.encode('pw');
    const id = enc.encode('carol');
    const r = a.clientStartRegistration(pw);
    const { record, exportKey } = a.clientFinishRegistration(r.state, a.serverRegistrationResponse(secrets, r.request, id));
    const s = a.clientStartLogin(pw);
    const c = a.clientFinishLogin(s.state, a.serverStartLogin(secrets, record, s.ke1, id).ke2);
    expect(hex(c.exportKey)).toBe(hex(exportKey));
    const s2 = b.clientStartLogin(pw);
    expect(codeOf(() => b.clientFinishLogin(s2.state, b.serverStartLogin(secrets, record, s2.ke1, id).ke2))).toBe('AUTH_FAILED');
  });
});
