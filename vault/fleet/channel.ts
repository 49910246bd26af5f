// The secure channel between two replicas: a pure state machine (frames in, frames out; no sockets,
// no timers). The network between data centers is hostile: it must not read consensus traffic (log
// entries carry record data), nor inject, alter, replay, reorder or delete frames undetected.
//
// Handshake (SIGMA-I shape, 3 messages; docs/fleet-network.md has the byte layout):
//   I -> R  HELLO       fleetId, I, R, ephemeral P-256 public key eI
//   R -> I  HELLO_REPLY eR, Sign_R(label_R || th), HMAC(cR, label_R || th)
//   I -> R  FINISH      Sign_I(label_I || th), HMAC(cI, label_I || th)
// th = SHA-256 over version, fleetId, I, R, eI, eR (each length-prefixed). The identity signatures are
// made inside each replica's token (KeyLabels.replicaIdentity) and checked against the peer's pinned
// identity key from the fleet manifest, never against a key the peer sends. Keys come from
// HKDF-SHA256 (RFC 5869) with IKM = ECDH(eI, eR) and salt = th: one AES-256-GCM key per direction and
// one finished key per side. Every new connection runs a new handshake with new ephemerals, so a
// restarted peer (or a reconnect) always gets fresh keys and old frames can never be replayed into it.
import { createECDH, createCipheriv, createDecipheriv, createHash, createHmac, hkdfSync, timingSafeEqual } from 'node:crypto';
import { BkvError } from '../../protocol/errors.ts';
import { KeyLabels, type Token } from '../../hsm-adapter/token.ts';

export const CHANNEL_VERSION = 1;

export const ChannelFrameType = {
  Hello: 1,
  HelloReply: 2,
  Finish: 3,
  Data: 4,
} as const;
export type ChannelFrameType = (typeof ChannelFrameType)[keyof typeof ChannelFrameType];

export type ChannelErrorCode =
  | 'CHANNEL_MALFORMED'
  | 'CHANNEL_VERSION'
  | 'CHANNEL_FLEET_MISMATCH'
  | 'CHANNEL_UNKNOWN_PEER'
  | 'CHANNEL_WRONG_PEER'
  | 'CHANNEL_BAD_SIGNATURE'
  | 'CHANNEL_BAD_FINISHED'
  | 'CHANNEL_AUTH_FAILED'
  | 'CHANNEL_REPLAY'
  | 'CHANNEL_OUT_OF_ORDER'
  | 'CHANNEL_STATE'
  | 'CHANNEL_TOO_LARGE'
  | 'CHANNEL_CLOSED';

/** A frame the channel refused. The channel's state is unchanged: the caller drops the frame. */
export class ChannelError extends BkvError {
  declare readonly code: ChannelErrorCode;
  constructor(code: ChannelErrorCode, message: string) {
    super(code, message);
  }
}

export type ChannelOrdering =
  /** Every frame must carry exactly the next counter: for ordered streams (TCP), where a gap means deletion. */
  | 'strict'
  /** Counters must only increase: for lossy datagram-like links, where gaps are ordinary loss. */
  | 'monotonic';

export interface ChannelConfig {
  fleetId: string;
  /** This replica's id, as the fleet manifest names it. */
  self: string;
  /** This replica's token: signs with KeyLabels.replicaIdentity, supplies the ephemeral keys' randomness. */
  token: Token;
  /** Replica id -> pinned identity public key (65-byte uncompressed P-256), from the fleet manifest. */
  pins: ReadonlyMap<string, Uint8Array>;
  ordering?: ChannelOrdering;
  /** Largest plaintext a data frame may carry (both directions). Default 16 MiB. */
  maxPlaintextBytes?: number;
}

export type ChannelState = 'hello-sent' | 'await-hello' | 'await-finish' | 'open' | 'closed';

export interface ChannelStats {
  sealed: number;
  opened: number;
  /** Frames refused, by error code. */
  rejected: Partial<Record<ChannelErrorCode, number>>;
}

/** What receive() produced: a handshake frame to send back, and/or an application message. */
export interface ChannelOutput {
  reply?: Uint8Array;
  message?: Uint8Array;
  /** True on the call that completed the handshake. */
  opened?: boolean;
}

const HEADER_BYTES = 2;
const DATA_HEADER_BYTES = 10;
const TAG_BYTES = 16;
const P256_POINT_BYTES = 65;
const SIG_BYTES = 64;
const MAC_BYTES = 32;
const MAX_ID_BYTES = 255;
const LABEL_TH = 'bkv fleet channel v1 transcript';
const LABEL_KEYS = 'bkv fleet channel v1 keys';
const LABEL_R = 'bkv fleet channel v1 responder';
const LABEL_I = 'bkv fleet channel v1 initiator';
const enc = new TextEncoder();
const dec = new TextDecoder('utf-8', { fatal: true });

/** Length-prefixed (u16 BE) fields, the one encoding of every handshake frame and the transcript. */
function concatFields(head: Uint8Array, fields: readonly Uint8Array[]): Uint8Array {
  const total = head.length + fields.reduce((n, f) => n + 2 + f.length, 0);
  const out = new Uint8Array(total);
  out.set(head, 0);
  let p = head.length;
  for (const f of fields) {
    if (f.length > 0xffff) throw new RangeError('field too long');
    out[p] = f.length >>> 8; out[p + 1] = f.length & 0xff;
    out.set(f, p + 2);
    p += 2 + f.length;
  }
  return out;
}

function parseFields(frame: Uint8Array, count: number): Uint8Array[] {
  const out: Uint8Array[] = [];
  let p = HEADER_BYTES;
  for (let i = 0; i < count; i++) {
    if (p + 2 > frame.length) throw new ChannelError('CHANNEL_MALFORMED', 'handshake frame truncated');
    const len = (frame[p]! << 8) | frame[p + 1]!;
    p += 2;
    if (p + len > frame.length) throw new ChannelError('CHANNEL_MALFORMED', 'handshake field truncated');
    out.push(frame.subarray(p, p + len));
    p += len;
  }
  if (p !== frame.length) throw new ChannelError('CHANNEL_MALFORMED', 'trailing bytes after handshake frame');
  return out;
}

function text(b: Uint8Array, what: string): string {
  if (b.length === 0 || b.length > MAX_ID_BYTES) throw new ChannelError('CHANNEL_MALFORMED', `${what} has a bad length`);
  try {
    return dec.decode(b);
  } catch {
    throw new ChannelError('CHANNEL_MALFORMED', `${what} is not UTF-8`);
  }
}

function u8(...bytes: number[]): Uint8Array {
  return Uint8Array.from(bytes);
}

/** Frame type of any channel frame (for routing/logging), after checking the version. */
export function channelFrameType(frame: Uint8Array): ChannelFrameType {
  if (frame.length < HEADER_BYTES) throw new ChannelError('CHANNEL_MALFORMED', 'frame shorter than its header');
  if (frame[0] !== CHANNEL_VERSION) throw new ChannelError('CHANNEL_VERSION', `unsupported channel version ${frame[0]}`);
  const t = frame[1]!;
  if (t < ChannelFrameType.Hello || t > ChannelFrameType.Data) throw new ChannelError('CHANNEL_MALFORMED', `unknown frame type ${t}`);
  return t as ChannelFrameType;
}

interface Ephemeral {
  ecdh: ReturnType<typeof createECDH>;
  pub: Uint8Array;
}

function newEphemeral(token: Token): Ephemeral {
  // The private scalar comes from the token's generator; createECDH only does the arithmetic.
  for (let i = 0; i < 8; i++) {
    const ecdh = createECDH('prime256v1');
    const sk = token.random(32);
    try {
      ecdh.setPrivateKey(Buffer.from(sk));
      return { ecdh, pub: new Uint8Array(ecdh.getPublicKey(null, 'uncompressed')) };
    } catch {
      // scalar >= n or zero (probability ~2^-32): draw again
    } finally {
      sk.fill(0);
    }
  }
  throw new ChannelError('CHANNEL_STATE', 'could not draw an ephemeral key');
}

function ecdhSecret(eph: Ephemeral, peerPub: Uint8Array): Buffer {
  if (peerPub.length !== P256_POINT_BYTES || peerPub[0] !== 0x04) {
    throw new ChannelError('CHANNEL_MALFORMED', 'ephemeral key is not an uncompressed P-256 point');
  }
  try {
    return eph.ecdh.computeSecret(Buffer.from(peerPub));
  } catch {
    throw new ChannelError('CHANNEL_MALFORMED', 'ephemeral key is not on P-256');
  }
}

interface Keys {
  send: Buffer;
  recv: Buffer;
  macMine: Buffer;
  macTheirs: Buffer;
}

/**
 * One side of one connection. Create with SecureChannel.initiate (dialling side) or
 * SecureChannel.accept (listening side), feed every frame from the peer to receive(), send what
 * it returns, and once open use seal() for outgoing messages.
 */
export class SecureChannel {
  private st: ChannelState;
  private readonly cfg: ChannelConfig;
  private readonly ordering: ChannelOrdering;
  private readonly maxPlain: number;
  private readonly role: 'initiator' | 'responder';
  private peerId: string | undefined;
  private eph: Ephemeral | undefined;
  private th: Uint8Array | undefined;
  private keys: Keys | undefined;
  private sendCounter = 0n;
  /** strict: the counter expected next. monotonic: one past the highest accepted. */
  private recvNext = 0n;
  private readonly counts: ChannelStats = { sealed: 0, opened: 0, rejected: {} };

  private constructor(cfg: ChannelConfig, role: 'initiator' | 'responder', state: ChannelState) {
    this.cfg = cfg;
    this.role = role;
    this.st = state;
    this.ordering = cfg.ordering ?? 'strict';
    this.maxPlain = cfg.maxPlaintextBytes ?? 16 * 1024 * 1024;
  }

  /** Dial `peer`: returns the channel and the HELLO to send. */
  static initiate(cfg: ChannelConfig, peer: string): { channel: SecureChannel; hello: Uint8Array } {
    if (!cfg.pins.has(peer)) throw new ChannelError('CHANNEL_UNKNOWN_PEER', `no pinned identity for replica ${peer}`);
    if (peer === cfg.self) throw new ChannelError('CHANNEL_WRONG_PEER', 'a replica does not dial itself');
    const ch = new SecureChannel(cfg, 'initiator', 'hello-sent');
    ch.peerId = peer;
    ch.eph = newEphemeral(cfg.token);
    const hello = concatFields(u8(CHANNEL_VERSION, ChannelFrameType.Hello), [
      enc.encode(cfg.fleetId), enc.encode(cfg.self), enc.encode(peer), ch.eph.pub,
    ]);
    return { channel: ch, hello };
  }

  /** Wait for a HELLO from any pinned replica. */
  static accept(cfg: ChannelConfig): SecureChannel {
    return new SecureChannel(cfg, 'responder', 'await-hello');
  }

  get state(): ChannelState { return this.st; }
  /** The authenticated peer (known to the responder only after HELLO, trustworthy only once open). */
  get peer(): string | undefined { return this.peerId; }
  /** Short public handle of this session (first 8 bytes of the transcript hash), for logs. */
  get sessionId(): string | undefined { return this.th ? Buffer.from(this.th.subarray(0, 8)).toString('hex') : undefined; }
  get stats(): ChannelStats { return { ...this.counts, rejected: { ...this.counts.rejected } }; }

  /**
   * Process one frame from the peer. Throws ChannelError (and counts it) if the frame is refused;
   * a refused frame never changes the channel's state.
   */
  receive(frame: Uint8Array): ChannelOutput {
    try {
      return this.dispatch(frame);
    } catch (e) {
      if (e instanceof ChannelError) this.counts.rejected[e.code] = (this.counts.rejected[e.code] ?? 0) + 1;
      throw e;
    }
  }

  /** Encrypt one application message for the peer. */
  seal(plaintext: Uint8Array): Uint8Array {
    if (this.st !== 'open' || !this.keys) throw new ChannelError(this.st === 'closed' ? 'CHANNEL_CLOSED' : 'CHANNEL_STATE', 'channel is not open');
    if (plaintext.length > this.maxPlain) throw new ChannelError('CHANNEL_TOO_LARGE', `message of ${plaintext.length} bytes exceeds ${this.maxPlain}`);
    const header = new Uint8Array(DATA_HEADER_BYTES);
    header[0] = CHANNEL_VERSION; header[1] = ChannelFrameType.Data;
    new DataView(header.buffer).setBigUint64(2, this.sendCounter);
    const c = createCipheriv('aes-256-gcm', this.keys.send, nonce(this.sendCounter));
    c.setAAD(header);
    const body = c.update(plaintext);
    c.final();
    const out = new Uint8Array(DATA_HEADER_BYTES + body.length + TAG_BYTES);
    out.set(header, 0);
    out.set(body, DATA_HEADER_BYTES);
    out.set(c.getAuthTag(), DATA_HEADER_BYTES + body.length);
    this.sendCounter++;
    this.counts.sealed++;
    return out;
  }

  /** Forget the keys. Later frames are refused with CHANNEL_CLOSED. */
  close(): void {
    if (this.keys) {
      this.keys.send.fill(0); this.keys.recv.fill(0); this.keys.macMine.fill(0); this.keys.macTheirs.fill(0);
    }
    this.keys = undefined;
    this.eph = undefined;
    this.st = 'closed';
  }

  private dispatch(frame: Uint8Array): ChannelOutput {
    const type = channelFrameType(frame);
    if (this.st === 'closed') throw new ChannelError('CHANNEL_CLOSED', 'channel is closed');
    switch (type) {
      case ChannelFrameType.Hello:
        if (this.st !== 'await-hello') throw new ChannelError('CHANNEL_STATE', `HELLO in state ${this.st}`);
        return this.onHello(frame);
      case ChannelFrameType.HelloReply:
        if (this.st !== 'hello-sent') throw new ChannelError('CHANNEL_STATE', `HELLO_REPLY in state ${this.st}`);
        return this.onHelloReply(frame);
      case ChannelFrameType.Finish:
        if (this.st !== 'await-finish') throw new ChannelError('CHANNEL_STATE', `FINISH in state ${this.st}`);
        return this.onFinish(frame);
      case ChannelFrameType.Data:
        if (this.st !== 'open') throw new ChannelError('CHANNEL_STATE', `DATA in state ${this.st}`);
        return { message: this.openData(frame) };
    }
  }

  private transcript(initiator: string, responder: string, eI: Uint8Array, eR: Uint8Array): Uint8Array {
    const body = concatFields(enc.encode(LABEL_TH), [
      u8(CHANNEL_VERSION), enc.encode(this.cfg.fleetId), enc.encode(initiator), enc.encode(responder), eI, eR,
    ]);
    return new Uint8Array(createHash('sha256').update(body).digest());
  }

  private derive(z: Buffer, th: Uint8Array): Keys {
    const okm = Buffer.from(hkdfSync('sha256', z, th, enc.encode(LABEL_KEYS), 128));
    z.fill(0);
    const i2r = okm.subarray(0, 32), r2i = okm.subarray(32, 64), cI = okm.subarray(64, 96), cR = okm.subarray(96, 128);
    const copy = (b: Buffer) => Buffer.from(b);
    const k = this.role === 'initiator'
      ? { send: copy(i2r), recv: copy(r2i), macMine: copy(cI), macTheirs: copy(cR) }
      : { send: copy(r2i), recv: copy(i2r), macMine: copy(cR), macTheirs: copy(cI) };
    okm.fill(0);
    return k;
  }

  private signed(label: string, th: Uint8Array): Uint8Array {
    return concatFields(enc.encode(label), [th]);
  }

  private onHello(frame: Uint8Array): ChannelOutput {
    const [fleet, from, to, eI] = parseFields(frame, 4) as [Uint8Array, Uint8Array, Uint8Array, Uint8Array];
    const fleetId = text(fleet, 'fleet id'), initiator = text(from, 'initiator id'), responder = text(to, 'responder id');
    if (fleetId !== this.cfg.fleetId) throw new ChannelError('CHANNEL_FLEET_MISMATCH', 'HELLO names another fleet');
    if (responder !== this.cfg.self) throw new ChannelError('CHANNEL_WRONG_PEER', `HELLO is addressed to ${responder}, not ${this.cfg.self}`);
    if (initiator === this.cfg.self || !this.cfg.pins.has(initiator)) {
      throw new ChannelError('CHANNEL_UNKNOWN_PEER', `HELLO from unpinned replica ${initiator}`);
    }
    const eph = newEphemeral(this.cfg.token);
    const z = ecdhSecret(eph, eI);
    const th = this.transcript(initiator, this.cfg.self, eI, eph.pub);
    const keys = this.derive(z, th);
    const toSign = this.signed(LABEL_R, th);
    const sig = this.cfg.token.sign(KeyLabels.replicaIdentity, toSign);
    const mac = createHmac('sha256', keys.macMine).update(toSign).digest();
    // Commit only now: everything above could still refuse the frame.
    this.peerId = initiator; this.eph = eph; this.th = th; this.keys = keys;
    this.st = 'await-finish';
    return { reply: concatFields(u8(CHANNEL_VERSION, ChannelFrameType.HelloReply), [eph.pub, sig, mac]) };
  }

  private onHelloReply(frame: Uint8Array): ChannelOutput {
    const [eR, sig, mac] = parseFields(frame, 3) as [Uint8Array, Uint8Array, Uint8Array];
    if (sig.length !== SIG_BYTES || mac.length !== MAC_BYTES) throw new ChannelError('CHANNEL_MALFORMED', 'HELLO_REPLY field sizes');
    const eph = this.eph!, peer = this.peerId!;
    const z = ecdhSecret(eph, eR);
    const th = this.transcript(this.cfg.self, peer, eph.pub, eR);
    const keys = this.derive(z, th);
    const theirs = this.signed(LABEL_R, th);
    if (!this.cfg.token.verify(this.cfg.pins.get(peer)!, theirs, sig)) {
      wipe(keys);
      throw new ChannelError('CHANNEL_BAD_SIGNATURE', `HELLO_REPLY is not signed by ${peer}'s pinned identity`);
    }
    if (!macEqual(createHmac('sha256', keys.macTheirs).update(theirs).digest(), mac)) {
      wipe(keys);
      throw new ChannelError('CHANNEL_BAD_FINISHED', 'HELLO_REPLY key confirmation failed');
    }
    const mine = this.signed(LABEL_I, th);
    const mySig = this.cfg.token.sign(KeyLabels.replicaIdentity, mine);
    const myMac = createHmac('sha256', keys.macMine).update(mine).digest();
    this.th = th; this.keys = keys; this.eph = undefined;
    this.st = 'open';
    return { reply: concatFields(u8(CHANNEL_VERSION, ChannelFrameType.Finish), [mySig, myMac]), opened: true };
  }

  private onFinish(frame: Uint8Array): ChannelOutput {
    const [sig, mac] = parseFields(frame, 2) as [Uint8Array, Uint8Array];
    if (sig.length !== SIG_BYTES || mac.length !== MAC_BYTES) throw new ChannelError('CHANNEL_MALFORMED', 'FINISH field sizes');
    const peer = this.peerId!, th = this.th!, keys = this.keys!;
    const theirs = this.signed(LABEL_I, th);
    if (!this.cfg.token.verify(this.cfg.pins.get(peer)!, theirs, sig)) {
      throw new ChannelError('CHANNEL_BAD_SIGNATURE', `FINISH is not signed by ${peer}'s pinned identity`);
    }
    if (!macEqual(createHmac('sha256', keys.macTheirs).update(theirs).digest(), mac)) {
      throw new ChannelError('CHANNEL_BAD_FINISHED', 'FINISH key confirmation failed');
    }
    this.eph = undefined;
    this.st = 'open';
    return { opened: true };
  }

  private openData(frame: Uint8Array): Uint8Array {
    if (frame.length < DATA_HEADER_BYTES + TAG_BYTES) throw new ChannelError('CHANNEL_MALFORMED', 'data frame truncated');
    const bodyLen = frame.length - DATA_HEADER_BYTES - TAG_BYTES;
    if (bodyLen > this.maxPlain) throw new ChannelError('CHANNEL_TOO_LARGE', `data frame of ${bodyLen} bytes exceeds ${this.maxPlain}`);
    const header = frame.subarray(0, DATA_HEADER_BYTES);
    const counter = new DataView(frame.buffer, frame.byteOffset, frame.byteLength).getBigUint64(2);
    const d = createDecipheriv('aes-256-gcm', this.keys!.recv, nonce(counter));
    d.setAAD(header);
    d.setAuthTag(frame.subarray(DATA_HEADER_BYTES + bodyLen));
    const body = d.update(frame.subarray(DATA_HEADER_BYTES, DATA_HEADER_BYTES + bodyLen));
    try {
      d.final();
    } catch {
      body.fill(0);
      throw new ChannelError('CHANNEL_AUTH_FAILED', 'data frame failed authentication (forged or altered)');
    }
    // Authentic, now place it in sequence. A genuine old frame is a replay; in strict mode a genuine
    // frame from the future means something between was deleted or held back.
    if (counter < this.recvNext) {
      body.fill(0);
      throw new ChannelError('CHANNEL_REPLAY', `frame ${counter} already seen (next is ${this.recvNext})`);
    }
    if (this.ordering === 'strict' && counter !== this.recvNext) {
      body.fill(0);
      throw new ChannelError('CHANNEL_OUT_OF_ORDER', `frame ${counter} arrived while ${this.recvNext} was due`);
    }
    this.recvNext = counter + 1n;
    this.counts.opened++;
    return new Uint8Array(body.buffer, body.byteOffset, body.byteLength);
  }
}

function nonce(counter: bigint): Buffer {
  // Per-direction keys, so the counter alone makes the nonce unique; it never wraps (2^64 frames).
  const n = Buffer.alloc(12);
  n.writeBigUInt64BE(counter, 4);
  return n;
}

function macEqual(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && timingSafeEqual(a, b);
}

function wipe(k: Keys): void {
  k.send.fill(0); k.recv.fill(0); k.macMine.fill(0); k.macTheirs.fill(0);
}
