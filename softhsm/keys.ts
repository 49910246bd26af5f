// The objects bkv keeps in a replica token, how they are made, and the key check values (KCVs) that
// show the fleet-wide secrets are equal across tokens without revealing them.
import pkcs11 from 'pkcs11js';
import { createHash } from 'node:crypto';
import { FLEET_AKE_AAD, KeyLabels } from '../hsm-adapter/token.ts';
import { toTokenError } from '../hsm-adapter/errors.ts';
import type { DataStore, Pkcs11Token } from '../hsm-adapter/pkcs11-token.ts';

/** DER OID of prime256v1 / secp256r1, as CKA_EC_PARAMS. */
export const P256_PARAMS = Buffer.from('06082a8648ce3d030107', 'hex');
const KCV_INPUT = Buffer.from('bkv kcv');

export const OPRF_SEED_BYTES = 64;
export const FLEET_AKE_SEED_BYTES = 32;

const secretAttrs = (label: string): pkcs11.Template => [
  { type: pkcs11.CKA_CLASS, value: pkcs11.CKO_SECRET_KEY },
  { type: pkcs11.CKA_TOKEN, value: true },
  { type: pkcs11.CKA_PRIVATE, value: true },
  { type: pkcs11.CKA_SENSITIVE, value: true },
  { type: pkcs11.CKA_EXTRACTABLE, value: false },
  { type: pkcs11.CKA_MODIFIABLE, value: false },
  { type: pkcs11.CKA_LABEL, value: label },
];

/** The usage flags bkv sets on its keys; every one not granted is set false, not left to the module's default. */
export const USAGE_ATTRS = {
  encrypt: pkcs11.CKA_ENCRYPT, decrypt: pkcs11.CKA_DECRYPT, sign: pkcs11.CKA_SIGN, verify: pkcs11.CKA_VERIFY,
  wrap: pkcs11.CKA_WRAP, unwrap: pkcs11.CKA_UNWRAP, derive: pkcs11.CKA_DERIVE,
} as const;
export type Usage = keyof typeof USAGE_ATTRS;
/**
 * Least privilege: what each bkv object may do, and nothing else. The record key only seals (the
 * fallback's MAC is a separate key); HMAC keys only sign (a MAC is checked by recomputing it, so
 * verify is never used); the identity only signs. Its public half keeps verify (peers verify on their
 * hosts, and a public key's verify grants nothing; NSS softoken refuses an EC public key without it,
 * CKR_KEY_TYPE_INCONSISTENT). Nothing wraps, unwraps or derives.
 */
export const KEY_USAGES: Record<'recordKey' | 'recordMacKey' | 'oprfSeed' | 'identityPrivate' | 'identityPublic', Usage[]> = {
  recordKey: ['encrypt', 'decrypt'],
  recordMacKey: ['sign'],
  oprfSeed: ['sign'],
  identityPrivate: ['sign'],
  identityPublic: ['verify'],
};
/**
 * CKA_ALLOWED_MECHANISMS where the module keeps it: each key bound to the mechanisms bkv uses it with
 * (the record key to both seal schemes, since the scheme is chosen per token and doctor can force the
 * other; the identity to both ECDSA forms).
 */
export const ALLOWED_MECHANISMS = {
  recordKey: [pkcs11.CKM_AES_GCM, pkcs11.CKM_AES_CBC_PAD],
  recordMacKey: [pkcs11.CKM_SHA256_HMAC],
  oprfSeed: [pkcs11.CKM_SHA512_HMAC],
  oprfSeedSha256: [pkcs11.CKM_SHA256_HMAC],
  identityPrivate: [pkcs11.CKM_ECDSA_SHA256, pkcs11.CKM_ECDSA],
} as const;
function usageAttrs(granted: Usage[], only?: Usage[]): pkcs11.Template {
  return (Object.keys(USAGE_ATTRS) as Usage[]).filter((u) => !only || only.includes(u)).map((u) => ({ type: USAGE_ATTRS[u], value: granted.includes(u) }));
}
// A private key has no encrypt/verify/wrap; a public key no decrypt/sign/unwrap (the modules refuse them).
const PRIVATE_USAGES: Usage[] = ['decrypt', 'sign', 'unwrap', 'derive'];
const PUBLIC_USAGES: Usage[] = ['encrypt', 'verify', 'wrap', 'derive'];

/** CKA_COPYABLE (PKCS#11 2.40): a copy of a key could get attributes the original does not have. */
export const CKA_COPYABLE = 0x171;
// Modules older than 2.40 do not know CKA_COPYABLE: NSS softoken fails the whole template with
// CKR_GENERAL_ERROR, others say CKR_ATTRIBUTE_TYPE_INVALID. Learned once per token; doctor says so.
const copyableKnown = new WeakMap<Pkcs11Token, boolean>();
const NOT_COPYABLE: pkcs11.Template = [{ type: CKA_COPYABLE, value: false }];
function withCopyable<T>(t: Pkcs11Token, make: (extra: pkcs11.Template) => T): T {
  return withOptional(t, copyableKnown, NOT_COPYABLE, make);
}

// Tries a template with an attribute some modules do not know, and without it where the module
// refuses the template for it. Learned per token, and only from a retry that then succeeded: when a
// retry fails too, another optional attribute was the cause, and nothing is concluded about this one.
function withOptional<T>(t: Pkcs11Token, known: WeakMap<Pkcs11Token, boolean>, attrs: pkcs11.Template, make: (extra: pkcs11.Template) => T): T {
  if (known.get(t) === false) return make([]);
  try {
    const r = make(attrs);
    known.set(t, true);
    return r;
  } catch (e) {
    const ckr = e instanceof Error ? /^(CKR_[A-Z_]+)/.exec(e.message)?.[1] : undefined;
    if (known.get(t) === true || !OPTIONAL_REFUSALS.includes(ckr ?? '')) throw e;
    const r = make([]);
    known.set(t, false);
    return r;
  }
}
const OPTIONAL_REFUSALS = ['CKR_ATTRIBUTE_TYPE_INVALID', 'CKR_GENERAL_ERROR', 'CKR_TEMPLATE_INCONSISTENT', 'CKR_ATTRIBUTE_VALUE_INVALID'];

// CKA_ALLOWED_MECHANISMS binds a key to the one mechanism it is for; modules that do not know the
// attribute (NSS softoken) refuse the template, and the key is then made without it. Once per token.
const allowedKnown = new WeakMap<Pkcs11Token, boolean>();
function withAllowed<T>(t: Pkcs11Token, mechs: readonly number[], make: (extra: pkcs11.Template) => T): T {
  const value = Buffer.alloc(8 * mechs.length);
  mechs.forEach((m, i) => value.writeBigUInt64LE(BigInt(m), 8 * i));
  return withOptional(t, allowedKnown, [{ type: pkcs11.CKA_ALLOWED_MECHANISMS, value }], make);
}

/** Whether the token took CKA_COPYABLE false on the keys bkv made in this process (undefined: made none). */
export function copyableSupported(t: Pkcs11Token): boolean | undefined {
  return copyableKnown.get(t);
}

export type PerTokenObject = 'recordKey' | 'recordMacKey' | 'replicaIdentity';

function run<T>(t: Pkcs11Token, op: string, what: string, f: () => T): T {
  try {
    return f();
  } catch (e) {
    throw toTokenError(e, op, t.label, what);
  }
}

/**
 * Creates the per-token keys the token lacks; returns which it created. `identity: false` leaves out
 * the replica identity: a single vault never signs, so its token need not make EC keys.
 */
export function ensurePerTokenKeys(t: Pkcs11Token, opts: { identity?: boolean } = {}): PerTokenObject[] {
  const lib = t.raw;
  const s = t.sessionHandle;
  const made: PerTokenObject[] = [];
  if (!t.findObject(KeyLabels.recordKey, pkcs11.CKO_SECRET_KEY)) {
    run(t, 'C_GenerateKey', 'generating the record key', () => withAllowed(t, ALLOWED_MECHANISMS.recordKey, (bound) => withCopyable(t, (extra) =>
      lib.C_GenerateKey(s, { mechanism: pkcs11.CKM_AES_KEY_GEN }, [
        ...secretAttrs(KeyLabels.recordKey),
        { type: pkcs11.CKA_KEY_TYPE, value: pkcs11.CKK_AES },
        { type: pkcs11.CKA_VALUE_LEN, value: 32 },
        ...usageAttrs(KEY_USAGES.recordKey),
        ...bound,
        ...extra,
      ]))),
    );
    made.push('recordKey');
  }
  if (!t.findObject(KeyLabels.recordMacKey, pkcs11.CKO_SECRET_KEY)) {
    run(t, 'C_GenerateKey', 'generating the record MAC key', () => withAllowed(t, ALLOWED_MECHANISMS.recordMacKey, (bound) => withCopyable(t, (extra) =>
      lib.C_GenerateKey(s, { mechanism: pkcs11.CKM_GENERIC_SECRET_KEY_GEN }, [
        ...secretAttrs(KeyLabels.recordMacKey),
        { type: pkcs11.CKA_KEY_TYPE, value: pkcs11.CKK_GENERIC_SECRET },
        { type: pkcs11.CKA_VALUE_LEN, value: 32 },
        ...usageAttrs(KEY_USAGES.recordMacKey),
        ...bound,
        ...extra,
      ]))),
    );
    made.push('recordMacKey');
  }
  const priv = t.findObject(KeyLabels.replicaIdentity, pkcs11.CKO_PRIVATE_KEY);
  const pub = t.findObject(KeyLabels.replicaIdentity, pkcs11.CKO_PUBLIC_KEY);
  if ((!priv || !pub) && opts.identity !== false) {
    // A lone half of a pair is useless; replace it with a whole pair.
    for (const h of [priv, pub]) if (h) run(t, 'C_DestroyObject', 'removing half an identity pair', () => lib.C_DestroyObject(s, h));
    run(t, 'C_GenerateKeyPair', 'generating the replica identity', () => withAllowed(t, ALLOWED_MECHANISMS.identityPrivate, (bound) => withCopyable(t, (extra) =>
      lib.C_GenerateKeyPair(
        s,
        { mechanism: pkcs11.CKM_EC_KEY_PAIR_GEN },
        [
          { type: pkcs11.CKA_CLASS, value: pkcs11.CKO_PUBLIC_KEY },
          { type: pkcs11.CKA_KEY_TYPE, value: pkcs11.CKK_EC },
          { type: pkcs11.CKA_TOKEN, value: true },
          { type: pkcs11.CKA_PRIVATE, value: false },
          { type: pkcs11.CKA_MODIFIABLE, value: false },
          ...usageAttrs(KEY_USAGES.identityPublic, PUBLIC_USAGES),
          { type: pkcs11.CKA_EC_PARAMS, value: P256_PARAMS },
          { type: pkcs11.CKA_LABEL, value: KeyLabels.replicaIdentity },
          ...extra,
        ],
        [
          { type: pkcs11.CKA_CLASS, value: pkcs11.CKO_PRIVATE_KEY },
          { type: pkcs11.CKA_KEY_TYPE, value: pkcs11.CKK_EC },
          { type: pkcs11.CKA_TOKEN, value: true },
          { type: pkcs11.CKA_PRIVATE, value: true },
          { type: pkcs11.CKA_SENSITIVE, value: true },
          { type: pkcs11.CKA_EXTRACTABLE, value: false },
          { type: pkcs11.CKA_MODIFIABLE, value: false },
          ...usageAttrs(KEY_USAGES.identityPrivate, PRIVATE_USAGES),
          { type: pkcs11.CKA_LABEL, value: KeyLabels.replicaIdentity },
          ...bound,
          ...extra,
        ],
      ))),
    );
    made.push('replicaIdentity');
  }
  return made;
}

export interface FleetSecretPresence {
  oprfSeed: boolean;
  fleetAke: boolean;
}

export function fleetSecretPresence(t: Pkcs11Token): FleetSecretPresence {
  return {
    oprfSeed: t.findObject(KeyLabels.oprfSeed, pkcs11.CKO_SECRET_KEY) !== undefined,
    fleetAke: t.hasData(KeyLabels.fleetAkeSealed),
  };
}

/**
 * Imports the fleet-wide secrets into one token: the OPRF seed as a sensitive, non-extractable
 * generic secret, the AKE seed sealed under this token's record key. The caller owns the host copies
 * and wipes them once every token has them.
 */
export function importFleetSecrets(t: Pkcs11Token, oprfSeed: Buffer, akeSeed: Buffer, have: FleetSecretPresence): void {
  if (!have.oprfSeed) {
    makeSeedKeys(t, 'importing', (template) => t.raw.C_CreateObject(t.sessionHandle, [...template, { type: pkcs11.CKA_VALUE, value: oprfSeed }]));
  }
  if (!have.fleetAke) storeFleetAke(t, akeSeed);
}

/**
 * Makes the OPRF seed's token keys with `make(template)` (a C_CreateObject of a host value, or a
 * C_UnwrapKey in the token ceremony): one key per hash (see KeyLabels.oprfSeedSha256), each bound to
 * its mechanism where the token takes CKA_ALLOWED_MECHANISMS. The twin first: a token left with only
 * it has no oprf-seed, so a retried ceremony still sees the seed missing and makes both.
 */
export function makeSeedKeys(t: Pkcs11Token, verb: string, make: (template: pkcs11.Template) => Buffer): void {
  t.forgetKeys();
  for (const [label, mech, what] of [
    [KeyLabels.oprfSeedSha256, ALLOWED_MECHANISMS.oprfSeedSha256, `${verb} the OPRF seed (HMAC-SHA-256 twin)`],
    [KeyLabels.oprfSeed, ALLOWED_MECHANISMS.oprfSeed, `${verb} the OPRF seed`],
  ] as const) {
    if (label === KeyLabels.oprfSeedSha256 && t.findObject(label, pkcs11.CKO_SECRET_KEY)) continue;
    run(t, verb === 'importing' ? 'C_CreateObject' : 'C_UnwrapKey', what, () => withAllowed(t, mech, (bound) => withCopyable(t, (extra) =>
      make([
        ...secretAttrs(label),
        { type: pkcs11.CKA_KEY_TYPE, value: pkcs11.CKK_GENERIC_SECRET },
        ...usageAttrs(KEY_USAGES.oprfSeed),
        ...bound,
        ...extra,
      ]))),
    );
  }
}

/** Seals the fleet AKE seed under this token's record key and keeps it in the token's data store. */
export function storeFleetAke(t: Pkcs11Token, akeSeed: Uint8Array): void {
  const sealed = Buffer.from(t.seal(KeyLabels.recordKey, akeSeed, FLEET_AKE_AAD));
  // Another store goes through the adapter's own write; CKO_DATA stays as it always was written.
  if (t.dataStore !== 'data-object') return t.writeData(KeyLabels.fleetAkeSealed, sealed);
  run(t, 'C_CreateObject', 'storing the sealed fleet AKE seed', () =>
    t.raw.C_CreateObject(t.sessionHandle, [
      { type: pkcs11.CKA_CLASS, value: pkcs11.CKO_DATA },
      { type: pkcs11.CKA_TOKEN, value: true },
      { type: pkcs11.CKA_PRIVATE, value: true },
      { type: pkcs11.CKA_MODIFIABLE, value: false },
      { type: pkcs11.CKA_APPLICATION, value: 'bkv' },
      { type: pkcs11.CKA_LABEL, value: KeyLabels.fleetAkeSealed },
      { type: pkcs11.CKA_VALUE, value: sealed },
    ]),
  );
}

/** KCV of the OPRF seed: HMAC-SHA-256(seed, "bkv kcv") computed in the token, first 8 bytes. */
export function oprfSeedKcv(t: Pkcs11Token): string {
  return Buffer.from(t.hmac(KeyLabels.oprfSeed, 'sha256', KCV_INPUT)).subarray(0, 8).toString('hex');
}

/** KCV of the fleet AKE seed: SHA-256("bkv kcv" || opened seed), first 8 bytes; the opened copy is wiped. */
export function fleetAkeKcv(t: Pkcs11Token): string {
  const seed = t.open(KeyLabels.recordKey, t.readData(KeyLabels.fleetAkeSealed), FLEET_AKE_AAD);
  try {
    return createHash('sha256').update(KCV_INPUT).update(seed).digest().subarray(0, 8).toString('hex');
  } finally {
    seed.fill(0);
  }
}

/**
 * Whether a fleet of this size needs an identity in this token: every replica of a fleet signs; the
 * one token of a single vault needs none, and gets one only where it can make EC keys.
 */
export function wantsIdentity(t: Pkcs11Token, fleetSize: number): boolean {
  return fleetSize > 1 || t.mechanisms.has(pkcs11.CKM_EC_KEY_PAIR_GEN);
}

/** The identity fingerprint for fleet.json, '' where the token holds no identity (a single vault without EC). */
export function manifestFingerprint(t: Pkcs11Token): string {
  const has = t.findObject(KeyLabels.replicaIdentity, pkcs11.CKO_PUBLIC_KEY) !== undefined;
  return has ? identityFingerprint(t) : '';
}

/** SHA-256 of the identity public key, first 16 bytes: a public fingerprint peers can pin. */
export function identityFingerprint(t: Pkcs11Token): string {
  return createHash('sha256').update(t.publicKey(KeyLabels.replicaIdentity)).digest().subarray(0, 16).toString('hex');
}

/** The attributes that make a secret key a vault key: doctor and the tests read them back. */
export function secretKeyFlags(t: Pkcs11Token, label: string): { sensitive: boolean; extractable: boolean; token: boolean; alwaysSensitive: boolean } | undefined {
  const h = t.findObject(label, pkcs11.CKO_SECRET_KEY);
  if (!h) return undefined;
  const attrs = run(t, 'C_GetAttributeValue', `reading the attributes of '${label}'`, () =>
    t.raw.C_GetAttributeValue(t.sessionHandle, h, [
      { type: pkcs11.CKA_SENSITIVE },
      { type: pkcs11.CKA_EXTRACTABLE },
      { type: pkcs11.CKA_TOKEN },
      { type: pkcs11.CKA_ALWAYS_SENSITIVE },
    ]),
  );
  const b = (i: number) => attrs[i].value.length > 0 && attrs[i].value[0] !== 0;
  return { sensitive: b(0), extractable: b(1), token: b(2), alwaysSensitive: b(3) };
}

/** What each data store costs, for doctor and provision to say. */
export const DATA_STORE_COSTS: Record<DataStore, string> = {
  'data-object': 'CKO_DATA token objects (CKA_VALUE): nothing beyond the object per write',
  'secret-key-id':
    'each value (sealed fleet AKE seed, rollback anchor, Raft vote) is an inert ' +
    'generic secret key (every usage off, sensitive, not extractable) whose CKA_ID holds it: one key generation per anchor ' +
    'or vote write instead of an object creation (NSS softoken ~15 ms), and these keys show in the token\'s key list',
};

export type DataStoreChoice = { store: DataStore; reason: string; cost: string } | { store: undefined; reason: string };

/**
 * Picks where the anchor, the vote and the sealed AKE seed live from what the token accepted. They
 * must be in the token (the host can roll its disk back, not the token), so with neither store
 * there is no safe choice and bkv refuses the token.
 */
export function chooseDataStore(probe: Record<DataStore, true | string>): DataStoreChoice {
  if (probe['data-object'] === true) return { store: 'data-object', reason: 'the token keeps CKO_DATA token objects', cost: DATA_STORE_COSTS['data-object'] };
  if (probe['secret-key-id'] === true) {
    return { store: 'secret-key-id', reason: `the token refuses CKO_DATA token objects (${probe['data-object']})`, cost: DATA_STORE_COSTS['secret-key-id'] };
  }
  return {
    store: undefined,
    reason:
      `the token refuses CKO_DATA token objects (${probe['data-object']}) and inert secret keys (${probe['secret-key-id']}): ` +
      'the rollback anchor and the Raft vote must live in the token (a host copy could be rolled back), so bkv cannot run on it',
  };
}
