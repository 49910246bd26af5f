// Hash, HMAC and HKDF (RFC 5869) over node:crypto, plus expand_message_xmd (RFC 9380 §5.3.1).
// node:crypto rather than @noble/hashes because these run ~15 times per KE2 on the vault's hot path.
import { createHash, createHmac } from 'node:crypto';
import type { HashId } from './suite.ts';

export const EMPTY = new Uint8Array(0);
const enc = new TextEncoder();
export const utf8 = (s: string): Uint8Array => enc.encode(s);

export function i2osp(n: number, len: 1 | 2): Uint8Array {
  return len === 1 ? Uint8Array.of(n & 0xff) : Uint8Array.of((n >>> 8) & 0xff, n & 0xff);
}

export function concat(...parts: Uint8Array[]): Uint8Array {
  let n = 0;
  for (const p of parts) n += p.length;
  const out = new Uint8Array(n);
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}

/** A Buffer from node:crypto seen as a plain Uint8Array (same memory, no copy). */
function u8(b: Buffer): Uint8Array {
  return new Uint8Array(b.buffer, b.byteOffset, b.length);
}

export function hash(alg: HashId, ...parts: Uint8Array[]): Uint8Array {
  const h = createHash(alg);
  for (const p of parts) h.update(p);
  return u8(h.digest());
}

export function hmac(alg: HashId, key: Uint8Array, ...parts: Uint8Array[]): Uint8Array {
  const h = createHmac(alg, key);
  for (const p of parts) h.update(p);
  return u8(h.digest());
}

export const hashLen = (alg: HashId): number => (alg === 'sha512' ? 64 : 32);

/** HKDF-Extract(salt, ikm); an empty salt is HMAC's all-zero key, as RFC 5869 says. */
export function hkdfExtract(alg: HashId, salt: Uint8Array, ikm: Uint8Array): Uint8Array {
  return hmac(alg, salt, ikm);
}

const ONE = Uint8Array.of(1);

/** HKDF-Expand(prk, info, L). */
export function hkdfExpand(alg: HashId, prk: Uint8Array, info: Uint8Array, L: number): Uint8Array {
  const n = hashLen(alg);
  if (L <= n) return hmac(alg, prk, info, ONE).subarray(0, L);
  const out = new Uint8Array(L);
  let t: Uint8Array = EMPTY;
  for (let i = 1, o = 0; o < L; i++) {
    t = hmac(alg, prk, t, info, Uint8Array.of(i));
    out.set(t.subarray(0, Math.min(n, L - o)), o);
    o += n;
  }
  return out;
}

const ZPAD_512 = new Uint8Array(128);
const ZPAD_256 = new Uint8Array(64);
// DSTs are long-lived constants: cache DST' = DST || len(DST) per DST object.
const dstPrimes = new WeakMap<Uint8Array, Uint8Array>();
function dstPrimeOf(dst: Uint8Array): Uint8Array {
  let d = dstPrimes.get(dst);
  if (!d) {
    d = concat(dst, i2osp(dst.length, 1));
    dstPrimes.set(dst, d);
  }
  return d;
}

/** expand_message_xmd(msg, DST, len) of RFC 9380; DST must be at most 255 bytes (ours are). */
export function expandMessageXmd(alg: HashId, msg: Uint8Array, dst: Uint8Array, len: number): Uint8Array {
  const b = hashLen(alg);
  const ell = Math.ceil(len / b);
  if (ell > 255 || dst.length > 255) throw new RangeError('expand_message_xmd: length out of range');
  const dstPrime = dstPrimeOf(dst);
  const b0 = u8(createHash(alg).update(alg === 'sha512' ? ZPAD_512 : ZPAD_256).update(msg).update(i2osp(len, 2)).update(Uint8Array.of(0)).update(dstPrime).digest());
  const out = new Uint8Array(ell * b);
  let prev = u8(createHash(alg).update(b0).update(Uint8Array.of(1)).update(dstPrime).digest());
  out.set(prev, 0);
  for (let i = 2; i <= ell; i++) {
    const x = new Uint8Array(b);
    for (let j = 0; j < b; j++) x[j] = b0[j]! ^ prev[j]!;
    prev = u8(createHash(alg).update(x).update(Uint8Array.of(i)).update(dstPrime).digest());
    out.set(prev, (i - 1) * b);
  }
  return out.subarray(0, len);
}
