// K in transit between the device and the vault, both directions, in one place:
//
// - upload (registration): the device encrypts K to the vault's AKE public key, which it PINS (from the
//   fleet manifest / app config, never from a message ChatD relayed): ephemeral DH on the suite's group,
//   HKDF-SHA256, AES-256-GCM. The AAD binds the user, the suite and a hash of the OPAQUE record, so
//   ChatD cannot pair a victim's upload with a record of its own and later "recover" the victim's K.
//   The same DH also yields a confirmation key: the vault's Registered reply carries a MAC only the
//   real vault can compute, so ChatD cannot fake a successful registration.
// - release (recovery): K encrypted under a key derived from the OPAQUE session key.
//
// The DH comes from protocol/opaque's group API (the `KeyAgreement` shape is its DhGroup's); AES-GCM
// and HKDF are node:crypto (pure computation, no I/O).
import { createCipheriv, createDecipheriv, createHash, createHmac, hkdfSync, timingSafeEqual } from 'node:crypto';
import { InputError } from './errors.ts';

export const K_BYTES = 32;
const NONCE = 12;
const TAG = 16;
const UPLOAD_LABEL = 'bkv K upload v1';
const RELEASE_LABEL = 'bkv K release v1';
const CONFIRM_LABEL = 'bkv registered v1';

/** The part of protocol/opaque's DhGroup this needs. */
export interface KeyAgreement {
  readonly Npk: number;
  deriveKeyPair(seed: Uint8Array): { privateKey: Uint8Array; publicKey: Uint8Array };
  dh(privateKey: Uint8Array, publicKey: Uint8Array): Uint8Array;
  checkPublicKey(pk: Uint8Array): void;
}

export class KBoxError extends InputError {
  constructor(code: 'BAD_K_UPLOAD' | 'BAD_K_RELEASE' | 'BAD_CONFIRMATION', message: string) {
    super(message, code);
  }
}

const enc = new TextEncoder();

function lp(b: Uint8Array): Uint8Array {
  const out = new Uint8Array(2 + b.length);
  out[0] = b.length >> 8;
  out[1] = b.length & 0xff;
  out.set(b, 2);
  return out;
}

function cat(...parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}

function uploadAad(user: string, suite: string, record: Uint8Array): Uint8Array {
  const recordHash = createHash('sha256').update(record).digest();
  return cat(enc.encode(UPLOAD_LABEL), lp(enc.encode(suite)), lp(enc.encode(user)), recordHash);
}

function uploadKeys(shared: Uint8Array, ephPk: Uint8Array, serverPk: Uint8Array): { encKey: Uint8Array; confirmKey: Uint8Array } {
  const okm = new Uint8Array(hkdfSync('sha256', shared, cat(ephPk, serverPk), enc.encode(UPLOAD_LABEL), 64));
  return { encKey: okm.subarray(0, 32), confirmKey: okm.subarray(32, 64) };
}

function gcmSeal(key: Uint8Array, nonce: Uint8Array, pt: Uint8Array, aad: Uint8Array): Uint8Array {
  const c = createCipheriv('aes-256-gcm', key, nonce);
  c.setAAD(aad);
  const ct = Buffer.concat([c.update(pt), c.final()]);
  return cat(nonce, ct, c.getAuthTag());
}

function gcmOpen(key: Uint8Array, box: Uint8Array, aad: Uint8Array): Uint8Array | undefined {
  if (box.length < NONCE + TAG) return undefined;
  try {
    const d = createDecipheriv('aes-256-gcm', key, box.subarray(0, NONCE));
    d.setAAD(aad);
    d.setAuthTag(box.subarray(box.length - TAG));
    return new Uint8Array(Buffer.concat([d.update(box.subarray(NONCE, box.length - TAG)), d.final()]));
  } catch {
    return undefined;
  }
}

export interface UploadContext {
  user: string;
  suite: string;
  /** The serialized OPAQUE registration record sent alongside. */
  record: Uint8Array;
}

/** Device side. Returns the upload bytes and the key that checks the vault's Registered.confirm. */
export function sealKUpload(
  dh: KeyAgreement,
  rng: (n: number) => Uint8Array,
  pinnedServerPublicKey: Uint8Array,
  ctx: UploadContext,
  k: Uint8Array,
): { kUpload: Uint8Array; confirmKey: Uint8Array } {
  if (k.length !== K_BYTES) throw new KBoxError('BAD_K_UPLOAD', `K must be ${K_BYTES} bytes`);
  dh.checkPublicKey(pinnedServerPublicKey);
  const eph = dh.deriveKeyPair(rng(32));
  const shared = dh.dh(eph.privateKey, pinnedServerPublicKey);
  const { encKey, confirmKey } = uploadKeys(shared, eph.publicKey, pinnedServerPublicKey);
  const box = gcmSeal(encKey, rng(NONCE), k, uploadAad(ctx.user, ctx.suite, ctx.record));
  return { kUpload: cat(eph.publicKey, box), confirmKey };
}

/** Vault side: K and the confirmation key, or KBoxError BAD_K_UPLOAD (wrong key, tampered, re-paired). */
export function openKUpload(
  dh: KeyAgreement,
  server: { privateKey: Uint8Array; publicKey: Uint8Array },
  ctx: UploadContext,
  kUpload: Uint8Array,
): { k: Uint8Array; confirmKey: Uint8Array } {
  if (kUpload.length !== dh.Npk + NONCE + K_BYTES + TAG) throw new KBoxError('BAD_K_UPLOAD', 'K upload has the wrong length');
  const ephPk = kUpload.subarray(0, dh.Npk);
  let shared: Uint8Array;
  try {
    dh.checkPublicKey(ephPk);
    shared = dh.dh(server.privateKey, ephPk);
  } catch {
    throw new KBoxError('BAD_K_UPLOAD', 'K upload ephemeral key is not a valid group element');
  }
  const { encKey, confirmKey } = uploadKeys(shared, ephPk, server.publicKey);
  const k = gcmOpen(encKey, kUpload.subarray(dh.Npk), uploadAad(ctx.user, ctx.suite, ctx.record));
  if (!k) throw new KBoxError('BAD_K_UPLOAD', 'K upload does not open (wrong vault key, or tampered / re-paired)');
  return { k, confirmKey };
}

/** Registered.confirm: proves to the device that the vault (holder of the AKE key) stored this record. */
export function registrationConfirm(confirmKey: Uint8Array, ctx: UploadContext): Uint8Array {
  return new Uint8Array(createHmac('sha256', confirmKey).update(enc.encode(CONFIRM_LABEL)).update(uploadAad(ctx.user, ctx.suite, ctx.record)).digest());
}

export function checkRegistrationConfirm(confirmKey: Uint8Array, ctx: UploadContext, confirm: Uint8Array): void {
  const want = registrationConfirm(confirmKey, ctx);
  if (confirm.length !== want.length || !timingSafeEqual(confirm, want)) {
    throw new KBoxError('BAD_CONFIRMATION', 'registration confirmation does not verify: the reply did not come from the pinned vault');
  }
}

function releaseKey(sessionKey: Uint8Array, session: Uint8Array, user: string): Uint8Array {
  return new Uint8Array(hkdfSync('sha256', sessionKey, session, cat(enc.encode(RELEASE_LABEL), lp(enc.encode(user))), 32));
}

function releaseAad(session: Uint8Array, user: string): Uint8Array {
  return cat(enc.encode(RELEASE_LABEL), lp(session), lp(enc.encode(user)));
}

/** Vault side: Released.kEnc (nonce || ct || tag, 60 bytes). */
export function sealKRelease(rng: (n: number) => Uint8Array, sessionKey: Uint8Array, session: Uint8Array, user: string, k: Uint8Array): Uint8Array {
  return gcmSeal(releaseKey(sessionKey, session, user), rng(NONCE), k, releaseAad(session, user));
}

/** Device side: K, or KBoxError BAD_K_RELEASE. */
export function openKRelease(sessionKey: Uint8Array, session: Uint8Array, user: string, kEnc: Uint8Array): Uint8Array {
  const k = gcmOpen(releaseKey(sessionKey, session, user), kEnc, releaseAad(session, user));
  if (!k || k.length !== K_BYTES) throw new KBoxError('BAD_K_RELEASE', 'released K does not open under this session');
  return k;
}
