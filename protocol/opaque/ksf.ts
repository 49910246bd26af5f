// Key stretching (RFC 9807 §4.4 "Key Stretching Function"): runs on the device over the OPRF output.
// The vault never runs it, so its cost is paid per password attempt by whoever guesses offline.
import { scryptSync } from 'node:crypto';
import { argon2id } from '@noble/hashes/argon2.js';
import { OpaqueError } from './errors.ts';

export interface Ksf {
  /** Stable name, e.g. for a record or a report: 'identity', 'argon2id-m65536-t3-p4', 'scrypt-N32768-r8-p1'. */
  readonly name: string;
  /** Stretch(msg) with output length Nh. */
  stretch(msg: Uint8Array, Nh: number): Uint8Array;
}

/** Argon2id parameters: m in KiB, t passes, p lanes. Salt is zeroes(16), version 0x13, as RFC 9807 fixes. */
export interface Argon2idParams {
  m: number;
  t: number;
  p: number;
}

/** RFC 9106 §4 first recommended option, the one RFC 9807 names: 2 GiB, t = 1, p = 4. */
export const ARGON2ID_RFC9106_FIRST: Readonly<Argon2idParams> = Object.freeze({ m: 2 ** 21, t: 1, p: 4 });
/** RFC 9106 §4 second recommended option ("if much less memory is available"): 64 MiB, t = 3, p = 4. */
export const ARGON2ID_RFC9106_SECOND: Readonly<Argon2idParams> = Object.freeze({ m: 2 ** 16, t: 3, p: 4 });

export interface ScryptParams {
  N: number;
  r: number;
  p: number;
}
/** The scrypt parameters RFC 9807 recommends: N = 32768, r = 8, p = 1, salt zeroes(16). */
export const SCRYPT_RFC9807: Readonly<ScryptParams> = Object.freeze({ N: 32768, r: 8, p: 1 });

const ZERO_SALT = new Uint8Array(16);

/** Stretch(msg) = msg: only for the RFC test vectors and cheap tests. Never for real passwords. */
export const identityKsf: Ksf = Object.freeze({
  name: 'identity',
  stretch: (msg: Uint8Array) => msg,
});

export function argon2idKsf(params: Argon2idParams = ARGON2ID_RFC9106_SECOND): Ksf {
  const { m, t, p } = params;
  if (![m, t, p].every((x) => Number.isSafeInteger(x) && x > 0) || m < 8 * p) {
    throw new OpaqueError('BAD_CONFIG', 'argon2id: m, t, p must be positive integers with m >= 8p');
  }
  return Object.freeze({
    name: `argon2id-m${m}-t${t}-p${p}`,
    // maxmem: noble's default cap is 1 GiB, below RFC 9106's first set (2 GiB).
    stretch: (msg: Uint8Array, Nh: number) => argon2id(msg, ZERO_SALT, { m, t, p, dkLen: Nh, version: 0x13, maxmem: m * 1024 + (1 << 20) }),
  });
}

export function scryptKsf(params: ScryptParams = SCRYPT_RFC9807): Ksf {
  const { N, r, p } = params;
  if (![N, r, p].every((x) => Number.isSafeInteger(x) && x > 0) || (N & (N - 1)) !== 0 || N < 2) {
    throw new OpaqueError('BAD_CONFIG', 'scrypt: N must be a power of two > 1, r and p positive integers');
  }
  return Object.freeze({
    name: `scrypt-N${N}-r${r}-p${p}`,
    stretch: (msg: Uint8Array, Nh: number) => {
      const out = scryptSync(msg, ZERO_SALT, Nh, { N, r, p, maxmem: 256 * N * r * p + (1 << 20) });
      return new Uint8Array(out.buffer, out.byteOffset, out.length);
    },
  });
}

/**
 * The default KSF: Argon2id with RFC 9106's second recommended set (64 MiB, t = 3, p = 4).
 * RFC 9807 names the first set (2 GiB, t = 1); in pure JS on a phone-class device that is tens of
 * seconds and 2 GiB of RAM per attempt, so it stays selectable (ARGON2ID_RFC9106_FIRST) but is not
 * the default. See docs/opaque.md.
 */
export function defaultKsf(): Ksf {
  return argon2idKsf(ARGON2ID_RFC9106_SECOND);
}

export type KsfSpec = 'identity' | 'argon2id' | 'argon2id-rfc9106-first' | 'scrypt';

/** Name -> KSF for flags and config files. */
export function ksfFromName(name: KsfSpec): Ksf {
  switch (name) {
    case 'identity':
      return identityKsf;
    case 'argon2id':
      return argon2idKsf(ARGON2ID_RFC9106_SECOND);
    case 'argon2id-rfc9106-first':
      return argon2idKsf(ARGON2ID_RFC9106_FIRST);
    case 'scrypt':
      return scryptKsf(SCRYPT_RFC9807);
    default:
      throw new OpaqueError('BAD_CONFIG', `unknown KSF ${JSON.stringify(name)}`);
  }
}
