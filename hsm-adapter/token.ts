// The narrow interface the vault firmware needs from an HSM. Everything secret stays inside the token;
// callers name keys by label. Calls are synchronous (pkcs11js is), which keeps the firmware a plain
// state machine: a slow token just makes a step slow.

/** Labels of the objects provisioning puts in every replica token. */
export const KeyLabels = {
  /** AES-256, sensitive, never extractable: seals everything the host stores. Per token. */
  recordKey: 'record-key',
  /** HMAC-SHA-256 generic secret (32 bytes): the MAC half of the AES-CBC+HMAC seal fallback. Per token. */
  recordMacKey: 'record-mac-key',
  /** Generic secret (64 bytes) used as an HMAC-SHA-512 key: OPAQUE's oprf_seed. Same value fleet-wide. */
  oprfSeed: 'oprf-seed',
  /**
   * The same 64-byte seed as `oprf-seed`, for HMAC-SHA-256 only (the P-256 suite, the KCV): a token
   * whose HMAC keys are bound to one hash (CKA_ALLOWED_MECHANISMS, hash-typed keys) refuses one key
   * for both. Fleets made before it have none, and `oprf-seed` then serves both hashes.
   */
  oprfSeedSha256: 'oprf-seed-sha256',
  /** P-256 key pair (private + public objects share this label): the replica's identity. Per token. */
  replicaIdentity: 'replica-id',
  /** Data object: the fleet AKE seed, sealed under this token's record key. Same plaintext fleet-wide. */
  fleetAkeSealed: 'fleet-ake-sealed',
  /** Data object: the replica's rollback anchor (latest durable log position and hash), sealed. */
  logAnchor: 'log-anchor',
} as const;

/** AAD the fleet AKE seed is sealed with (sealing demands a non-empty AAD). */
export const FLEET_AKE_AAD = new TextEncoder().encode('bkv fleet-ake v1');

export type SealScheme = 'aes-256-gcm' | 'aes-256-cbc-hmac-sha256';
export type HmacAlg = 'sha256' | 'sha512';

export interface TokenDescription {
  label: string;
  slotId: string;
  manufacturer: string;
  model: string;
  serial: string;
  /** Names of the mechanisms the token offers (CKM_*). */
  mechanisms: string[];
  /** The seal construction chosen from the mechanism list. */
  sealScheme: SealScheme;
}

export interface Token {
  readonly label: string;
  describe(): TokenDescription;

  /** Authenticated encryption under a secret key held by the token. AAD is mandatory and non-empty. */
  seal(keyLabel: string, plaintext: Uint8Array, aad: Uint8Array): Uint8Array;
  /** Inverse of seal; throws TokenError code 'SEAL_OPEN_FAILED' on any tampering or wrong key/AAD. */
  open(keyLabel: string, sealed: Uint8Array, aad: Uint8Array): Uint8Array;

  /** HMAC with a token-held secret key. */
  hmac(keyLabel: string, alg: HmacAlg, data: Uint8Array): Uint8Array;

  /** ECDSA P-256 over SHA-256 with the token-held private key; signature is r||s (64 bytes). */
  sign(keyLabel: string, data: Uint8Array): Uint8Array;
  /** Verify an ECDSA P-256 r||s signature against an uncompressed SEC1 public key (65 bytes). */
  verify(publicKey: Uint8Array, data: Uint8Array, signature: Uint8Array): boolean;
  /** Uncompressed SEC1 public key (65 bytes) of the token's key pair with this label. */
  publicKey(keyLabel: string): Uint8Array;

  /** Value of a (non-secret) data object, e.g. the sealed fleet AKE seed. */
  readData(label: string): Uint8Array;

  /**
   * Create or overwrite a small non-secret token data object (CKO_DATA, token object). The firmware
   * keeps its rollback anchor here: the host can roll its disk back but not the token. A write is
   * atomic even against a kill of the process: afterwards the object holds the old value or the new.
   */
  writeData(label: string, value: Uint8Array): void;

  /** Random bytes from the token's generator. */
  random(length: number): Uint8Array;

  close(): void;
}
