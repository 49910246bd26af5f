// Module arguments (issue 14, items 1 and 5) against NSS's softoken, a module that refuses
// C_Initialize without them: the failure names the fix, the arguments travel in fleet.json to every
// command that opens a token, and doctor takes the module a URI names.
import { afterAll, describe, expect, it } from 'vitest';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { finalizeModule, loadModule } from '../../hsm-adapter/module.ts';
import { openToken } from '../../hsm-adapter/pkcs11-token.ts';
import { TokenError } from '../../hsm-adapter/errors.ts';
import { loadState, type FleetManifest } from '../../softhsm/state.ts';
import { doctorToken, tokenModulePath } from '../../softhsm/doctor.ts';
import { makeNssTokens, nssMissing, NSS_MODULE, type NssTokens } from '../helpers/nss.ts';

let nss: NssTokens | undefined;
afterAll(() => {
  finalizeModule();
  nss?.cleanup();
});

function caught(f: () => unknown): TokenError {
  try {
    f();
  } catch (e) {
    expect(e).toBeInstanceOf(TokenError);
    return e as TokenError;
  }
  throw new Error('expected a TokenError');
}

describe.skipIf(nssMissing)(`module arguments on NSS softoken${nssMissing ? ` (skipped: ${nssMissing})` : ''}`, () => {
  it('C_Initialize without arguments fails with MODULE_ARGS_BAD and says how to give them', () => {
    const e = caught(() => loadModule(NSS_MODULE));
    expect(e.code).toBe('MODULE_ARGS_BAD');
    expect(e.ckr).toBe('CKR_ARGUMENTS_BAD');
    expect(e.message).toMatch(/--module-args/);
    expect(e.message).toMatch(/fleet\.json/);
  });

  it('with arguments the tokens open by label; other arguments for the loaded module are refused', () => {
    nss = makeNssTokens(['nss-one', 'nss-two']);
    const t = openToken({ modulePath: nss.modulePath, moduleArgs: nss.moduleArgs, token: 'nss-two', pin: nss.pins['nss-two'] });
    try {
      expect(t.label).toBe('nss-two');
      expect(t.describe().manufacturer).toMatch(/Mozilla/);
    } finally {
      t.close();
    }
    const e = caught(() => loadModule(NSS_MODULE, "configdir='sql:/nowhere'"));
    expect(e.code).toBe('MODULE_ARGS_CONFLICT');
    // The same arguments, or none (a caller that only wants the loaded module), are fine.
    expect(loadModule(NSS_MODULE, nss.moduleArgs).args).toBe(nss.moduleArgs);
    expect(loadModule(NSS_MODULE).args).toBe(nss.moduleArgs);
  });

  it("doctor --token takes the URI's module-path (and refuses a --module that contradicts it)", () => {
    const uri = `pkcs11:token=nss-one?module-path=${NSS_MODULE}`;
    const r = doctorToken({ token: uri, pin: nss!.pins['nss-one'], moduleArgs: nss!.moduleArgs });
    expect(r.modulePath).toBe(NSS_MODULE);
    expect(r.library?.manufacturer).toMatch(/Mozilla/);
    expect(r.tokens[0].opened).toBe(true);
    expect(r.tokens[0].tokenLabel).toBe('nss-one');
    const e = caught(() => tokenModulePath(uri, '/usr/lib/softhsm/libsofthsm2.so'));
    expect(e.code).toBe('BAD_TOKEN_URI');
    expect(tokenModulePath(uri, NSS_MODULE)).toBe(NSS_MODULE);
    expect(tokenModulePath('pkcs11:token=x', '/m.so')).toBe('/m.so');
  });
});

describe('fleet.json carries the module arguments', () => {
  const manifest = (extra: Partial<FleetManifest>): FleetManifest => ({
    version: 1, createdAt: '2026-01-01T00:00:00.000Z', modulePath: NSS_MODULE, conf: 'softhsm2.conf',
    replicas: [{ name: 'us-east', tokenLabel: 'us-east', serial: '0', sealScheme: 'aes-256-gcm', identityFingerprint: '' }],
    kcv: { oprfSeed: '00', fleetAke: '00' }, ...extra,
  });
  const withState = (m: FleetManifest, f: (dir: string) => void) => {
    const dir = mkdtempSync(join(tmpdir(), 'bkv-modargs-'));
    try {
      writeFileSync(join(dir, 'fleet.json'), JSON.stringify(m));
      mkdirSync(join(dir, 'tokens'));
      writeFileSync(join(dir, 'softhsm2.conf'), `directories.tokendir = ${join(dir, 'tokens')}\n`);
      f(dir);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  };

  it('tokenOptions hands them to every opener', () => {
    withState(manifest({ moduleArgs: "configdir='sql:/x'" }), (dir) => {
      process.env.BKV_PIN = 'test-pin';
      try {
        const o = loadState(dir).tokenOptions('us-east');
        expect(o).toEqual({ modulePath: NSS_MODULE, moduleArgs: "configdir='sql:/x'", token: 'us-east', pin: 'test-pin', sealScheme: 'aes-256-gcm' });
      } finally {
        delete process.env.BKV_PIN;
      }
    });
  });

  it('a manifest without them (SoftHSM2, older bkv) opens with none', () => {
    withState(manifest({}), (dir) => {
      process.env.BKV_PIN = 'test-pin';
      try {
        const s = loadState(dir);
        expect(s.moduleArgs).toBeUndefined();
        expect('moduleArgs' in s.tokenOptions('us-east')).toBe(false);
      } finally {
        delete process.env.BKV_PIN;
      }
    });
  });

  it('a manifest whose moduleArgs is not a string is refused as corrupt', () => {
    withState(manifest({ moduleArgs: 7 as unknown as string }), (dir) => {
      expect(() => loadState(dir)).toThrow(expect.objectContaining({ code: 'STATE_CORRUPT' }));
    });
  });
});
