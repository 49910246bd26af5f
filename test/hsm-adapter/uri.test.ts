import { describe, expect, it } from 'vitest';
import { parseTokenSpec } from '../../hsm-adapter/uri.ts';
import { TokenError } from '../../hsm-adapter/errors.ts';

describe('PKCS#11 URIs (RFC 7512)', () => {
  it('takes a bare label as the token label', () => {
    expect(parseTokenSpec('us-east')).toEqual({ token: 'us-east' });
  });

  it('parses path and query attributes with percent-decoding', () => {
    expect(parseTokenSpec('pkcs11:token=us%20east;object=record-key;serial=ab12?module-path=/opt/x.so&pin-source=/run/pin')).toEqual({
      token: 'us east',
      object: 'record-key',
      serial: 'ab12',
      modulePath: '/opt/x.so',
      pinSource: '/run/pin',
    });
    expect(parseTokenSpec('pkcs11:slot-id=3;id=%01%02;library-manufacturer=X')).toEqual({ slotId: '3' });
  });

  it('rejects what it cannot honour, without echoing a PIN', () => {
    const bad = (s: string, re: RegExp) => {
      let err: unknown;
      try {
        parseTokenSpec(s);
      } catch (e) {
        err = e;
      }
      expect(err).toBeInstanceOf(TokenError);
      expect((err as TokenError).code).toBe('BAD_TOKEN_URI');
      expect((err as TokenError).message).toMatch(re);
      return err as TokenError;
    };
    bad('pkcs11:object=record-key', /names no token/);
    bad('pkcs11:token=a;token=b', /given twice/);
    bad('pkcs11:tokn=a', /unknown attribute 'tokn'/);
    bad('pkcs11:token', /has no value/);
    bad('pkcs11:token=%zz', /percent-encoding/);
    expect(bad('pkcs11:token=a?pin-value=s3cret-991', /pin-value/).message).not.toContain('s3cret-991');
    bad('', /empty/);
  });
});
