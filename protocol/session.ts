// The device <-> vault session: what ChatD relays between a device and the vault firmware, and the
// only bytes it sees. Encoded here and nowhere else, for both ends.
//
// Construction: Noise NK (Noise Protocol Framework, revision 34), Noise_NK_25519_ChaChaPoly_SHA256,
// the pattern Juicebox and Signal's CDSI/SVR2 use for the same job:
//
//     <- s                 the vault's session key, PINNED by the device (vault-keys.json, app config)
//     ...
//     -> e, es             Hello: the device's first request (encrypted to the pinned key)
//     <- e, ee             Welcome: the vault's first reply (forward secret; only the key holder can send it)
//     -> transport         Next: the device's second request (forward secret: K travels here)
//     <- transport         Final: the vault's second reply
//
// The prologue binds the account the device speaks for, so a ChatD that relays Alice's Hello as Bob's
// gets a Hello the vault cannot open. Every plaintext is padded to one fixed size per position, so the
// four frame kinds each have one length whatever the request, its outcome, or whether the user exists.
// Noise's HKDF is RFC 5869 HKDF with the chaining key as salt and empty info, so node's hkdfSync
// computes it; AEAD and hash are node:crypto; X25519 comes from the DH group passed in (the native
// libsodium binding on the vault, for speed). Checked against the published Noise test vectors
// (test/protocol/session.test.ts).
import { createCipheriv, createDecipheriv, createHash, hkdfSync } from 'node:crypto';
import { InputError } from './errors.ts';
import { concat as cat } from './opaque/hash.ts';
import { ERROR_CODE_RE } from './names.ts';

export const SESSION_VERSION = 2;
export const NOISE_PROTOCOL_NAME = 'Noise_NK_25519_ChaChaPoly_SHA256';

/** Byte 1 of every frame. */
export const SessionKind = {
  Hello: 0x01,
  Next: 0x02,
  Welcome: 0x81,
  Final: 0x82,
  /** Unauthenticated: the vault could not open the session (or the relay refused it). Never an outcome. */
  Refused: 0xee,
} as const;

/** Plaintext sizes per position (a 2-byte length, the message, zero padding). */
export const PLAINTEXT_BYTES = { hello: 256, welcome: 512, next: 640, final: 160 } as const;
const KEY = 32;
const TAG = 16;
const HEADER = 2;
/** Frame sizes ChatD sees: one per position. */
export const FRAME_BYTES = {
  hello: HEADER + KEY + PLAINTEXT_BYTES.hello + TAG,
  welcome: HEADER + KEY + PLAINTEXT_BYTES.welcome + TAG,
  next: HEADER + KEY + PLAINTEXT_BYTES.next + TAG,
  final: HEADER + PLAINTEXT_BYTES.final + TAG,
} as const;

/** The X25519 operations the session needs (protocol/opaque's x25519DhGroup has this shape). */
export interface SessionDh {
  publicKey(privateKey: Uint8Array): Uint8Array;
  /** Throws on a low-order or malformed public key. */
  dh(privateKey: Uint8Array, publicKey: Uint8Array): Uint8Array;
}

export type SessionErrorCode =
  | 'BAD_SESSION_FRAME'
  /** The frame does not open: tampered, replayed into another session, wrong user, or the wrong pinned key. */
  | 'SESSION_REJECTED'
  | 'SESSION_REFUSED';

export class SessionError extends InputError {
  /** For SESSION_REFUSED: the code the refusal carried (unauthenticated: a hint, never an outcome). */
  readonly refusedCode?: string;
  constructor(code: SessionErrorCode, message: string, refusedCode?: string) {
    super(message, code);
    this.refusedCode = refusedCode;
  }
}

const enc = new TextEncoder();

/** The prologue: this protocol's label and the account the device speaks for. */
export function sessionPrologue(user: string): Uint8Array {
  return cat(enc.encode('bkv session v1'), Uint8Array.of(0), enc.encode(user));
}

/** The fleet's RFC 9807 server identity: its session public key, labelled. Device and vault compute it alike. */
export function fleetIdentity(sessionKey: Uint8Array): Uint8Array {
  return cat(enc.encode('bkv fleet '), sessionKey);
}

// ---- Noise: CipherState, SymmetricState (spec §5.1, §5.2) ----

function nonce(n: number): Uint8Array {
  const b = new Uint8Array(12);
  new DataView(b.buffer).setBigUint64(4, BigInt(n), true);
  return b;
}

function aeadSeal(k: Uint8Array, n: number, ad: Uint8Array, pt: Uint8Array): Uint8Array {
  const c = createCipheriv('chacha20-poly1305', k, nonce(n), { authTagLength: TAG });
  c.setAAD(ad, { plaintextLength: pt.length });
  const ct = c.update(pt);
  c.final();
  return cat(ct, c.getAuthTag());
}

function aeadOpen(k: Uint8Array, n: number, ad: Uint8Array, ct: Uint8Array): Uint8Array | null {
  if (ct.length < TAG) return null;
  try {
    const d = createDecipheriv('chacha20-poly1305', k, nonce(n), { authTagLength: TAG });
    d.setAAD(ad, { plaintextLength: ct.length - TAG });
    d.setAuthTag(ct.subarray(ct.length - TAG));
    const pt = d.update(ct.subarray(0, ct.length - TAG));
    d.final();
    return new Uint8Array(pt);
  } catch {
    return null;
  }
}

function sha256(...parts: Uint8Array[]): Uint8Array {
  const h = createHash('sha256');
  for (const p of parts) h.update(p);
  return new Uint8Array(h.digest());
}

/** Noise HKDF(ck, ikm, 2) = RFC 5869 HKDF-SHA256(salt = ck, ikm, info = "", 64), split in two. */
function hkdf2(ck: Uint8Array, ikm: Uint8Array): [Uint8Array, Uint8Array] {
  const okm = new Uint8Array(hkdfSync('sha256', ikm, ck, new Uint8Array(0), 64));
  return [okm.slice(0, 32), okm.slice(32, 64)];
}

class Symmetric {
  ck: Uint8Array;
  h: Uint8Array;
  k: Uint8Array | null = null;
  n = 0;
  constructor(prologue: Uint8Array) {
    const name = enc.encode(NOISE_PROTOCOL_NAME);
    // HASHLEN = 32 and the name is exactly 32 bytes: h = name (spec §5.2 InitializeSymmetric).
    this.h = name.length <= 32 ? cat(name, new Uint8Array(32 - name.length)) : sha256(name);
    this.ck = this.h.slice();
    this.mixHash(prologue);
  }
  mixHash(data: Uint8Array): void {
    this.h = sha256(this.h, data);
  }
  mixKey(ikm: Uint8Array): void {
    [this.ck, this.k] = hkdf2(this.ck, ikm);
    this.n = 0;
  }
  encryptAndHash(pt: Uint8Array): Uint8Array {
    const ct = this.k ? aeadSeal(this.k, this.n++, this.h, pt) : pt;
    this.mixHash(ct);
    return ct;
  }
  decryptAndHash(ct: Uint8Array): Uint8Array | null {
    let pt: Uint8Array | null = ct;
    if (this.k) pt = aeadOpen(this.k, this.n++, this.h, ct);
    if (pt) this.mixHash(ct);
    return pt;
  }
  split(): [Uint8Array, Uint8Array] {
    return hkdf2(this.ck, new Uint8Array(0));
  }
}

/** After the handshake: one key per direction (initiator -> responder, responder -> initiator). */
export interface Transport {
  /** Key of the device's messages to the vault (Noise c1). */
  readonly toVault: Uint8Array;
  /** Key of the vault's messages to the device (Noise c2). */
  readonly toDevice: Uint8Array;
  /** The handshake hash: names this session. */
  readonly handshakeHash: Uint8Array;
}

/**
 * The Noise NK messages as the spec defines them (no padding, no framing): exported so the test
 * vectors can drive them, used by the framed API below.
 */
export const noiseNK = {
  /** -> e, es, payload. */
  writeHello(dh: SessionDh, prologue: Uint8Array, rs: Uint8Array, e: Uint8Array, payload: Uint8Array) {
    const ss = new Symmetric(prologue);
    ss.mixHash(rs);
    const ePub = dh.publicKey(e);
    ss.mixHash(ePub);
    ss.mixKey(dh.dh(e, rs));
    const ct = ss.encryptAndHash(payload);
    return { message: cat(ePub, ct), state: ss };
  },
  readHello(dh: SessionDh, prologue: Uint8Array, s: { privateKey: Uint8Array; publicKey: Uint8Array }, message: Uint8Array) {
    if (message.length < KEY + TAG) return null;
    const ss = new Symmetric(prologue);
    ss.mixHash(s.publicKey);
    const re = message.slice(0, KEY);
    ss.mixHash(re);
    let shared: Uint8Array;
    try {
      shared = dh.dh(s.privateKey, re);
    } catch {
      return null;
    }
    ss.mixKey(shared);
    const payload = ss.decryptAndHash(message.subarray(KEY));
    return payload ? { payload, re, state: ss } : null;
  },
  /** <- e, ee, payload; then Split. */
  writeWelcome(dh: SessionDh, ss: Symmetric, re: Uint8Array, e: Uint8Array, payload: Uint8Array) {
    const ePub = dh.publicKey(e);
    ss.mixHash(ePub);
    ss.mixKey(dh.dh(e, re));
    const ct = ss.encryptAndHash(payload);
    const [c1, c2] = ss.split();
    return { message: cat(ePub, ct), transport: { toVault: c1, toDevice: c2, handshakeHash: ss.h } as Transport };
  },
  readWelcome(dh: SessionDh, ss: Symmetric, e: Uint8Array, message: Uint8Array) {
    if (message.length < KEY + TAG) return null;
    const re = message.slice(0, KEY);
    ss.mixHash(re);
    let shared: Uint8Array;
    try {
      shared = dh.dh(e, re);
    } catch {
      return null;
    }
    ss.mixKey(shared);
    const payload = ss.decryptAndHash(message.subarray(KEY));
    if (!payload) return null;
    const [c1, c2] = ss.split();
    return { payload, transport: { toVault: c1, toDevice: c2, handshakeHash: ss.h } as Transport };
  },
  /** Transport message n of one direction. */
  seal: (k: Uint8Array, n: number, ad: Uint8Array, pt: Uint8Array) => aeadSeal(k, n, ad, pt),
  open: (k: Uint8Array, n: number, ad: Uint8Array, ct: Uint8Array) => aeadOpen(k, n, ad, ct),
};

export type HandshakeState = Symmetric;

// ---- padding and framing ----

type Position = keyof typeof PLAINTEXT_BYTES;

export function pad(position: Position, message: Uint8Array): Uint8Array {
  const size = PLAINTEXT_BYTES[position];
  if (message.length > size - 2) throw new SessionError('BAD_SESSION_FRAME', `a ${position} message is at most ${size - 2} bytes`);
  const out = new Uint8Array(size);
  out[0] = message.length >> 8;
  out[1] = message.length & 0xff;
  out.set(message, 2);
  return out;
}

export function unpad(position: Position, padded: Uint8Array): Uint8Array {
  const size = PLAINTEXT_BYTES[position];
  if (padded.length !== size) throw new SessionError('BAD_SESSION_FRAME', `${position} plaintext has the wrong size`);
  const n = (padded[0]! << 8) | padded[1]!;
  if (n > size - 2) throw new SessionError('BAD_SESSION_FRAME', `${position} plaintext length is out of range`);
  for (let i = 2 + n; i < size; i++) if (padded[i] !== 0) throw new SessionError('BAD_SESSION_FRAME', `${position} padding is not zero`);
  return padded.slice(2, 2 + n);
}

function header(kind: number): Uint8Array {
  return Uint8Array.of(SESSION_VERSION, kind);
}

/** The frame a vault (or a relay) sends when it cannot open a session. Carries no secret. */
export function encodeRefused(code: string): Uint8Array {
  const c = ERROR_CODE_RE.test(code) ? code : 'SESSION_REJECTED';
  return cat(header(SessionKind.Refused), enc.encode(c));
}

export type SessionFrame =
  | { kind: 'hello'; ephemeral: Uint8Array; noise: Uint8Array }
  | { kind: 'next'; sid: Uint8Array; ciphertext: Uint8Array }
  | { kind: 'welcome'; noise: Uint8Array }
  | { kind: 'final'; ciphertext: Uint8Array }
  | { kind: 'refused'; code: string };

/** Decodes a frame's layout only; nothing in it is trusted until it opens. */
export function decodeSessionFrame(bytes: Uint8Array): SessionFrame {
  if (!(bytes instanceof Uint8Array) || bytes.length < HEADER) throw new SessionError('BAD_SESSION_FRAME', 'session frame too short');
  if (bytes[0] !== SESSION_VERSION) throw new SessionError('BAD_SESSION_FRAME', `unsupported session version ${bytes[0]}`);
  const body = bytes.subarray(HEADER);
  switch (bytes[1]) {
    case SessionKind.Hello:
      if (bytes.length !== FRAME_BYTES.hello) throw new SessionError('BAD_SESSION_FRAME', 'Hello has the wrong size');
      return { kind: 'hello', ephemeral: body.slice(0, KEY), noise: body.slice() };
    case SessionKind.Next:
      if (bytes.length !== FRAME_BYTES.next) throw new SessionError('BAD_SESSION_FRAME', 'Next has the wrong size');
      return { kind: 'next', sid: body.slice(0, KEY), ciphertext: body.slice(KEY) };
    case SessionKind.Welcome:
      if (bytes.length !== FRAME_BYTES.welcome) throw new SessionError('BAD_SESSION_FRAME', 'Welcome has the wrong size');
      return { kind: 'welcome', noise: body.slice() };
    case SessionKind.Final:
      if (bytes.length !== FRAME_BYTES.final) throw new SessionError('BAD_SESSION_FRAME', 'Final has the wrong size');
      return { kind: 'final', ciphertext: body.slice() };
    case SessionKind.Refused: {
      const code = new TextDecoder().decode(body);
      if (!ERROR_CODE_RE.test(code)) throw new SessionError('BAD_SESSION_FRAME', 'Refused frame has a malformed code');
      return { kind: 'refused', code };
    }
    default:
      throw new SessionError('BAD_SESSION_FRAME', `unknown session frame kind ${bytes[1]}`);
  }
}

/** Associated data of a transport frame: its header and the session it belongs to. */
function transportAd(kind: number, sid: Uint8Array): Uint8Array {
  return cat(header(kind), sid);
}

// ---- the device's end ----

/**
 * One exchange with the vault: a Hello and its Welcome, then at most one Next and its Final. Every
 * reply is opened (authenticated) before the caller sees a byte of it.
 */
export class DeviceSession {
  private readonly e: Uint8Array;
  private readonly ePub: Uint8Array;
  private hs: HandshakeState | null = null;
  private transport: Transport | null = null;
  private step: 'new' | 'hello' | 'open' | 'next' | 'done' = 'new';

  constructor(
    private readonly dh: SessionDh,
    private readonly user: string,
    /** The vault's session key, pinned. */
    private readonly vaultKey: Uint8Array,
    rng: (n: number) => Uint8Array,
  ) {
    if (vaultKey.length !== KEY) throw new SessionError('BAD_SESSION_FRAME', 'the pinned vault session key must be 32 bytes');
    this.e = rng(KEY);
    this.ePub = dh.publicKey(this.e);
  }

  hello(message: Uint8Array): Uint8Array {
    if (this.step !== 'new') throw new SessionError('BAD_SESSION_FRAME', 'Hello already sent');
    const { message: noise, state } = noiseNK.writeHello(this.dh, sessionPrologue(this.user), this.vaultKey, this.e, pad('hello', message));
    this.hs = state;
    this.step = 'hello';
    return cat(header(SessionKind.Hello), noise);
  }

  /** The vault's first reply, or SessionError (refused, tampered, not from the pinned vault). */
  openWelcome(bytes: Uint8Array): Uint8Array {
    if (this.step !== 'hello' || !this.hs) throw new SessionError('BAD_SESSION_FRAME', 'no Hello waits for a Welcome');
    const f = decodeSessionFrame(bytes);
    if (f.kind === 'refused') throw new SessionError('SESSION_REFUSED', `the vault refused the session (${f.code})`, f.code);
    if (f.kind !== 'welcome') throw new SessionError('BAD_SESSION_FRAME', `expected a Welcome, got ${f.kind}`);
    // The handshake state is consumed either way: a forged Welcome ends the session.
    const hs = this.hs;
    this.hs = null;
    const r = noiseNK.readWelcome(this.dh, hs, this.e, f.noise);
    this.e.fill(0);
    this.step = 'done';
    if (!r) throw new SessionError('SESSION_REJECTED', 'the reply does not open: it was altered, or did not come from the pinned vault');
    this.transport = r.transport;
    this.step = 'open';
    return unpad('welcome', r.payload);
  }

  next(message: Uint8Array): Uint8Array {
    if (this.step !== 'open' || !this.transport) throw new SessionError('BAD_SESSION_FRAME', 'the session is not open for a second request');
    this.step = 'next';
    const ct = noiseNK.seal(this.transport.toVault, 0, transportAd(SessionKind.Next, this.ePub), pad('next', message));
    return cat(header(SessionKind.Next), this.ePub, ct);
  }

  openFinal(bytes: Uint8Array): Uint8Array {
    if (this.step !== 'next' || !this.transport) throw new SessionError('BAD_SESSION_FRAME', 'no Next waits for a Final');
    const f = decodeSessionFrame(bytes);
    if (f.kind === 'refused') throw new SessionError('SESSION_REFUSED', `the vault refused the request (${f.code})`, f.code);
    if (f.kind !== 'final') throw new SessionError('BAD_SESSION_FRAME', `expected a Final, got ${f.kind}`);
    const pt = noiseNK.open(this.transport.toDevice, 0, transportAd(SessionKind.Final, this.ePub), f.ciphertext);
    this.close();
    if (!pt) throw new SessionError('SESSION_REJECTED', 'the reply does not open: it was altered, or did not come from the pinned vault');
    return unpad('final', pt);
  }

  close(): void {
    this.e.fill(0);
    this.transport?.toVault.fill(0);
    this.transport?.toDevice.fill(0);
    this.transport = null;
    this.hs = null;
    this.step = 'done';
  }
}

// ---- the vault's end (used by vault/firmware/gate.ts) ----

export interface VaultSessionKey {
  privateKey: Uint8Array;
  publicKey: Uint8Array;
}

/** Opens a Hello for `user`; null when it does not open (wrong key, wrong user, tampered). */
export function acceptHello(dh: SessionDh, key: VaultSessionKey, user: string, f: Extract<SessionFrame, { kind: 'hello' }>) {
  const r = noiseNK.readHello(dh, sessionPrologue(user), key, f.noise);
  if (!r) return null;
  return { message: unpad('hello', r.payload), state: r.state, re: r.re };
}

/** The Welcome carrying the vault's first reply; `e` is a fresh ephemeral private key. */
export function sealWelcome(dh: SessionDh, hs: HandshakeState, re: Uint8Array, e: Uint8Array, message: Uint8Array) {
  const { message: noise, transport } = noiseNK.writeWelcome(dh, hs, re, e, pad('welcome', message));
  e.fill(0);
  return { bytes: cat(header(SessionKind.Welcome), noise), transport };
}

export function openNext(t: Transport, f: Extract<SessionFrame, { kind: 'next' }>): Uint8Array | null {
  const pt = noiseNK.open(t.toVault, 0, transportAd(SessionKind.Next, f.sid), f.ciphertext);
  return pt && unpad('next', pt);
}

export function sealFinal(t: Transport, sid: Uint8Array, message: Uint8Array): Uint8Array {
  return cat(header(SessionKind.Final), noiseNK.seal(t.toDevice, 0, transportAd(SessionKind.Final, sid), pad('final', message)));
}
