// The device <-> ChatD hop: routes, WebSocket frames and error replies. ChatD (server) and the device's
// transport (client) both encode and decode here and nowhere else. Bodies stay opaque: a frame carries
// the device's vault message or the vault's reply as bytes, never anything ChatD can interpret.
import { InputError } from './errors.ts';
import { CHATD_CODE_RE as CODE_RE } from './names.ts';

export const DEVICE_FRAMES_VERSION = 1;
/** POST, `Authorization: Bearer <token>`, body = the device's vault message (opaque bytes). */
export const CHATD_HTTP_PATH = '/v1/vault';
/** WebSocket upgrade; token in the Authorization header or in a first AUTH frame. */
export const CHATD_WS_PATH = '/v1/ws';
/** GET, no auth: 200 once ChatD is listening (for process supervisors). */
export const CHATD_HEALTH_PATH = '/v1/health';

/**
 * WebSocket frame layout (binary messages only, big-endian):
 *   byte 0     version (DEVICE_FRAMES_VERSION)
 *   byte 1     kind (FrameKind)
 *   bytes 2-5  request id, u32, chosen by the device; echoed in the REPLY/ERROR it gets back
 *   bytes 6-   payload
 */
export const FRAME_HEADER_BYTES = 6;

export const FrameKind = {
  /** device -> ChatD, id 0, payload = the account token (UTF-8). Only as the first frame. */
  Auth: 0x01,
  /** device -> ChatD, payload = one vault message. */
  Request: 0x02,
  /** ChatD -> device, id 0, empty payload: authenticated, requests may flow. */
  Ready: 0x81,
  /** ChatD -> device, payload = the vault's reply bytes for request `id`. */
  Reply: 0x82,
  /** ChatD -> device, payload = a ChatdErrorBody (UTF-8 JSON) for request `id` (0: the session). */
  Error: 0x83,
} as const;
export type FrameKind = (typeof FrameKind)[keyof typeof FrameKind];

const KINDS = new Set<number>(Object.values(FrameKind));

export interface DeviceFrame {
  kind: FrameKind;
  id: number;
  payload: Uint8Array;
}

/** Stable error codes ChatD replies with, and the HTTP status each one travels under. */
export const CHATD_ERROR_STATUS = {
  BAD_REQUEST: 400,
  UNAUTHORIZED: 401,
  NOT_FOUND: 404,
  METHOD_NOT_ALLOWED: 405,
  /** The whole HTTP request (headers and body) did not arrive within ChatD's request timeout. */
  REQUEST_TIMEOUT: 408,
  BODY_TOO_LARGE: 413,
  /** The vault answered with a typed error (see `vaultCode`). */
  VAULT_REJECTED: 422,
  RATE_LIMITED: 429,
  TOO_MANY_IN_FLIGHT: 429,
  /** A bug in ChatD; the message says nothing more. */
  INTERNAL: 500,
  /** ChatD could not reach the vault, or the vault's reply was not a relay reply. */
  VAULT_UNAVAILABLE: 502,
  /** ChatD is shutting down, or the vault said it cannot serve (e.g. no quorum). */
  UNAVAILABLE: 503,
  VAULT_TIMEOUT: 504,
} as const;
export type ChatdErrorCode = keyof typeof CHATD_ERROR_STATUS;

/** The body of every ChatD error: HTTP error responses (application/json) and ERROR frames. */
export interface ChatdErrorBody {
  v: typeof DEVICE_FRAMES_VERSION;
  code: ChatdErrorCode;
  status: number;
  message: string;
  /** With RATE_LIMITED / TOO_MANY_IN_FLIGHT: how long to wait before retrying. */
  retryAfterMs?: number;
  /** With VAULT_REJECTED / UNAVAILABLE from the vault: the vault's own error code. */
  vaultCode?: string;
}

export class FrameError extends InputError {
  constructor(message: string) {
    super(message, 'BAD_DEVICE_FRAME');
  }
}

/** Largest id a frame can carry; devices wrap around to 1 (0 is the session). */
export const MAX_FRAME_ID = 0xffff_ffff;
/** Tokens are short ASCII strings; anything longer in an AUTH frame is refused unread. */
export const MAX_TOKEN_BYTES = 256;

export function encodeFrame(f: DeviceFrame): Uint8Array {
  if (!KINDS.has(f.kind)) throw new FrameError(`unknown frame kind ${f.kind}`);
  if (!Number.isInteger(f.id) || f.id < 0 || f.id > MAX_FRAME_ID) throw new FrameError('frame id must be a u32');
  const out = new Uint8Array(FRAME_HEADER_BYTES + f.payload.length);
  out[0] = DEVICE_FRAMES_VERSION;
  out[1] = f.kind;
  new DataView(out.buffer).setUint32(2, f.id);
  out.set(f.payload, FRAME_HEADER_BYTES);
  return out;
}

/** Decodes one frame; the payload is a view into `bytes` (no copy). */
export function decodeFrame(bytes: Uint8Array): DeviceFrame {
  if (!(bytes instanceof Uint8Array)) throw new FrameError('frame is not bytes');
  if (bytes.length < FRAME_HEADER_BYTES) throw new FrameError('frame shorter than its header');
  if (bytes[0] !== DEVICE_FRAMES_VERSION) throw new FrameError(`unsupported frame version ${bytes[0]}`);
  const kind = bytes[1]!;
  if (!KINDS.has(kind)) throw new FrameError(`unknown frame kind ${kind}`);
  const id = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength).getUint32(2);
  return { kind: kind as FrameKind, id, payload: bytes.subarray(FRAME_HEADER_BYTES) };
}

export function chatdError(
  code: ChatdErrorCode,
  message: string,
  extra: { retryAfterMs?: number; vaultCode?: string; status?: number } = {},
): ChatdErrorBody {
  const body: ChatdErrorBody = { v: DEVICE_FRAMES_VERSION, code, status: extra.status ?? CHATD_ERROR_STATUS[code], message };
  if (extra.retryAfterMs !== undefined) body.retryAfterMs = Math.max(0, Math.ceil(extra.retryAfterMs));
  if (extra.vaultCode !== undefined) body.vaultCode = extra.vaultCode;
  return body;
}

export function encodeErrorBody(e: ChatdErrorBody): Uint8Array {
  return new TextEncoder().encode(JSON.stringify(e));
}

/** Whether `s` may travel as a `vaultCode` (upper-case identifier, at most 64 characters). */
export function isWireCode(s: string): boolean {
  return CODE_RE.test(s);
}

export function decodeErrorBody(bytes: Uint8Array): ChatdErrorBody {
  if (bytes.length === 0 || bytes.length > 4096) throw new FrameError('error body empty or too large');
  let m: unknown;
  try {
    m = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(bytes));
  } catch {
    throw new FrameError('error body is not UTF-8 JSON');
  }
  if (typeof m !== 'object' || m === null || Array.isArray(m)) throw new FrameError('error body is not an object');
  const o = m as Record<string, unknown>;
  if (o.v !== DEVICE_FRAMES_VERSION) throw new FrameError(`unsupported error body version ${String(o.v)}`);
  if (typeof o.code !== 'string' || !(o.code in CHATD_ERROR_STATUS)) throw new FrameError('error body has an unknown code');
  if (typeof o.status !== 'number' || !Number.isInteger(o.status) || o.status < 400 || o.status > 599) {
    throw new FrameError('error body has a bad status');
  }
  if (typeof o.message !== 'string') throw new FrameError('error body has no message');
  const out: ChatdErrorBody = { v: DEVICE_FRAMES_VERSION, code: o.code as ChatdErrorCode, status: o.status, message: o.message };
  if (o.retryAfterMs !== undefined) {
    if (typeof o.retryAfterMs !== 'number' || !(o.retryAfterMs >= 0)) throw new FrameError('error body has a bad retryAfterMs');
    out.retryAfterMs = o.retryAfterMs;
  }
  if (o.vaultCode !== undefined) {
    if (typeof o.vaultCode !== 'string' || !CODE_RE.test(o.vaultCode)) throw new FrameError('error body has a bad vaultCode');
    out.vaultCode = o.vaultCode;
  }
  return out;
}
