// How the vault side gets its secrets: the OPRF seed stays inside the token (only HMACs come out),
// the AKE private key is opened from a sealed blob into memory (PKCS#11 tokens have no ristretto255).
import { hkdfSync } from 'node:crypto';
import type { Token } from '../../hsm-adapter/token.ts';
import { OpaqueError } from './errors.ts';
import { concat, hkdfExpand, utf8 } from './hash.ts';
import { nobleP256, nobleRistretto255, primeDhGroup, x25519DhGroup, type DhGroup } from './group.ts';
import { makeOprf } from './oprf.ts';
import { suiteParams, type SuiteId } from './suite.ts';

export interface AkeKeyPair {
  readonly privateKey: Uint8Array;
  readonly publicKey: Uint8Array;
}

export interface ServerSecrets {
  readonly suite: SuiteId;
  /**
   * HKDF-Expand(oprf_seed, info, length), length defaulting to Nok = 32. Up to Nh bytes it is one
   * HMAC block, HMAC(oprf_seed, info || 0x01) cut to length. The vault asks for Nok + 32 bytes: the
   * RFC's OPRF key seed is the first Nok (HKDF-Expand outputs are prefixes of longer ones), the next
   * 32 seed the fake record; for SHA-512 that is still one HMAC.
   */
  oprfExpand(info: Uint8Array, length?: number): Uint8Array;
  /** The server's static 3DH key pair (what devices pin). */
  readonly akeKeyPair: AkeKeyPair;
}

/**
 * Token object labels and the seal AAD, as provisioned (hsm-adapter/token.ts KeyLabels and
 * FLEET_AKE_AAD). Repeated here because protocol/ may import only the *type* of the token module;
 * test/protocol/opaque-token.test.ts checks they stay equal.
 */
export const TOKEN_OBJECTS = Object.freeze({
  oprfSeed: 'oprf-seed',
  recordKey: 'record-key',
  fleetAkeSealed: 'fleet-ake-sealed',
});
export const FLEET_AKE_AAD_V1 = utf8('bkv fleet-ake v1');

function checkOkmLength(length: number): number {
  if (!Number.isInteger(length) || length < 1 || length > 255) throw new OpaqueError('BAD_CONFIG', 'oprfExpand length must be 1..255');
  return length;
}

/** The reference DH group of a suite (noble), for one-off key derivations off the hot path. */
function referenceDh(suite: SuiteId): DhGroup {
  const s = suiteParams(suite);
  if (s.ake === 'X25519') return x25519DhGroup('noble');
  const g = s.ake === 'P256' ? nobleP256 : nobleRistretto255;
  return primeDhGroup(g, makeOprf(s.oprf, g).deriveKey);
}

/** Secrets held in memory: the RFC test vectors, tests, and tools. */
export function softwareServerSecrets(suite: SuiteId, oprfSeed: Uint8Array, akePrivateKey: Uint8Array): ServerSecrets {
  const s = suiteParams(suite);
  if (oprfSeed.length < s.Nh) throw new OpaqueError('BAD_LENGTH', `oprf seed: at least ${s.Nh} bytes`);
  const dh = referenceDh(suite);
  dh.checkPrivateKey(akePrivateKey);
  const seed = oprfSeed.slice();
  const akeKeyPair = Object.freeze({ privateKey: akePrivateKey.slice(), publicKey: dh.publicKey(akePrivateKey) });
  return Object.freeze({
    suite,
    oprfExpand: (info: Uint8Array, length: number = s.Nok) => hkdfExpand(s.hash, seed, info, checkOkmLength(length)),
    akeKeyPair,
  });
}

/** Software secrets whose AKE key comes from a 32-byte seed, as the fleet's does. */
export function softwareServerSecretsFromSeed(suite: SuiteId, oprfSeed: Uint8Array, akeSeed: Uint8Array): ServerSecrets {
  const kp = referenceDh(suite).deriveKeyPair(akeSeed);
  return softwareServerSecrets(suite, oprfSeed, kp.privateKey);
}

/**
 * Secrets backed by a replica's token. The OPRF seed is the token's 64-byte generic secret
 * 'oprf-seed': HKDF-Expand with one block is done as a token HMAC (HMAC-SHA-512 for
 * ristretto255-SHA512; for P256-SHA256 the same 64-byte key is used as an HMAC-SHA-256 key, which
 * is what RFC 9807's Expand with SHA-256 over a 64-byte seed computes). The fleet AKE key pair is
 * DeriveDiffieHellmanKeyPair of the 32-byte seed sealed under the token's record key.
 */
export function tokenServerSecrets(token: Token, suite: SuiteId): ServerSecrets {
  const s = suiteParams(suite);
  const sealed = token.readData(TOKEN_OBJECTS.fleetAkeSealed);
  const seed = token.open(TOKEN_OBJECTS.recordKey, sealed, FLEET_AKE_AAD_V1);
  let akeKeyPair: AkeKeyPair;
  try {
    if (seed.length !== s.Nseed) throw new OpaqueError('BAD_LENGTH', `fleet AKE seed: expected ${s.Nseed} bytes, got ${seed.length}`);
    akeKeyPair = Object.freeze(referenceDh(suite).deriveKeyPair(seed));
  } finally {
    seed.fill(0);
  }
  const ONE = Uint8Array.of(1);
  return Object.freeze({
    suite,
    oprfExpand: (info: Uint8Array, length: number = s.Nok) => {
      checkOkmLength(length);
      // HKDF-Expand block by block, each block one HMAC inside the token: T(i) = HMAC(seed, T(i-1) || info || i).
      if (length <= s.Nh) return token.hmac(TOKEN_OBJECTS.oprfSeed, s.hash, concat(info, ONE)).subarray(0, length);
      const out = new Uint8Array(length);
      let t: Uint8Array = new Uint8Array(0);
      for (let i = 1, o = 0; o < length; i++, o += s.Nh) {
        t = token.hmac(TOKEN_OBJECTS.oprfSeed, s.hash, concat(t, info, Uint8Array.of(i)));
        out.set(t.subarray(0, Math.min(s.Nh, length - o)), o);
      }
      return out;
    },
    akeKeyPair,
  });
}

/** The device-vault session key pair (protocol/session.ts), an X25519 key: what devices pin besides the AKE keys. */
export interface SessionKeyPair {
  readonly privateKey: Uint8Array;
  readonly publicKey: Uint8Array;
}

const SESSION_KEY_INFO = utf8('bkv session key v1');

/** X25519 private key = HKDF-SHA256(salt = "", ikm = seed, info = "bkv session key v1", 32); X25519 clamps it. */
export function sessionKeyFromSeed(seed: Uint8Array, x25519: { publicKey(sk: Uint8Array): Uint8Array }): SessionKeyPair {
  const privateKey = new Uint8Array(hkdfSync('sha256', seed, new Uint8Array(0), SESSION_KEY_INFO, 32));
  return Object.freeze({ privateKey, publicKey: x25519.publicKey(privateKey) });
}

/**
 * The session key of a replica's token: derived from the same sealed fleet AKE seed as the AKE keys,
 * so every replica of a fleet holds it and it lives where they do (firmware memory, opened from the
 * token's sealed blob; the host copy is wiped).
 */
export function tokenSessionKey(token: Token, x25519: { publicKey(sk: Uint8Array): Uint8Array }): SessionKeyPair {
  const sealed = token.readData(TOKEN_OBJECTS.fleetAkeSealed);
  const seed = token.open(TOKEN_OBJECTS.recordKey, sealed, FLEET_AKE_AAD_V1);
  try {
    return sessionKeyFromSeed(seed, x25519);
  } finally {
    seed.fill(0);
  }
}
