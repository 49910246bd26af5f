// Where the anchor, vote and sealed AKE seed live (issue 14, item 3): chosen from what the token
// accepts, refused where nothing safe is left, and said by doctor with its cost.
import { afterAll, describe, expect, it } from 'vitest';
import { chooseDataStore, DATA_STORE_COSTS } from '../../softhsm/keys.ts';
import { doctorToken } from '../../softhsm/doctor.ts';
import { finalizeModule, loadModule } from '../../hsm-adapter/module.ts';
import { makeNssTokens, nssMissing, type NssTokens } from '../helpers/nss.ts';
import { provisionTestFleet } from '../helpers/fleet.ts';
import pkcs11 from 'pkcs11js';

let nss: NssTokens | undefined;
afterAll(() => {
  finalizeModule();
  nss?.cleanup();
});

describe('chooseDataStore', () => {
  it('prefers CKO_DATA, falls back to inert keys, and refuses with the reasons when neither is allowed', () => {
    expect(chooseDataStore({ 'data-object': true, 'secret-key-id': true }).store).toBe('data-object');
    const fb = chooseDataStore({ 'data-object': 'CKR_ATTRIBUTE_VALUE_INVALID', 'secret-key-id': true });
    expect(fb).toMatchObject({ store: 'secret-key-id', cost: DATA_STORE_COSTS['secret-key-id'] });
    expect(fb.reason).toContain('CKR_ATTRIBUTE_VALUE_INVALID');
    const none = chooseDataStore({ 'data-object': 'CKR_ATTRIBUTE_VALUE_INVALID', 'secret-key-id': 'lacks CKM_GENERIC_SECRET_KEY_GEN' });
    expect(none.store).toBeUndefined();
    expect(none.reason).toMatch(/CKR_ATTRIBUTE_VALUE_INVALID.*lacks CKM_GENERIC_SECRET_KEY_GEN.*cannot run/);
  });
});

describe.skipIf(nssMissing)(`doctor on NSS softoken${nssMissing ? ` (skipped: ${nssMissing})` : ''}`, () => {
  it('probes CKO_DATA, says it chose the inert-key store and what it costs; not GREEN by accident', () => {
    nss = makeNssTokens(['nss-doctor']);
    const r = doctorToken({ modulePath: nss.modulePath, moduleArgs: nss.moduleArgs, token: 'nss-doctor', pin: nss.pins['nss-doctor'] });
    const t = r.tokens[0];
    expect(t.opened).toBe(true);
    expect(t.dataStore?.store).toBe('secret-key-id');
    expect(t.dataStore?.probe['data-object']).toBe('CKR_ATTRIBUTE_VALUE_INVALID');
    expect(t.dataStore?.cost).toMatch(/CKA_ID/);
    expect(t.checks.find((c) => c.name === 'data store')).toMatchObject({ status: 'pass' });
    // Nothing of bkv's is in the fresh token yet: green, with the objects listed as missing.
    expect(t.checks.filter((c) => c.status === 'missing').map((c) => c.name)).toContain('fleet AKE seed');
    expect(r.ok).toBe(true);
  });
});

describe('a token that refuses both stores', () => {
  it('doctor is red and says there is no safe place for the anchor and the vote', async () => {
    const fleet = await provisionTestFleet({ replicas: 1 });
    // SoftHSM2 accepts both; make this real token refuse the probes as such a token would.
    // The loaded module's own binding (pkcs11js puts some methods on the instance, not the prototype).
    const proto = loadModule(fleet.state.modulePath).lib as unknown as Record<'C_CreateObject' | 'C_GenerateKey', (...a: unknown[]) => unknown>;
    const real = { C_CreateObject: proto.C_CreateObject, C_GenerateKey: proto.C_GenerateKey };
    const refuse = (name: 'C_CreateObject' | 'C_GenerateKey', ckr: string) => {
      proto[name] = function (this: unknown, ...a: unknown[]) {
        const tpl = a[a.length - 1] as pkcs11.Template;
        if (tpl.some((x) => x.type === pkcs11.CKA_LABEL && x.value === 'bkv-probe')) throw new Error(ckr);
        return real[name].apply(this, a);
      };
    };
    refuse('C_CreateObject', 'CKR_ATTRIBUTE_VALUE_INVALID:19');
    refuse('C_GenerateKey', 'CKR_TEMPLATE_INCONSISTENT:209');
    try {
      const r = doctorToken({ modulePath: fleet.state.modulePath, token: 'us-east', pin: fleet.state.pinFor('us-east') });
      expect(r.tokens[0]!.dataStore).toMatchObject({ probe: { 'data-object': 'CKR_ATTRIBUTE_VALUE_INVALID' } });
      expect(r.tokens[0]!.dataStore?.store).toBeUndefined();
      expect(r.ok).toBe(false);
      expect(r.problems.join('\n')).toMatch(/data store: the token refuses CKO_DATA token objects \(CKR_ATTRIBUTE_VALUE_INVALID\) and inert secret keys \(CKR_TEMPLATE_INCONSISTENT\).*cannot run on it/);
    } finally {
      delete (proto as Partial<typeof proto>).C_CreateObject;
      delete (proto as Partial<typeof proto>).C_GenerateKey;
      Object.assign(proto, real);
      await fleet.cleanup();
    }
  });
});
