// The three configurations: two RFC 9807 ciphersuites we offer, plus the ristretto255-OPRF/X25519-AKE
// configuration of the RFC's test vectors (kept so all nine official vectors run through this code).
import { OpaqueError } from './errors.ts';

export type SuiteId = 'ristretto255-SHA512' | 'P256-SHA256' | 'ristretto255-SHA512-X25519';
export type OprfSuiteId = 'ristretto255-SHA512' | 'P256-SHA256';
export type AkeGroupId = 'ristretto255' | 'P256' | 'X25519';
export type HashId = 'sha512' | 'sha256';

export interface SuiteParams {
  readonly id: SuiteId;
  readonly oprf: OprfSuiteId;
  readonly ake: AkeGroupId;
  readonly hash: HashId;
  /** Hash / MAC / KDF output lengths (RFC 9807 Nh = Nm = Nx). */
  readonly Nh: number;
  readonly Nm: number;
  readonly Nx: number;
  /** AKE public / private key lengths. */
  readonly Npk: number;
  readonly Nsk: number;
  /** OPRF element and key lengths (RFC 9497 Noe, Nok). */
  readonly Noe: number;
  readonly Nok: number;
  readonly Nn: 32;
  readonly Nseed: 32;
  /** Envelope = nonce || auth_tag. */
  readonly Nenvelope: number;
}

function params(id: SuiteId, oprf: OprfSuiteId, ake: AkeGroupId, hash: HashId, Nh: number, Npk: number, Noe: number): SuiteParams {
  return Object.freeze({ id, oprf, ake, hash, Nh, Nm: Nh, Nx: Nh, Npk, Nsk: 32, Noe, Nok: 32, Nn: 32, Nseed: 32, Nenvelope: 32 + Nh });
}

export const SUITES: Readonly<Record<SuiteId, SuiteParams>> = Object.freeze({
  'ristretto255-SHA512': params('ristretto255-SHA512', 'ristretto255-SHA512', 'ristretto255', 'sha512', 64, 32, 32),
  'P256-SHA256': params('P256-SHA256', 'P256-SHA256', 'P256', 'sha256', 32, 33, 33),
  'ristretto255-SHA512-X25519': params('ristretto255-SHA512-X25519', 'ristretto255-SHA512', 'X25519', 'sha512', 64, 32, 32),
});

export const DEFAULT_SUITE: SuiteId = 'ristretto255-SHA512';

export function suiteParams(id: SuiteId): SuiteParams {
  const s = (SUITES as Record<string, SuiteParams | undefined>)[id];
  if (!s) throw new OpaqueError('BAD_CONFIG', `unknown OPAQUE suite ${JSON.stringify(id)}`);
  return s;
}
