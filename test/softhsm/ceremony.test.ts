// The key ceremony with no host copy (issue 14): the OPRF seed generated in one token and moved to
// the others under ECDH-derived wrapping keys; a fallback to the host ceremony, said and recorded,
// where a token lacks the mechanisms; the key check values prove every token holds the same secrets.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import pkcs11 from 'pkcs11js';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { provision } from '../../softhsm/provision.ts';
import { loadState, activateSoftHsmConf } from '../../softhsm/state.ts';
import { doctorFleet } from '../../softhsm/doctor.ts';
import { runCeremony, tokenCeremonyGaps } from '../../softhsm/ceremony.ts';
import { ensurePerTokenKeys, fleetAkeKcv, oprfSeedKcv } from '../../softhsm/keys.ts';
import { finalizeModule, loadModule } from '../../hsm-adapter/module.ts';
import { findSlot, openToken } from '../../hsm-adapter/pkcs11-token.ts';

let dir: string;
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'bkv-ceremony-'));
});
afterAll(() => {
  finalizeModule();
  rmSync(dir, { recursive: true, force: true });
});

/** Every template this process hands to C_CreateObject while f runs. */
async function createdObjects(f: () => Promise<unknown>): Promise<pkcs11.Template[]> {
  const proto = pkcs11.PKCS11.prototype as unknown as { C_CreateObject: (s: Buffer, t: pkcs11.Template) => Buffer };
  const real = proto.C_CreateObject;
  const seen: pkcs11.Template[] = [];
  proto.C_CreateObject = function (this: unknown, s: Buffer, t: pkcs11.Template) {
    seen.push(t);
    return real.call(this, s, t);
  };
  try {
    await f();
  } finally {
    proto.C_CreateObject = real;
  }
  return seen;
}
const secretValueImports = (ts: pkcs11.Template[]) =>
  ts.filter((t) => t.some((a) => a.type === pkcs11.CKA_CLASS && a.value === pkcs11.CKO_SECRET_KEY) && t.some((a) => a.type === pkcs11.CKA_VALUE));

describe('token to token', () => {
  it('no secret key value ever passes through the host; every token holds the same secrets; recorded and shown by doctor', async () => {
    const stateDir = join(dir, 'token');
    const made = await createdObjects(() => provision({ stateDir, replicas: 3 }));
    expect(secretValueImports(made)).toEqual([]);
    const m = JSON.parse(readFileSync(join(stateDir, 'fleet.json'), 'utf8'));
    expect(m.ceremony).toMatchObject({ kind: 'token', source: 'us-east' });
    const state = loadState(stateDir);
    const kcvs = state.replicas.map((r) => {
      const t = openToken(state.tokenOptions(r.tokenLabel));
      try {
        return [oprfSeedKcv(t), fleetAkeKcv(t)].join('/');
      } finally {
        t.close();
      }
    });
    expect(new Set(kcvs).size).toBe(1);
    expect(kcvs[0]).toBe(`${m.kcv.oprfSeed}/${m.kcv.fleetAke}`);
    const r = doctorFleet({ stateDir });
    expect(r.ok).toBe(true);
    expect(r.fleetChecks.find((c) => c.name === 'key ceremony')?.detail).toMatch(/^token to token: generated in 'us-east'.*no host copy/);
    finalizeModule();
  });

  it('the host ceremony (forced here) is what imports values, which shows the check above can see them', async () => {
    const stateDir = join(dir, 'host');
    const made = await createdObjects(() => provision({ stateDir, replicas: 2, ceremony: 'host' }));
    expect(secretValueImports(made).length).toBe(2 * 2); // oprf-seed and its SHA-256 twin, per token
    expect(JSON.parse(readFileSync(join(stateDir, 'fleet.json'), 'utf8')).ceremony).toMatchObject({ kind: 'host', reason: 'host ceremony chosen (--ceremony host)' });
    expect(doctorFleet({ stateDir }).fleetChecks.find((c) => c.name === 'key ceremony')?.detail).toMatch(/^on the host: /);
    finalizeModule();
  });
});

describe('a token without ECDH', () => {
  it('falls back to the host ceremony and says which token lacks what; --ceremony token refuses', async () => {
    // A SoftHSM2 slot that offers no CKM_ECDH1_DERIVE (slots.mechanisms is an allow-list).
    const conf = join(dir, 'noecdh.conf');
    const tokens = join(dir, 'noecdh-tokens');
    rmSync(tokens, { recursive: true, force: true });
    (await import('node:fs')).mkdirSync(tokens, { mode: 0o700 });
    writeFileSync(conf, `directories.tokendir = ${tokens}\nobjectstore.backend = file\nlog.level = ERROR\nslots.mechanisms = CKM_AES_GCM,CKM_AES_CBC_PAD,CKM_SHA256_HMAC,CKM_SHA512_HMAC,CKM_ECDSA,CKM_EC_KEY_PAIR_GEN,CKM_AES_KEY_GEN,CKM_GENERIC_SECRET_KEY_GEN,CKM_AES_KEY_WRAP\n`);
    activateSoftHsmConf({ confPath: conf });
    const lib = loadModule('/usr/lib/softhsm/libsofthsm2.so').lib;
    const free = lib.C_GetSlotList(false).find((s) => !(lib.C_GetTokenInfo(s).flags & pkcs11.CKF_TOKEN_INITIALIZED))!;
    lib.C_InitToken(free, 'so-pin-1234', 'no-ecdh'.padEnd(32));
    const { slot } = findSlot(lib, { token: 'no-ecdh' });
    const s = lib.C_OpenSession(slot, pkcs11.CKF_SERIAL_SESSION | pkcs11.CKF_RW_SESSION);
    lib.C_Login(s, pkcs11.CKU_SO, 'so-pin-1234');
    lib.C_InitPIN(s, 'user-pin-1234');
    lib.C_Logout(s);
    lib.C_CloseSession(s);
    const t = openToken({ modulePath: '/usr/lib/softhsm/libsofthsm2.so', token: 'no-ecdh', pin: 'user-pin-1234' });
    try {
      ensurePerTokenKeys(t);
      expect(tokenCeremonyGaps([t])).toEqual(["token 'no-ecdh' lacks CKM_ECDH1_DERIVE"]);
      expect(() => runCeremony([t], [{ oprfSeed: false, fleetAke: false }], () => {}, 'token')).toThrow(/lacks CKM_ECDH1_DERIVE/);
      const said: string[] = [];
      const rec = runCeremony([t], [{ oprfSeed: false, fleetAke: false }], (a) => said.push(a), 'auto');
      expect(rec).toEqual({ kind: 'host', reason: "host ceremony: token 'no-ecdh' lacks CKM_ECDH1_DERIVE" });
      expect(said.join('\n')).toContain('lacks CKM_ECDH1_DERIVE');
      expect(oprfSeedKcv(t)).toMatch(/^[0-9a-f]{16}$/);
      expect(fleetAkeKcv(t)).toMatch(/^[0-9a-f]{16}$/);
    } finally {
      t.close();
      finalizeModule();
    }
  });
});
