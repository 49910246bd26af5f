// K in transit between the device and the vault, in one place:
//
// - upload (registration): K itself travels in RegisterFinish, which only ever moves inside the
//   forward-secret device-vault session (protocol/session.ts). The vault's Registered reply carries
//   registrationConfirm(): a digest of exactly what it committed (user, suite, attempt limit, ticket,
//   record, key stretching), which the device compares with what it sent, so a vault-side change of
//   any of them is seen.
// - release (recovery): K encrypted under a key derived from the OPAQUE session key (inside the
//   session too: two layers, so neither alone releases K).
import { createCipheriv, createDecipheriv, createHash, hkdfSync, timingSafeEqual } from 'node:crypto';
import { InputError } from './errors.ts';

export const K_BYTES = 32;
const NONCE = 12;
const TAG = 16;
const RELEASE_LABEL = 'bkv K release v1';
const CONFIRM_LABEL = 'bkv registered v2';

export class KBoxError extends InputError {
  constructor(code: 'BAD_K_RELEASE' | 'BAD_CONFIRMATION', message: string) {
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

/** What a registration binds: the device computes it from what it sent, the vault from what it committed. */
export interface RegistrationContext {
  user: string;
  suite: string;
  limit: number;
  ticket: Uint8Array;
  /** The serialized OPAQUE registration record. */
  record: Uint8Array;
  ksf: string;
}

export function registrationConfirm(ctx: RegistrationContext): Uint8Array {
  const limit = Uint8Array.of(ctx.limit >> 8, ctx.limit & 0xff);
  const recordHash = createHash('sha256').update(ctx.record).digest();
  return new Uint8Array(
    createHash('sha256')
      .update(cat(enc.encode(CONFIRM_LABEL), lp(enc.encode(ctx.user)), lp(enc.encode(ctx.suite)), limit, lp(ctx.ticket), recordHash, lp(enc.encode(ctx.ksf))))
      .digest(),
  );
}

export function checkRegistrationConfirm(ctx: RegistrationContext, confirm: Uint8Array): void {
  const want = registrationConfirm(ctx);
  if (confirm.length !== want.length || !timingSafeEqual(confirm, want)) {
    throw new KBoxError('BAD_CONFIRMATION', 'the vault confirmed another registration than the one sent (user, limit, ticket, record or key stretching differ)');
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
