// Mechanism probing against real SoftHSM2 tokens with mechanisms switched off in softhsm2.conf
// (slots.mechanisms lists the ones to offer), the way a token that lacks them looks to bkv.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readFileSync, writeFileSync } from 'node:fs';
import { provisionTestFleet, type TestFleet } from '../helpers/fleet.ts';
import { KeyLabels } from '../../hsm-adapter/token.ts';
import { openToken } from '../../hsm-adapter/pkcs11-token.ts';
import { finalizeModule } from '../../hsm-adapter/module.ts';
import { TokenError } from '../../hsm-adapter/errors.ts';
import { doctorFleet } from '../../softhsm/doctor.ts';

let fleet: TestFleet;
let original: string;
// What bkv uses, and nothing else: shows the adapter runs on a minimal token. (SoftHSM2 truncates
// long conf lines, so the full list of 70 names would not fit anyway.)
const all = ['CKM_AES_GCM', 'CKM_AES_CBC_PAD', 'CKM_SHA256_HMAC', 'CKM_SHA512_HMAC', 'CKM_ECDSA', 'CKM_EC_KEY_PAIR_GEN', 'CKM_AES_KEY_GEN', 'CKM_GENERIC_SECRET_KEY_GEN'];
beforeAll(async () => {
  fleet = await provisionTestFleet({ replicas: 1 });
  original = readFileSync(fleet.state.confPath!, 'utf8');
});
afterAll(async () => {
  await fleet?.cleanup();
});

/** Restart the module with these mechanisms disabled (SoftHSM2 reads its conf at C_Initialize). */
function withDisabled(mechs: string[]): void {
  finalizeModule();
  // SoftHSM2 2.6 takes an allow-list, not a deny-list.
  const allow = all.filter((m) => !mechs.includes(m));
  writeFileSync(fleet.state.confPath!, original.replace('slots.mechanisms = ALL', `slots.mechanisms = ${allow.join(',')}`));
}

const open = (sealScheme?: 'auto' | 'aes-256-gcm' | 'aes-256-cbc-hmac-sha256') =>
  openToken({ modulePath: fleet.state.modulePath, token: 'us-east', pin: fleet.state.pinFor('us-east'), sealScheme });

describe('the adapter adapts to the token\'s mechanisms', () => {
  it('without CKM_AES_GCM it falls back to AES-CBC-PAD + HMAC-SHA-256, and that round-trips', () => {
    withDisabled(['CKM_AES_GCM']);
    const t = open();
    try {
      expect(t.describe().mechanisms).toEqual(all.filter((m) => m !== 'CKM_AES_GCM').sort());
      expect(t.describe().mechanisms).not.toContain('CKM_AES_GCM');
      expect(t.sealScheme).toBe('aes-256-cbc-hmac-sha256');
      const aad = Buffer.from('aad');
      const sealed = t.seal(KeyLabels.recordKey, Buffer.from('no gcm here'), aad);
      expect(Buffer.from(t.open(KeyLabels.recordKey, sealed, aad)).toString()).toBe('no gcm here');
    } finally {
      t.close();
    }
    // Forcing GCM on such a token names what is missing.
    const e = (() => {
      try {
        open('aes-256-gcm');
      } catch (err) {
        return err as TokenError;
      }
    })();
    expect(e).toBeInstanceOf(TokenError);
    expect(e!.code).toBe('MECHANISM_MISSING');
    expect(e!.message).toContain('CKM_AES_GCM');
  });

  it('doctor reports the fallback it chose and why', () => {
    withDisabled(['CKM_AES_GCM']);
    // The fleet AKE blob was sealed with GCM, so the doctor cannot open it on this crippled token:
    // it must say so rather than pass.
    const r = doctorFleet({ stateDir: fleet.stateDir, sealScheme: 'auto' });
    const t = r.tokens[0];
    expect(t.sealScheme).toBe('aes-256-cbc-hmac-sha256');
    expect(t.sealSchemeReason).toContain('lacks CKM_AES_GCM');
    expect(t.checks.find((c) => c.name === 'seal/open')?.status).toBe('pass');
    expect(r.ok).toBe(false);
    expect(r.problems.join('\n')).toContain('fleet AKE seed');
  });

  it('a token lacking a mechanism the vault strictly needs is refused, naming it', () => {
    withDisabled(['CKM_SHA512_HMAC']);
    let err: unknown;
    try {
      open();
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(TokenError);
    expect((err as TokenError).code).toBe('MECHANISM_MISSING');
    expect((err as TokenError).message).toContain('CKM_SHA512_HMAC');
    // With neither GCM nor CBC-PAD, both seal options are named.
    withDisabled(['CKM_AES_GCM', 'CKM_AES_CBC_PAD']);
    try {
      open();
      throw new Error('opened');
    } catch (e) {
      expect((e as TokenError).code).toBe('MECHANISM_MISSING');
      expect((e as TokenError).message).toMatch(/CKM_AES_GCM.*CKM_AES_CBC_PAD/);
    }
  });

  it('without ECDSA a fleet replica is refused, naming it, while a single vault (signs: false) runs', () => {
    withDisabled(['CKM_ECDSA']);
    let err: unknown;
    try {
      open();
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(TokenError);
    expect((err as TokenError).code).toBe('MECHANISM_MISSING');
    expect((err as TokenError).message).toMatch(/CKM_ECDSA_SHA256 or CKM_ECDSA/);
    const t = openToken({ modulePath: fleet.state.modulePath, token: 'us-east', pin: fleet.state.pinFor('us-east'), signs: false });
    try {
      expect(t.ecdsaMechanism).toBeUndefined();
      const aad = Buffer.from('aad');
      expect(Buffer.from(t.open(KeyLabels.recordKey, t.seal(KeyLabels.recordKey, Buffer.from('single'), aad), aad)).toString()).toBe('single');
      expect(t.hmac(KeyLabels.oprfSeed, 'sha512', Buffer.from('x')).length).toBe(64);
      expect(() => t.sign(KeyLabels.replicaIdentity, Buffer.from('x'))).toThrow(expect.objectContaining({ code: 'MECHANISM_MISSING' }));
    } finally {
      t.close();
    }
  });

  it('with every mechanism back, AES-GCM is chosen again', () => {
    withDisabled(['CKM_SHA512_HMAC']);
    finalizeModule();
    writeFileSync(fleet.state.confPath!, original);
    const t = open();
    expect(t.sealScheme).toBe('aes-256-gcm');
    expect(t.describe().mechanisms).toContain('CKM_SHA512_HMAC');
    t.close();
  });
});
