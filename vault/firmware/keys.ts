// The firmware's fleet-wide symmetric keys, derived IN the token from the OPRF seed (the one secret
// every token shares) and held in firmware memory, like the AKE key:
//   HMAC-SHA-512(oprf_seed, "bkv entry key v1") = entryKey (32) || ticketKey (32).
// OPAQUE's own uses of the seed are HMAC(seed, credential_identifier || "OprfKey" || 0x01) and
// HMAC(seed, cid || "bkv-Fake..." || 0x01): they all end in a label and 0x01, never in "v1", so no input
// collides with ours.
import { createCipheriv, createDecipheriv, createHmac, timingSafeEqual } from 'node:crypto';
import { KeyLabels, type Token } from '../../hsm-adapter/token.ts';
import { InputError } from '../../protocol/errors.ts';
import { TICKET_BYTES } from '../../protocol/wire.ts';
import { ID_BYTES } from './entries.ts';
import { FirmwareError } from './errors.ts';

const enc = new TextEncoder();
const NONCE = 12;
const TAG = 16;

export interface FleetKeys {
  /** AES-256-GCM key for K inside log entries and snapshots. */
  entryKey: Uint8Array;
  /** HMAC-SHA-256 key for registration tickets. */
  ticketKey: Uint8Array;
}

export function deriveFleetKeys(token: Token): FleetKeys {
  const okm = token.hmac(KeyLabels.oprfSeed, 'sha512', enc.encode('bkv entry key v1'));
  return { entryKey: okm.slice(0, 32), ticketKey: okm.slice(32, 64) };
}

function kAad(user: string, oprfId: Uint8Array): Uint8Array {
  const u = enc.encode(user);
  const out = new Uint8Array(19 + 1 + u.length + oprfId.length);
  out.set(enc.encode('bkv entry K v1 user'), 0);
  out[19] = u.length;
  out.set(u, 20);
  out.set(oprfId, 20 + u.length);
  return out;
}

/** K sealed for a log entry / snapshot: nonce (12) || ct (32) || tag (16). Bound to user and registration. */
export function sealK(keys: FleetKeys, rng: (n: number) => Uint8Array, user: string, oprfId: Uint8Array, k: Uint8Array): Uint8Array {
  const nonce = rng(NONCE);
  const c = createCipheriv('aes-256-gcm', keys.entryKey, nonce);
  c.setAAD(kAad(user, oprfId));
  const ct = Buffer.concat([c.update(k), c.final()]);
  const out = new Uint8Array(NONCE + ct.length + TAG);
  out.set(nonce, 0);
  out.set(ct, NONCE);
  out.set(c.getAuthTag(), NONCE + ct.length);
  return out;
}

export function openK(keys: FleetKeys, user: string, oprfId: Uint8Array, sealed: Uint8Array): Uint8Array {
  try {
    const d = createDecipheriv('aes-256-gcm', keys.entryKey, sealed.subarray(0, NONCE));
    d.setAAD(kAad(user, oprfId));
    d.setAuthTag(sealed.subarray(sealed.length - TAG));
    return new Uint8Array(Buffer.concat([d.update(sealed.subarray(NONCE, sealed.length - TAG)), d.final()]));
  } catch {
    // Committed state the firmware itself sealed does not open: state is corrupt, not the device's fault.
    throw new FirmwareError('TAMPERED', 'a sealed K in the committed state does not open');
  }
}

function ticketMac(keys: FleetKeys, suite: string, user: string, oprfId: Uint8Array, basis: number): Uint8Array {
  const h = createHmac('sha256', keys.ticketKey);
  h.update(enc.encode('bkv reg ticket v2'));
  h.update(enc.encode(`${suite}\0${user}\0${basis}\0`));
  h.update(oprfId);
  return new Uint8Array(h.digest()).subarray(0, TICKET_BYTES - ID_BYTES - 8);
}

/**
 * RegisterResponse.ticket = oprfId (16) || basis (u64: the index the vault had applied) || MAC (16). It
 * names a fresh per-registration OPRF key (so RegisterStart is never an oracle for a live record's
 * key) and the state it was issued against (so a registration cannot land on a record that changed
 * since, nor bring a deleted one back: state.ts isStaleRegistration).
 */
export function makeTicket(keys: FleetKeys, suite: string, user: string, oprfId: Uint8Array, basis: number): Uint8Array {
  const t = new Uint8Array(TICKET_BYTES);
  t.set(oprfId, 0);
  new DataView(t.buffer).setBigUint64(ID_BYTES, BigInt(basis));
  t.set(ticketMac(keys, suite, user, oprfId, basis), ID_BYTES + 8);
  return t;
}

export function openTicket(keys: FleetKeys, suite: string, user: string, ticket: Uint8Array): { oprfId: Uint8Array; basis: number } {
  const oprfId = ticket.slice(0, ID_BYTES);
  const basis = Number(new DataView(ticket.buffer, ticket.byteOffset, ticket.length).getBigUint64(ID_BYTES));
  const want = ticketMac(keys, suite, user, oprfId, basis);
  const got = ticket.subarray(ID_BYTES + 8);
  if (got.length !== want.length || !timingSafeEqual(got, want)) throw new InputError('registration ticket does not verify', 'BAD_TICKET');
  return { oprfId, basis };
}
