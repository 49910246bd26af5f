import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { formatKey64, formatKey64Lines, generateBackupKey, parseKey64 } from '../../client/key64.ts';
import { Key64Error } from '../../client/errors.ts';

const K = Uint8Array.from({ length: 32 }, (_, i) => (i * 37 + 11) & 0xff);
const KHEX = Buffer.from(K).toString('hex');

function parseError(text: string): Key64Error {
  try {
    parseKey64(text);
  } catch (e) {
    expect(e).toBeInstanceOf(Key64Error);
    return e as Key64Error;
  }
  throw new Error('parsed but should not have');
}

describe('64-digit key', () => {
  it('generates 32 random bytes, different each time', () => {
    const a = generateBackupKey();
    const b = generateBackupKey();
    expect(a.length).toBe(32);
    expect(Buffer.from(a).equals(Buffer.from(b))).toBe(false);
  });

  it('formats as 16 groups of 4 lowercase hex digits, and 4 lines of 4 groups', () => {
    const s = formatKey64(K);
    expect(s).toMatch(/^[0-9a-f]{4}( [0-9a-f]{4}){15}$/);
    expect(s.replaceAll(' ', '')).toBe(KHEX);
    expect(formatKey64Lines(K)).toEqual([0, 1, 2, 3].map((i) => s.split(' ').slice(i * 4, i * 4 + 4).join(' ')));
  });

  it('round-trips any key through format and parse', () => {
    fc.assert(fc.property(fc.uint8Array({ minLength: 32, maxLength: 32 }), (k) => {
      expect(Buffer.from(parseKey64(formatKey64(k))).equals(Buffer.from(k))).toBe(true);
    }));
  });

  it('tolerates spaces, dashes, tabs, line breaks and upper case', () => {
    const variants = [
      KHEX,
      KHEX.toUpperCase(),
      KHEX.match(/.{4}/g)!.join('-'),
      `  ${KHEX.match(/.{4}/g)!.join(' ')}\n`,
      KHEX.match(/.{16}/g)!.join('\r\n'),
      KHEX.match(/.{2}/g)!.join('\t- '),
    ];
    for (const v of variants) expect(Buffer.from(parseKey64(v)).toString('hex')).toBe(KHEX);
  });

  it('says which character is wrong and where (1-based, as typed)', () => {
    const typo = `${KHEX.slice(0, 16)}g${KHEX.slice(17)}`;
    expect(parseError(typo).message).toBe("character 'g' at position 17 is not a hex digit");
    const grouped = formatKey64(K).replace(/^(\S{4}) /, '$1_'); // underscore at position 5
    expect(parseError(grouped).message).toBe("character '_' at position 5 is not a hex digit");
    expect(parseError(`${KHEX.slice(0, 10)}\u00e9${KHEX.slice(11)}`).message).toBe('character U+00E9 at position 11 is not a hex digit');
    expect(parseError(`0x${KHEX}`).message).toContain("'x' at position 2");
  });

  it('counts digits when there are too few or too many', () => {
    expect(parseError(KHEX.slice(1)).message).toBe('got 63 digits, need 64');
    expect(parseError(`${KHEX}a`).message).toBe('got 65 digits, need 64');
    expect(parseError(formatKey64(K).slice(0, -5)).message).toBe('got 60 digits, need 64');
    expect(parseError('').message).toContain('empty');
    expect(parseError(' - \n').message).toContain('empty');
  });

  it('never puts the key, or a long piece of it, into an error', () => {
    const cases = [`${KHEX}0`, KHEX.slice(2), `${KHEX.slice(0, 40)}z${KHEX.slice(41)}`, `${KHEX.slice(0, 63)}\u0000`];
    for (const c of cases) {
      const e = parseError(c);
      expect(e.code).toBe('BAD_KEY64');
      for (let i = 0; i + 8 <= KHEX.length; i++) expect(e.message.toLowerCase()).not.toContain(KHEX.slice(i, i + 8));
    }
  });
});
