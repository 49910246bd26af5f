// The ChatD -> vault hop. ChatD has authenticated the device and names the user; the body is the
// device's vault message, which ChatD cannot read and must not alter. Encoded here and nowhere else.
import { Packr } from 'msgpackr';
import { InputError } from './errors.ts';
import { USER_RE } from './names.ts';

export const RELAY_VERSION = 1;
/** Largest device message the vault accepts through ChatD (OPAQUE messages and a sealed K are < 1 KiB). */
export const MAX_RELAY_BODY = 16 * 1024;
/** The vault's HTTP route for relayed requests (POST, body = encodeRelayRequest). */
export const RELAY_PATH = '/v1/relay';

/**
 * A routing hint a device may give (its data center: a replica name), carried by ChatD to the fleet
 * front, which lets the request enter there. Only a hint: it changes where, never what.
 */
export const REGION_HEADER = 'x-bkv-region';
const REGION_RE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;
export function isRegionHint(v: unknown): v is string {
  return typeof v === 'string' && REGION_RE.test(v);
}

export interface RelayRequest {
  v: typeof RELAY_VERSION;
  /** Account identity as ChatD authenticated it (e.g. the phone number). */
  user: string;
  /** The device's vault message, opaque to ChatD. */
  body: Uint8Array;
}

export type RelayReply =
  | { v: typeof RELAY_VERSION; ok: true; body: Uint8Array }
  | { v: typeof RELAY_VERSION; ok: false; code: string; message: string };

const packr = new Packr({ useRecords: false, mapsAsObjects: true });

export class RelayError extends InputError {
  constructor(message: string) {
    super(message, 'BAD_RELAY_MESSAGE');
  }
}


export function encodeRelayRequest(r: Omit<RelayRequest, 'v'>): Uint8Array {
  checkUser(r.user);
  checkBody(r.body);
  return packr.pack({ v: RELAY_VERSION, user: r.user, body: r.body });
}

export function decodeRelayRequest(bytes: Uint8Array): RelayRequest {
  const m = unpack(bytes);
  if (m.v !== RELAY_VERSION) throw new RelayError(`unsupported relay version ${String(m.v)}`);
  checkUser(m.user);
  checkBody(m.body);
  return { v: RELAY_VERSION, user: m.user as string, body: m.body as Uint8Array };
}

export function encodeRelayReply(r: { ok: true; body: Uint8Array } | { ok: false; code: string; message: string }): Uint8Array {
  return packr.pack({ v: RELAY_VERSION, ...r });
}

export function decodeRelayReply(bytes: Uint8Array): RelayReply {
  const m = unpack(bytes);
  if (m.v !== RELAY_VERSION) throw new RelayError(`unsupported relay version ${String(m.v)}`);
  if (m.ok === true) {
    checkBody(m.body);
    return { v: RELAY_VERSION, ok: true, body: m.body as Uint8Array };
  }
  if (m.ok === false && typeof m.code === 'string' && typeof m.message === 'string') {
    return { v: RELAY_VERSION, ok: false, code: m.code, message: m.message };
  }
  throw new RelayError('malformed relay reply');
}

function unpack(bytes: Uint8Array): Record<string, unknown> {
  if (!(bytes instanceof Uint8Array) || bytes.length === 0 || bytes.length > MAX_RELAY_BODY + 256) {
    throw new RelayError('relay message empty or too large');
  }
  let m: unknown;
  try {
    m = packr.unpack(bytes);
  } catch {
    throw new RelayError('relay message is not valid msgpack');
  }
  if (typeof m !== 'object' || m === null || Array.isArray(m)) throw new RelayError('relay message is not a map');
  return m as Record<string, unknown>;
}

function checkUser(user: unknown): void {
  if (typeof user !== 'string' || !USER_RE.test(user)) throw new RelayError('relay user is missing or malformed');
}

function checkBody(body: unknown): void {
  if (!(body instanceof Uint8Array)) throw new RelayError('relay body is not bytes');
  if (body.length === 0 || body.length > MAX_RELAY_BODY) throw new RelayError(`relay body must be 1..${MAX_RELAY_BODY} bytes`);
}
