// Call sequences that work on more than one module (issue 14, item 4), run on SoftHSM2 and on NSS
// softoken side by side in one process: empty inputs through the one-part calls, and a fresh session
// after a failed decrypt.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { provisionTestFleet, type TestFleet } from '../helpers/fleet.ts';
import { makeNssTokens, nssMissing, type NssTokens } from '../helpers/nss.ts';
import { KeyLabels, type SealScheme } from '../../hsm-adapter/token.ts';
import { openToken, type Pkcs11Token } from '../../hsm-adapter/pkcs11-token.ts';
import { ensurePerTokenKeys } from '../../softhsm/keys.ts';

let fleet: TestFleet;
let nss: NssTokens | undefined;
const opened: Pkcs11Token[] = [];
beforeAll(async () => {
  fleet = await provisionTestFleet({ replicas: 1 });
  if (!nssMissing) {
    nss = makeNssTokens(['nss-portable']);
    const t = openToken({ modulePath: nss.modulePath, moduleArgs: nss.moduleArgs, token: 'nss-portable', pin: nss.pins['nss-portable'] });
    ensurePerTokenKeys(t);
    t.close();
  }
});
afterAll(async () => {
  for (const t of opened) t.close();
  await fleet?.cleanup();
  nss?.cleanup();
});

const modules: { name: string; skip?: string; open(scheme: SealScheme): Pkcs11Token }[] = [
  { name: 'SoftHSM2', open: (sealScheme) => fleet.openToken('us-east', { sealScheme }) },
  {
    name: 'NSS softoken',
    skip: nssMissing,
    open: (sealScheme) => openToken({ modulePath: nss!.modulePath, moduleArgs: nss!.moduleArgs, token: 'nss-portable', pin: nss!.pins['nss-portable'], sealScheme }),
  },
];
const aad = Buffer.from('bkv portable');

for (const m of modules) {
  describe.skipIf(m.skip)(`${m.name}${m.skip ? ` (skipped: ${m.skip})` : ''}`, () => {
    for (const scheme of ['aes-256-gcm', 'aes-256-cbc-hmac-sha256'] as const) {
      it(`${scheme}: an empty plaintext seals and opens, and the session stays usable`, () => {
        const t = m.open(scheme);
        opened.push(t);
        const sealed = t.seal(KeyLabels.recordKey, new Uint8Array(0), aad);
        expect(sealed.length).toBe(scheme === 'aes-256-gcm' ? 12 + 16 : 16 + 16 + 32);
        expect(t.open(KeyLabels.recordKey, sealed, aad).length).toBe(0);
        const again = t.seal(KeyLabels.recordKey, Buffer.from('next'), aad);
        expect(Buffer.from(t.open(KeyLabels.recordKey, again, aad)).toString()).toBe('next');
      });
    }

    it('HMAC of empty data is the same as HMAC over a one-part call of the same key', () => {
      const t = m.open('aes-256-gcm');
      opened.push(t);
      const a = t.hmac(KeyLabels.recordMacKey, 'sha256', new Uint8Array(0));
      const b = t.hmac(KeyLabels.recordMacKey, 'sha256', Buffer.alloc(0));
      expect(a.length).toBe(32);
      expect(Buffer.from(a).equals(Buffer.from(b))).toBe(true);
      expect(Buffer.from(a).equals(Buffer.from(t.hmac(KeyLabels.recordMacKey, 'sha256', Buffer.from([0]))))).toBe(false);
    });

    it('a failed decrypt gives the next call a fresh session, and that call works', () => {
      const t = m.open('aes-256-gcm');
      opened.push(t);
      const sealed = Uint8Array.from(t.seal(KeyLabels.recordKey, Buffer.from('tamper me'), aad));
      const before = t.sessionHandle;
      sealed[sealed.length - 1] ^= 1;
      expect(() => t.open(KeyLabels.recordKey, sealed, aad)).toThrow(expect.objectContaining({ code: 'SEAL_OPEN_FAILED' }));
      sealed[sealed.length - 1] ^= 1;
      expect(Buffer.from(t.open(KeyLabels.recordKey, sealed, aad)).toString()).toBe('tamper me');
      expect(t.sessionHandle.equals(before)).toBe(false);
    });
  });
}
