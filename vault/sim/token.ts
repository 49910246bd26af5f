// The simulator's token: the Token interface with a real token's semantics (AES-256-GCM seals that
// refuse any other key or AAD, HMAC under token-held keys, P-256 signatures, data objects that
// outlive crashes and disks) in memory, and every random byte drawn from the seed, so a run replays
// exactly and a token write costs nothing. A fleet's tokens share the fleet secrets (OPRF seed,
// sealed AKE seed) and each has its own record key, as provisioning leaves real ones.
// Not a production token: its keys are in JavaScript memory.
import { createCipheriv, createDecipheriv, createHmac } from 'node:crypto';
import { p256 } from '@noble/curves/nist.js';
import { BkvError } from '../../protocol/errors.ts';
import { FLEET_AKE_AAD, KeyLabels, type HmacAlg, type Token, type TokenDescription } from '../../hsm-adapter/token.ts';
import type { Rng } from '../consensus/index.ts';

/** The codes a real token's TokenError carries (KEY_NOT_FOUND, SEAL_OPEN_FAILED, BAD_INPUT), without PKCS#11. */
export class SimTokenError extends BkvError {
  constructor(code: string, message: string, readonly details: { operation: string; tokenLabel: string }) { super(code, message); }
}

const IV = 12;
const TAG = 16;

export interface SimFleetSecrets {
  oprfSeed: Uint8Array;
  akeSeed: Uint8Array;
}

const bytesOf = (rng: Rng, n: number): Uint8Array => {
  const b = new Uint8Array(n);
  for (let i = 0; i < n; i++) b[i] = rng.int(256);
  return b;
};

/** Fleet-wide secrets drawn from the seed (what a key ceremony puts in every token). */
export function simFleetSecrets(rng: Rng): SimFleetSecrets {
  return { oprfSeed: bytesOf(rng, 64), akeSeed: bytesOf(rng, 32) };
}

export class SimToken implements Token {
  private readonly keys = new Map<string, Uint8Array>();
  private readonly data = new Map<string, Uint8Array>();
  private readonly identity: Uint8Array;
  /** Token calls made (the fault wrapper and the trace count the same thing). */
  calls = 0;
  dataWrites = 0;

  constructor(readonly label: string, fleet: SimFleetSecrets, private readonly rng: Rng) {
    this.keys.set(KeyLabels.recordKey, bytesOf(rng, 32));
    this.keys.set(KeyLabels.recordMacKey, bytesOf(rng, 32));
    this.keys.set(KeyLabels.oprfSeed, new Uint8Array(fleet.oprfSeed));
    this.identity = p256.utils.randomSecretKey(bytesOf(rng, 48));
    this.data.set(KeyLabels.fleetAkeSealed, this.seal(KeyLabels.recordKey, fleet.akeSeed, FLEET_AKE_AAD));
  }

  describe(): TokenDescription {
    return { label: this.label, slotId: 'sim', manufacturer: 'bkv simulator', model: 'SimToken', serial: this.label, mechanisms: ['CKM_AES_GCM', 'CKM_SHA256_HMAC', 'CKM_SHA512_HMAC', 'CKM_ECDSA'], sealScheme: 'aes-256-gcm' };
  }

  private key(label: string, op: string): Uint8Array {
    const k = this.keys.get(label);
    if (!k) throw new SimTokenError('KEY_NOT_FOUND', `token '${this.label}' has no key labelled '${label}'`, { operation: op, tokenLabel: this.label });
    return k;
  }

  seal(keyLabel: string, plaintext: Uint8Array, aad: Uint8Array): Uint8Array {
    this.calls++;
    if (aad.length === 0) throw new SimTokenError('BAD_INPUT', 'seal needs a non-empty AAD', { operation: 'seal', tokenLabel: this.label });
    const iv = bytesOf(this.rng, IV);
    const c = createCipheriv('aes-256-gcm', this.key(keyLabel, 'seal'), iv);
    c.setAAD(aad);
    const body = Buffer.concat([c.update(plaintext), c.final()]);
    const out = new Uint8Array(IV + body.length + TAG);
    out.set(iv, 0);
    out.set(body, IV);
    out.set(c.getAuthTag(), IV + body.length);
    return out;
  }

  open(keyLabel: string, sealed: Uint8Array, aad: Uint8Array): Uint8Array {
    this.calls++;
    const fail = (why: string) => new SimTokenError('SEAL_OPEN_FAILED', `cannot open sealed data on token '${this.label}': ${why}`, { operation: 'open', tokenLabel: this.label });
    if (aad.length === 0) throw new SimTokenError('BAD_INPUT', 'open needs a non-empty AAD', { operation: 'open', tokenLabel: this.label });
    if (sealed.length < IV + TAG) throw fail('sealed data too short');
    try {
      const d = createDecipheriv('aes-256-gcm', this.key(keyLabel, 'open'), sealed.subarray(0, IV));
      d.setAAD(aad);
      d.setAuthTag(sealed.subarray(sealed.length - TAG));
      return new Uint8Array(Buffer.concat([d.update(sealed.subarray(IV, sealed.length - TAG)), d.final()]));
    } catch (e) {
      if (e instanceof SimTokenError) throw e;
      throw fail('authentication failed');
    }
  }

  hmac(keyLabel: string, alg: HmacAlg, data: Uint8Array): Uint8Array {
    this.calls++;
    return new Uint8Array(createHmac(alg, this.key(keyLabel, 'hmac')).update(data).digest());
  }

  sign(keyLabel: string, data: Uint8Array): Uint8Array {
    this.calls++;
    if (keyLabel !== KeyLabels.replicaIdentity) throw new SimTokenError('KEY_NOT_FOUND', `token '${this.label}' has no key pair labelled '${keyLabel}'`, { operation: 'sign', tokenLabel: this.label });
    return p256.sign(data, this.identity, { prehash: true, lowS: false });
  }

  verify(publicKey: Uint8Array, data: Uint8Array, signature: Uint8Array): boolean {
    try {
      return p256.verify(signature, data, publicKey, { prehash: true, lowS: false });
    } catch {
      return false;
    }
  }

  publicKey(keyLabel: string): Uint8Array {
    if (keyLabel !== KeyLabels.replicaIdentity) throw new SimTokenError('KEY_NOT_FOUND', `token '${this.label}' has no key pair labelled '${keyLabel}'`, { operation: 'publicKey', tokenLabel: this.label });
    return p256.getPublicKey(this.identity, false);
  }

  readData(label: string): Uint8Array {
    this.calls++;
    const v = this.data.get(label);
    if (!v) throw new SimTokenError('KEY_NOT_FOUND', `token '${this.label}' has no data object labelled '${label}'`, { operation: 'readData', tokenLabel: this.label });
    return new Uint8Array(v);
  }

  writeData(label: string, value: Uint8Array): void {
    this.calls++;
    this.dataWrites++;
    this.data.set(label, new Uint8Array(value));
  }

  random(length: number): Uint8Array {
    this.calls++;
    return bytesOf(this.rng, length);
  }

  close(): void { /* nothing held */ }
}
