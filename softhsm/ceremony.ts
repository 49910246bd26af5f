// The key ceremony: the fleet-wide secrets made once and put into every token. Two ways:
// - token-to-token (default where every token can): the OPRF seed is generated inside the first
//   token (its RNG seeded with host entropy as well), and moved to each token under a one-time AES
//   key that the two tokens derive by ECDH from ephemeral P-256 pairs. The host sees public keys and
//   wrapped blobs only; the seed never exists outside a token. Each token then derives the fleet AKE
//   seed from the seed it holds (HMAC-SHA-256 under a label of its own) and seals it under its own
//   record key. (The AKE seed is opened into the firmware's memory at every start anyway; what the
//   token ceremony removes is the one place both secrets sat in host memory together.)
// - host (fallback, or forced): both secrets drawn as token RNG XOR host RNG, imported with
//   C_CreateObject, host copies wiped.
// Either way the key check values (keys.ts) must then agree in every token.
import pkcs11 from 'pkcs11js';
import { randomBytes } from 'node:crypto';
import { KeyLabels } from '../hsm-adapter/token.ts';
import { mechanismName, type Pkcs11Token } from '../hsm-adapter/pkcs11-token.ts';
import { toTokenError } from '../hsm-adapter/errors.ts';
import { CKA_COPYABLE, FLEET_AKE_SEED_BYTES, OPRF_SEED_BYTES, P256_PARAMS, importFleetSecrets, makeSeedKeys, storeFleetAke, type FleetSecretPresence } from './keys.ts';

export type CeremonyMode = 'auto' | 'token' | 'host';
export interface CeremonyRecord {
  kind: 'token' | 'host';
  /** Token ceremony: the token the seed was generated in. */
  source?: string;
  /** Why this kind (e.g. which token lacks which mechanism), for doctor and the manifest. */
  reason: string;
}

/** Mechanisms every token needs for the token ceremony; the source also generates the seed. */
export const TOKEN_CEREMONY_MECHANISMS = [pkcs11.CKM_EC_KEY_PAIR_GEN, pkcs11.CKM_ECDH1_DERIVE, pkcs11.CKM_AES_KEY_WRAP];
const SOURCE_MECHANISMS = [pkcs11.CKM_GENERIC_SECRET_KEY_GEN];
/** What the AKE seed is derived from in each token (HMAC-SHA-256 with the seed's SHA-256 key). */
export const AKE_FROM_SEED_INPUT = Buffer.from('bkv fleet-ake seed from oprf seed v1\0');

/** Why the token ceremony cannot run on these tokens (empty: it can). */
export function tokenCeremonyGaps(tokens: Pkcs11Token[]): string[] {
  return tokens.flatMap((t, i) => {
    const lack = [...TOKEN_CEREMONY_MECHANISMS, ...(i === 0 ? SOURCE_MECHANISMS : [])].filter((m) => !t.mechanisms.has(m));
    return lack.length ? [`token '${t.label}' lacks ${lack.map(mechanismName).join(', ')}`] : [];
  });
}

function run<T>(t: Pkcs11Token, op: string, what: string, f: () => T): T {
  try {
    return f();
  } catch (e) {
    throw toTokenError(e, op, t.label, what);
  }
}

function destroy(t: Pkcs11Token, h: Buffer | undefined): void {
  if (!h) return;
  try {
    t.raw.C_DestroyObject(t.sessionHandle, h);
  } catch {
    /* session objects go with the session anyway */
  }
}

/** A session-only P-256 pair for one ECDH: the private half derives and does nothing else. */
function ephemeral(t: Pkcs11Token): { priv: Buffer; pub: Buffer; point: Buffer } {
  const kp = run(t, 'C_GenerateKeyPair', 'making an ephemeral ECDH key', () =>
    t.raw.C_GenerateKeyPair(t.sessionHandle, { mechanism: pkcs11.CKM_EC_KEY_PAIR_GEN },
      [
        { type: pkcs11.CKA_CLASS, value: pkcs11.CKO_PUBLIC_KEY }, { type: pkcs11.CKA_KEY_TYPE, value: pkcs11.CKK_EC },
        { type: pkcs11.CKA_TOKEN, value: false }, { type: pkcs11.CKA_EC_PARAMS, value: P256_PARAMS },
      ],
      [
        { type: pkcs11.CKA_CLASS, value: pkcs11.CKO_PRIVATE_KEY }, { type: pkcs11.CKA_KEY_TYPE, value: pkcs11.CKK_EC },
        { type: pkcs11.CKA_TOKEN, value: false }, { type: pkcs11.CKA_PRIVATE, value: true }, { type: pkcs11.CKA_SENSITIVE, value: true },
        { type: pkcs11.CKA_EXTRACTABLE, value: false }, { type: pkcs11.CKA_DERIVE, value: true }, { type: pkcs11.CKA_SIGN, value: false },
      ]),
  );
  let point = run(t, 'C_GetAttributeValue', 'reading an ephemeral public key', () => t.raw.C_GetAttributeValue(t.sessionHandle, kp.publicKey, [{ type: pkcs11.CKA_EC_POINT }])[0]!.value as Buffer);
  if (point.length === 67 && point[0] === 0x04 && point[1] === 0x41) point = point.subarray(2);
  return { priv: kp.privateKey, pub: kp.publicKey, point: Buffer.from(point) };
}

/** The one-time AES-256 key-encryption key both ends derive (x-coordinate of the ECDH point, CKD_NULL: the most portable KDF). */
function kek(t: Pkcs11Token, priv: Buffer, peerPoint: Buffer, use: 'wrap' | 'unwrap'): Buffer {
  return run(t, 'C_DeriveKey', 'deriving the ceremony wrapping key', () =>
    t.raw.C_DeriveKey(t.sessionHandle, { mechanism: pkcs11.CKM_ECDH1_DERIVE, parameter: { type: pkcs11.CK_PARAMS_EC_DH, kdf: pkcs11.CKD_NULL, publicData: peerPoint } as pkcs11.ECDH1 }, priv, [
      { type: pkcs11.CKA_CLASS, value: pkcs11.CKO_SECRET_KEY }, { type: pkcs11.CKA_KEY_TYPE, value: pkcs11.CKK_AES },
      { type: pkcs11.CKA_VALUE_LEN, value: 32 }, { type: pkcs11.CKA_TOKEN, value: false }, { type: pkcs11.CKA_SENSITIVE, value: true },
      { type: pkcs11.CKA_EXTRACTABLE, value: false }, { type: pkcs11.CKA_ENCRYPT, value: false }, { type: pkcs11.CKA_DECRYPT, value: false },
      { type: pkcs11.CKA_WRAP, value: use === 'wrap' }, { type: pkcs11.CKA_UNWRAP, value: use === 'unwrap' },
    ]),
  );
}

/**
 * Unwraps straight into the final token key where the module allows it. SoftHSM2 refuses an unwrap
 * template with CKA_MODIFIABLE false (CKR_ATTRIBUTE_READ_ONLY: it writes the value after applying the
 * template); there the key is unwrapped as a session object and copied into the token with
 * CKA_MODIFIABLE false (a copy may only tighten that), which leaves it CKA_COPYABLE (the copy template
 * may not change that on SoftHSM2). A copy of it is still sensitive, unextractable and unmodifiable.
 */
function unwrapInto(d: Pkcs11Token, ku: Buffer, blob: Buffer, template: pkcs11.Template): Buffer {
  const mech = { mechanism: pkcs11.CKM_AES_KEY_WRAP };
  try {
    return d.raw.C_UnwrapKey(d.sessionHandle, mech, ku, blob, template);
  } catch (e) {
    if (!(e instanceof Error) || !/^CKR_ATTRIBUTE_READ_ONLY/.test(e.message)) throw e;
  }
  const loose = template
    .filter((a) => a.type !== pkcs11.CKA_MODIFIABLE && a.type !== CKA_COPYABLE)
    .map((a) => (a.type === pkcs11.CKA_TOKEN ? { type: pkcs11.CKA_TOKEN, value: false } : a));
  const temp = d.raw.C_UnwrapKey(d.sessionHandle, mech, ku, blob, loose);
  try {
    return d.raw.C_CopyObject(d.sessionHandle, temp, [{ type: pkcs11.CKA_TOKEN, value: true }, { type: pkcs11.CKA_MODIFIABLE, value: false }]);
  } finally {
    destroy(d, temp);
  }
}

function tokenCeremony(tokens: Pkcs11Token[]): void {
  const src = tokens[0]!;
  const s = src.sessionHandle;
  // Host entropy mixed into the source token's generator, so neither alone decides the seed.
  const extra = randomBytes(32);
  try {
    src.raw.C_SeedRandom(s, extra);
  } catch {
    /* CKR_RANDOM_SEED_NOT_SUPPORTED: the token's own generator alone */
  } finally {
    extra.fill(0);
  }
  // The transport copy: a session object, extractable only so that it can be wrapped, able to do
  // nothing else, gone with the session at the latest.
  let seed: Buffer | undefined;
  let srcEph: ReturnType<typeof ephemeral> | undefined;
  try {
    seed = run(src, 'C_GenerateKey', 'generating the OPRF seed', () =>
      src.raw.C_GenerateKey(s, { mechanism: pkcs11.CKM_GENERIC_SECRET_KEY_GEN }, [
        { type: pkcs11.CKA_CLASS, value: pkcs11.CKO_SECRET_KEY }, { type: pkcs11.CKA_KEY_TYPE, value: pkcs11.CKK_GENERIC_SECRET },
        { type: pkcs11.CKA_TOKEN, value: false }, { type: pkcs11.CKA_PRIVATE, value: true }, { type: pkcs11.CKA_SENSITIVE, value: true },
        { type: pkcs11.CKA_EXTRACTABLE, value: true }, { type: pkcs11.CKA_VALUE_LEN, value: OPRF_SEED_BYTES },
        ...[pkcs11.CKA_SIGN, pkcs11.CKA_VERIFY, pkcs11.CKA_ENCRYPT, pkcs11.CKA_DECRYPT, pkcs11.CKA_WRAP, pkcs11.CKA_UNWRAP, pkcs11.CKA_DERIVE].map((type) => ({ type, value: false })),
      ]),
    );
    srcEph = ephemeral(src);
    for (const d of tokens) {
      const dEph = ephemeral(d);
      let kw: Buffer | undefined;
      let ku: Buffer | undefined;
      try {
        kw = kek(src, srcEph.priv, dEph.point, 'wrap');
        const blob = run(src, 'C_WrapKey', `wrapping the OPRF seed for '${d.label}'`, () => src.raw.C_WrapKey(s, { mechanism: pkcs11.CKM_AES_KEY_WRAP }, kw!, seed!, Buffer.alloc(OPRF_SEED_BYTES + 16)));
        ku = kek(d, dEph.priv, srcEph.point, 'unwrap');
        makeSeedKeys(d, 'unwrapping', (template) => unwrapInto(d, ku!, blob, template));
      } finally {
        destroy(src, kw);
        destroy(d, ku);
        destroy(d, dEph.priv);
        destroy(d, dEph.pub);
      }
    }
  } finally {
    destroy(src, seed);
    destroy(src, srcEph?.priv);
    destroy(src, srcEph?.pub);
  }
  for (const d of tokens) {
    const ake = Buffer.from(d.hmac(KeyLabels.oprfSeed, 'sha256', AKE_FROM_SEED_INPUT));
    try {
      if (ake.length !== FLEET_AKE_SEED_BYTES) throw new Error(`derived AKE seed has ${ake.length} bytes`);
      storeFleetAke(d, ake);
    } finally {
      ake.fill(0);
    }
  }
}

/** The host ceremony: each secret is token RNG XOR host RNG, imported everywhere, host copies wiped. */
function hostCeremony(tokens: Pkcs11Token[], presence: FleetSecretPresence[]): void {
  const oprfSeed = Buffer.alloc(OPRF_SEED_BYTES);
  const akeSeed = Buffer.alloc(FLEET_AKE_SEED_BYTES);
  try {
    const mix = (out: Buffer) => {
      const a = tokens[0]!.random(out.length);
      const b = randomBytes(out.length);
      for (let i = 0; i < out.length; i++) out[i] = a[i]! ^ b[i]!;
      a.fill(0);
      b.fill(0);
    };
    mix(oprfSeed);
    mix(akeSeed);
    tokens.forEach((t, i) => importFleetSecrets(t, oprfSeed, akeSeed, presence[i]!));
  } finally {
    oprfSeed.fill(0);
    akeSeed.fill(0);
  }
}

/** Runs the ceremony on tokens that hold no fleet secret yet; says which kind ran and why. */
export function runCeremony(tokens: Pkcs11Token[], presence: FleetSecretPresence[], did: (a: string) => void, mode: CeremonyMode = 'auto'): CeremonyRecord {
  const gaps = tokenCeremonyGaps(tokens);
  if (mode === 'token' && gaps.length) {
    throw toTokenError(new Error(`the token ceremony cannot run: ${gaps.join('; ')}`), 'ceremony', '', 'the key ceremony');
  }
  if (mode !== 'host' && gaps.length === 0) {
    tokenCeremony(tokens);
    const rec = { kind: 'token' as const, source: tokens[0]!.label, reason: `generated in '${tokens[0]!.label}', moved token to token under ECDH (P-256) derived AES key wrap: no host copy` };
    did(`key ceremony: OPRF seed generated in '${tokens[0]!.label}' and unwrapped into ${tokens.length} tokens under ECDH-derived keys; each token derived and sealed the fleet AKE seed (no host copy)`);
    return rec;
  }
  hostCeremony(tokens, presence);
  const reason = mode === 'host' ? 'host ceremony chosen (--ceremony host)' : `host ceremony: ${gaps.join('; ')}`;
  did(`key ceremony: imported the OPRF seed and the sealed fleet AKE seed into ${tokens.length} tokens; host copies wiped (${reason})`);
  return { kind: 'host', reason };
}
