// The adapter's contract, on every module it is pointed at: SoftHSM2 and NSS softoken by default, or
// the one module BKV_TEST_MODULE names (test/helpers/token-target.ts; `npm run test:token`). What a
// module cannot do is skipped with the reason in the test's name, never silently.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import pkcs11 from 'pkcs11js';
import { p256 } from '@noble/curves/nist.js';
import { tokenTargets } from '../helpers/token-target.ts';
import { KeyLabels, FLEET_AKE_AAD, type SealScheme } from '../../hsm-adapter/token.ts';
import { openToken, sealSchemeMechanisms, signingMechanisms, mechanismName, type Pkcs11Token } from '../../hsm-adapter/pkcs11-token.ts';
import { TokenError } from '../../hsm-adapter/errors.ts';
import { chooseDataStore } from '../../softhsm/keys.ts';

function caught(f: () => unknown): TokenError {
  try {
    f();
  } catch (e) {
    expect(e).toBeInstanceOf(TokenError);
    return e as TokenError;
  }
  throw new Error('expected a TokenError');
}

const aad = Buffer.from('bkv conformance');

for (const target of tokenTargets()) {
  describe.skipIf(target.skip)(`${target.name}${target.skip ? ` (skipped: ${target.skip})` : ''}`, () => {
    const opened: Pkcs11Token[] = [];
    const open = (o: { sealScheme?: SealScheme | 'auto' } = {}) => {
      const t = openToken({ ...target.options(), ...o, requireMechanisms: false });
      opened.push(t);
      return t;
    };
    let t: Pkcs11Token;
    beforeAll(async () => {
      await target.setUp();
      t = open();
    });
    afterAll(async () => {
      for (const x of opened) x.close();
      await target.tearDown();
    });
    // Which of these the module offers decides the skips below; read once the token is open.
    const has = (m: number) => t.mechanisms.has(m);

    for (const scheme of ['aes-256-gcm', 'aes-256-cbc-hmac-sha256'] as const) {
      it(`${scheme}: seals and opens every size including empty, refuses tampering and a wrong AAD`, (ctx) => {
        const lacking = sealSchemeMechanisms[scheme].filter((m) => !has(m));
        if (lacking.length) ctx.skip(`the module lacks ${lacking.map(mechanismName).join(', ')}`);
        const s = open({ sealScheme: scheme });
        for (const n of [0, 1, 15, 16, 17, 100, 4096]) {
          const msg = s.random(n);
          const sealed = s.seal(KeyLabels.recordKey, msg, aad);
          expect(Buffer.from(s.open(KeyLabels.recordKey, sealed, aad)).equals(Buffer.from(msg))).toBe(true);
        }
        const sealed = Uint8Array.from(s.seal(KeyLabels.recordKey, Buffer.from('x'), aad));
        expect(caught(() => s.open(KeyLabels.recordKey, sealed, Buffer.from('other'))).code).toBe('SEAL_OPEN_FAILED');
        sealed[sealed.length - 1] ^= 1;
        expect(caught(() => s.open(KeyLabels.recordKey, sealed, aad)).code).toBe('SEAL_OPEN_FAILED');
        // The session a failed decrypt may have left busy is replaced: the next call works.
        sealed[sealed.length - 1] ^= 1;
        expect(Buffer.from(s.open(KeyLabels.recordKey, sealed, aad)).toString()).toBe('x');
      });
    }

    it('HMAC-SHA-256 and -512 with the token keys, including over empty data', () => {
      expect(t.hmac(KeyLabels.recordMacKey, 'sha256', Buffer.from('m')).length).toBe(32);
      expect(t.hmac(KeyLabels.oprfSeed, 'sha512', Buffer.from('m')).length).toBe(64);
      expect(t.hmac(KeyLabels.oprfSeed, 'sha256', new Uint8Array(0)).length).toBe(32);
      expect(Buffer.from(t.hmac(KeyLabels.oprfSeed, 'sha512', Buffer.from('a'))).equals(Buffer.from(t.hmac(KeyLabels.oprfSeed, 'sha512', Buffer.from('b'))))).toBe(false);
    });

    it('ECDSA P-256: r||s that an independent implementation verifies', (ctx) => {
      if (!signingMechanisms.some(has)) ctx.skip('the module offers no ECDSA (a single vault runs without it; a fleet replica cannot)');
      const data = Buffer.from('append entry 9, term 3');
      const sig = t.sign(KeyLabels.replicaIdentity, data);
      const pub = t.publicKey(KeyLabels.replicaIdentity);
      expect(p256.verify(sig, data, pub, { prehash: true, lowS: false })).toBe(true);
      expect(t.verify(pub, Buffer.from('other'), sig)).toBe(false);
    });

    it('secret keys refuse to reveal CKA_VALUE', () => {
      for (const label of [KeyLabels.recordKey, KeyLabels.recordMacKey, KeyLabels.oprfSeed]) {
        const h = t.findObject(label, pkcs11.CKO_SECRET_KEY)!;
        expect(h).toBeDefined();
        expect(() => t.raw.C_GetAttributeValue(t.sessionHandle, h, [{ type: pkcs11.CKA_VALUE }])).toThrow(/CKR_ATTRIBUTE_SENSITIVE|CKR_ATTRIBUTE_TYPE_INVALID/);
      }
    });

    it('the data store bkv chose is the one the probe allows; the sealed fleet AKE seed opens from it', () => {
      const probe = t.probeDataStores();
      expect(chooseDataStore(probe).store).toBe(t.dataStore);
      const seed = t.open(KeyLabels.recordKey, t.readData(KeyLabels.fleetAkeSealed), FLEET_AKE_AAD);
      expect(seed.length).toBe(32);
    });

    it('writeData creates and overwrites; another session reads the newest value; an unknown label is KEY_NOT_FOUND', () => {
      t.writeData('conf-anchor', Buffer.from('anchor 1'));
      t.writeData('conf-anchor', Buffer.from('anchor 2, longer'));
      expect(Buffer.from(t.readData('conf-anchor')).toString()).toBe('anchor 2, longer');
      expect(Buffer.from(open().readData('conf-anchor')).toString()).toBe('anchor 2, longer');
      expect(caught(() => t.readData('conf-none')).code).toBe('KEY_NOT_FOUND');
    });

    // The successor is created before the old object is destroyed, whatever the store: each call of
    // the overwrite fails once, as a kill at that point would leave the token.
    for (const step of ['C_CreateObject', 'C_GenerateKey', 'C_DestroyObject'] as const) {
      it(`an overwrite cut at ${step} leaves the old or the new value, never none`, () => {
        const label = `conf-cut-${step}`;
        const w = open();
        w.writeData(label, Buffer.from('old value'));
        const lib = w.raw as unknown as Record<string, (...a: unknown[]) => unknown>;
        const real = lib[step]!;
        let cut = false;
        lib[step] = function (this: unknown, ...a: unknown[]) {
          if (!cut) { cut = true; throw new Error('CKR_DEVICE_REMOVED:50'); }
          return real.apply(this, a);
        };
        try {
          try { w.writeData(label, Buffer.from('new value')); } catch { /* the kill */ }
        } finally {
          lib[step] = real;
        }
        const fresh = open();
        expect(['old value', 'new value']).toContain(Buffer.from(fresh.readData(label)).toString());
        fresh.writeData(label, Buffer.from('after'));
        expect(Buffer.from(open().readData(label)).toString()).toBe('after');
      });
    }

    it('two writers: the one that did not see the other\'s value is refused (DATA_CHANGED)', () => {
      const one = open();
      const two = open();
      one.writeData('conf-two', Buffer.from('from one'));
      expect(Buffer.from(two.readData('conf-two')).toString()).toBe('from one');
      two.writeData('conf-two', Buffer.from('from two'));
      two.writeData('conf-two', Buffer.from('two again'));
      expect(Buffer.from(one.readData('conf-two')).toString()).toBe('two again');
      two.writeData('conf-two', Buffer.from('two thrice'));
      expect(caught(() => one.writeData('conf-two', Buffer.from('blind'))).code).toBe('DATA_CHANGED');
      expect(Buffer.from(open().readData('conf-two')).toString()).toBe('two thrice');
    });

    it('a store the token refuses fails the write with a TokenError and leaves the value as it was', (ctx) => {
      const probe = t.probeDataStores();
      const refused = (Object.keys(probe) as (keyof typeof probe)[]).find((k) => probe[k] !== true);
      if (!refused) ctx.skip('the token accepts every data store');
      const other = openToken({ ...target.options(), dataStore: refused!, requireMechanisms: false });
      opened.push(other);
      expect(caught(() => other.writeData('conf-refused', Buffer.from('x')))).toBeInstanceOf(TokenError);
      expect(caught(() => t.readData('conf-refused')).code).toBe('KEY_NOT_FOUND');
    });

    it('in the secret-key-id store, a value holder is a key that can do nothing', (ctx) => {
      if (t.dataStore !== 'secret-key-id') ctx.skip(`the token keeps ${t.dataStore} values`);
      t.writeData('conf-inert', Buffer.from('v'));
      const h = t.findObject('conf-inert', pkcs11.CKO_SECRET_KEY)!;
      const attrs = t.raw.C_GetAttributeValue(t.sessionHandle, h, [pkcs11.CKA_SIGN, pkcs11.CKA_VERIFY, pkcs11.CKA_ENCRYPT, pkcs11.CKA_DECRYPT, pkcs11.CKA_WRAP, pkcs11.CKA_UNWRAP, pkcs11.CKA_SENSITIVE, pkcs11.CKA_EXTRACTABLE].map((type) => ({ type })));
      expect(attrs.map((a) => a.value[0])).toEqual([0, 0, 0, 0, 0, 0, 1, 0]);
      expect(() => t.raw.C_SignInit(t.sessionHandle, { mechanism: pkcs11.CKM_SHA256_HMAC }, h)).toThrow(/CKR_/);
    });
  });
}
