// Where the anchor, vote and sealed AKE seed live (issue 14, item 3): chosen from what the token
// accepts, refused where nothing safe is left, and said by doctor with its cost.
import { afterAll, describe, expect, it } from 'vitest';
import { chooseDataStore, DATA_STORE_COSTS } from '../../softhsm/keys.ts';
import { doctorToken } from '../../softhsm/doctor.ts';
import { finalizeModule } from '../../hsm-adapter/module.ts';
import { makeNssTokens, nssMissing, type NssTokens } from '../helpers/nss.ts';

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
