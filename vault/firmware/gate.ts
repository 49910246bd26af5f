// The firmware's only door for device traffic: every request arrives as a device-vault session frame
// (protocol/session.ts), is opened here, and every reply leaves sealed to the session it answers. The
// host (and ChatD before it) carries bytes it cannot read or alter; anything that does not open gets
// an unauthenticated Refused frame, which a device never takes for an outcome.
//
// Pure, like the firmware it wraps: same inputs, same injected rng and token -> same outputs.
//
// Session rules (docs/session.md):
// - A Hello carries a first request: RegisterStart, RecoverStart or Status. Nothing in a Hello changes
//   state but RecoverStart's attempt (the guess limit bounds that, and a replayed Hello's KE2 is sealed
//   to the device's ephemeral key, which a replayer does not have).
// - A Next carries the second request, only the one its first calls for: RegisterFinish with the
//   ticket this session was issued, RecoverFinish for this session's KE2, Disable after Status. So a
//   recorded Next cannot be replayed (the session is single-use and in memory), nor paired with
//   another session's ticket or recovery.
// - Byte-identical copies of a Hello or a Next get the byte-identical reply, without running again.
import { fastX25519 } from '../../protocol/opaque/group.ts';
import { tokenSessionKey } from '../../protocol/opaque/secrets.ts';
import {
  acceptHello,
  decodeSessionFrame,
  encodeRefused,
  fleetIdentity,
  openNext,
  sealFinal,
  sealWelcome,
  type HandshakeState,
  type SessionDh,
  type SessionFrame,
  type Transport,
  type VaultSessionKey,
} from '../../protocol/session.ts';
import { WIRE_SUITES, decodeDeviceMessage, decodeVaultReply, encodeVaultReply, type DeviceMessage, type PinnedKeyName, type VaultReply, type WireSuite } from '../../protocol/wire.ts';
import { Firmware, type FirmwareConfig, type FirmwareInput, type FirmwareOutput } from './firmware.ts';
import { sameBytes } from './state.ts';

/** Inner error codes the host may act on (retry elsewhere): operational, never an outcome of a guess. */
const HOST_HINTS: ReadonlySet<string> = new Set(['NOT_LEADER', 'NOT_APPENDED', 'UNHEALTHY']);

type First = 'RegisterStart' | 'RecoverStart' | 'Status';
const SECOND: Record<First, DeviceMessage['t']> = { RegisterStart: 'RegisterFinish', RecoverStart: 'RecoverFinish', Status: 'Disable' };

interface Session {
  user: string;
  sid: Uint8Array;
  helloHash: string;
  first: First | null;
  hs: HandshakeState | null;
  re: Uint8Array;
  transport: Transport | null;
  welcome: Uint8Array | null;
  /** What the first reply issued that the second request must name. */
  ticket: Uint8Array | null;
  recovery: Uint8Array | null;
  nextHash: string | null;
  final: Uint8Array | null;
  /** Request ids waiting for this session's Welcome / Final (an original and its byte-identical copies). */
  waiting: { welcome: number[]; final: number[] };
  expiresAt: number;
}

/**
 * What tells two frames of one session apart: the AEAD tag at the frame's end. Frames are fixed-size
 * and the session is named by the ephemeral, so a copy has the same tag; a frame with the same tag
 * but other bytes cannot open, and at worst gets the cached reply the real device already has.
 */
const frameKey = (b: Uint8Array): string => Buffer.from(b.subarray(b.length - 16)).toString('hex');
const hex = (b: Uint8Array): string => Buffer.from(b).toString('hex');

export interface GateConfig extends FirmwareConfig {
  /** X25519 for sessions; default the native libsodium binding when it loads. */
  sessionDh?: SessionDh;
  /**
   * Sees each reply the firmware gives inside a session, before it is sealed: the simulator's oracle
   * counts evaluations with it. Never wired to a log (replies carry KE2s and sealed K).
   */
  observe?: (requestId: number, innerReply: Uint8Array) => void;
}

export class SessionGate {
  readonly inner: Firmware;
  private readonly dh: SessionDh;
  private readonly key: VaultSessionKey;
  private readonly ttlMs: number;
  private readonly maxSessions: number;
  private readonly sessions = new Map<string, Session>();
  /** Inner request id -> the session and position its reply belongs to. */
  private readonly route = new Map<number, { sid: string; pos: 'welcome' | 'final' }>();
  private now = 0;
  private out: FirmwareOutput[] = [];

  private readonly observe: ((requestId: number, innerReply: Uint8Array) => void) | undefined;

  constructor(cfg: GateConfig | { firmware: Firmware; sessionDh?: SessionDh; observe?: GateConfig['observe'] }) {
    this.inner = 'firmware' in cfg ? cfg.firmware : new Firmware(cfg);
    this.dh = cfg.sessionDh ?? fastX25519();
    this.key = tokenSessionKey(this.inner.token, this.dh);
    this.inner.useServerIdentity(fleetIdentity(this.key.publicKey));
    this.ttlMs = this.inner.settings.sessionTtlMs;
    this.maxSessions = this.inner.settings.maxSessions;
    this.observe = cfg.observe;
  }

  get replicaId(): string {
    return this.inner.replicaId;
  }
  get appliedIndex(): number {
    return this.inner.appliedIndex;
  }
  get isHealthy(): boolean {
    return this.inner.isHealthy;
  }
  digest(): string {
    return this.inner.digest();
  }
  /** Applied entries by effect (Firmware.effects), for /metrics. */
  get effects(): Readonly<Record<string, number>> {
    return this.inner.effects;
  }
  inspect(user: string) {
    return this.inner.inspect(user);
  }
  serverPublicKey(suite: WireSuite): Uint8Array {
    return this.inner.serverPublicKey(suite);
  }
  /** The session key devices pin (fleet-wide: derived from the sealed AKE seed every token holds). */
  sessionPublicKey(): Uint8Array {
    return this.key.publicKey.slice();
  }
  /** Live sessions (tests, status). */
  get sessionCount(): number {
    return this.sessions.size;
  }

  step(input: FirmwareInput): FirmwareOutput[] {
    this.out = [];
    if (input.kind === 'request') {
      try {
        this.onRequest(input.requestId, input.user, input.body);
      } catch {
        // A request the gate could not handle (a bug, never the device's doing): refused, nothing kept.
        this.route.delete(input.requestId);
        this.refuse(input.requestId, 'INTERNAL');
      }
    }
    else {
      if (input.kind === 'tick') {
        this.now = Math.max(this.now, input.now);
        this.expire();
      }
      this.seal(this.inner.step(input));
    }
    const out = this.out;
    this.out = [];
    return out;
  }

  private refuse(requestId: number, code: string): void {
    this.out.push({ kind: 'reply', requestId, body: encodeRefused(code) });
  }

  private onRequest(requestId: number, user: string, body: Uint8Array): void {
    let f: SessionFrame;
    try {
      f = decodeSessionFrame(body);
    } catch {
      return this.refuse(requestId, 'BAD_SESSION_FRAME');
    }
    if (f.kind === 'hello') return this.onHello(requestId, user, body, f);
    if (f.kind === 'next') return this.onNext(requestId, user, body, f);
    return this.refuse(requestId, 'BAD_SESSION_FRAME');
  }

  private onHello(requestId: number, user: string, body: Uint8Array, f: Extract<SessionFrame, { kind: 'hello' }>): void {
    const sid = hex(f.ephemeral);
    const h = frameKey(body);
    const known = this.sessions.get(sid);
    if (known) {
      // The same Hello again (a retrying relay): the same Welcome. Any other use of that ephemeral is refused.
      if (known.user !== user || known.helloHash !== h) return this.refuse(requestId, 'SESSION_REJECTED');
      if (known.welcome) return void this.out.push({ kind: 'reply', requestId, body: known.welcome });
      known.waiting.welcome.push(requestId);
      return;
    }
    if (!this.inner.isHealthy) return this.refuse(requestId, 'UNHEALTHY');
    let opened: ReturnType<typeof acceptHello>;
    try {
      opened = acceptHello(this.dh, this.key, user, f);
    } catch {
      opened = null;
    }
    if (!opened) return this.refuse(requestId, 'SESSION_REJECTED');
    if (this.sessions.size >= this.maxSessions) this.drop(this.sessions.keys().next().value!);
    const s: Session = {
      user, sid: f.ephemeral, helloHash: h, first: null, hs: opened.state, re: opened.re, transport: null, welcome: null,
      ticket: null, recovery: null, nextHash: null, final: null, waiting: { welcome: [requestId], final: [] }, expiresAt: this.now + this.ttlMs,
    };
    this.sessions.set(sid, s);
    this.route.set(requestId, { sid, pos: 'welcome' });
    let m: DeviceMessage;
    try {
      m = decodeDeviceMessage(opened.message);
    } catch {
      return this.seal([{ kind: 'reply', requestId, body: encodeVaultReply({ t: 'Error', code: 'BAD_DEVICE_MESSAGE' }) }]);
    }
    if (m.t !== 'RegisterStart' && m.t !== 'RecoverStart' && m.t !== 'Status') {
      return this.seal([{ kind: 'reply', requestId, body: encodeVaultReply({ t: 'Error', code: 'WRONG_STEP' }) }]);
    }
    s.first = m.t;
    this.seal(this.inner.step({ kind: 'request', requestId, user, body: opened.message, message: m }));
  }

  private onNext(requestId: number, user: string, body: Uint8Array, f: Extract<SessionFrame, { kind: 'next' }>): void {
    const s = this.sessions.get(hex(f.sid));
    if (!s || s.user !== user || !s.transport) return this.refuse(requestId, 'NO_SESSION');
    const h = frameKey(body);
    if (s.nextHash !== null) {
      if (s.nextHash !== h) return this.refuse(requestId, 'SESSION_USED');
      if (s.final) return void this.out.push({ kind: 'reply', requestId, body: s.final });
      s.waiting.final.push(requestId);
      return;
    }
    let inner: Uint8Array | null;
    try {
      inner = openNext(s.transport, f);
    } catch {
      inner = null;
    }
    // Not marked used: a relay's altered copy must not cost the device its real second request.
    if (!inner) return this.refuse(requestId, 'SESSION_REJECTED');
    s.nextHash = h;
    s.waiting.final.push(requestId);
    this.route.set(requestId, { sid: hex(f.sid), pos: 'final' });
    let m: DeviceMessage;
    try {
      m = decodeDeviceMessage(inner);
    } catch {
      return this.seal([{ kind: 'reply', requestId, body: encodeVaultReply({ t: 'Error', code: 'BAD_DEVICE_MESSAGE' }) }]);
    }
    const wrong = (code: string) => this.seal([{ kind: 'reply', requestId, body: encodeVaultReply({ t: 'Error', code }) }]);
    if (!s.first || m.t !== SECOND[s.first]) return wrong('WRONG_STEP');
    if (m.t === 'RegisterFinish' && !(s.ticket && sameBytes(s.ticket, m.ticket))) return wrong('WRONG_TICKET');
    if (m.t === 'RecoverFinish' && !(s.recovery && sameBytes(s.recovery, m.session))) return wrong('NO_SESSION');
    this.seal(this.inner.step({ kind: 'request', requestId, user, body: inner, message: m }));
  }

  /** Seals the inner firmware's replies to the sessions they answer; passes everything else through. */
  private seal(outputs: FirmwareOutput[]): void {
    for (const o of outputs) {
      if (o.kind !== 'reply') {
        this.out.push(o);
        continue;
      }
      const r = this.route.get(o.requestId);
      if (!r) {
        // A request that did not come through the gate (tests drive the bare firmware beside it).
        this.out.push(o);
        continue;
      }
      this.route.delete(o.requestId);
      const s = this.sessions.get(r.sid);
      if (!s) {
        this.refuse(o.requestId, 'SESSION_EXPIRED');
        continue;
      }
      this.observe?.(o.requestId, o.body);
      let reply: VaultReply | null = o.reply ?? null;
      if (!reply) {
        try {
          reply = decodeVaultReply(o.body);
        } catch {
          reply = null;
        }
      }
      const hint = reply?.t === 'Error' && HOST_HINTS.has(reply.code) ? reply.code : undefined;
      let bytes: Uint8Array;
      const ids = r.pos === 'welcome' ? s.waiting.welcome : s.waiting.final;
      try {
        if (r.pos === 'welcome') {
          if (!s.hs) continue;
          if (reply?.t === 'RegisterResponse') s.ticket = reply.ticket;
          if (reply?.t === 'KE2') s.recovery = reply.session;
          const w = sealWelcome(this.dh, s.hs, s.re, this.inner.rng(32), o.body);
          s.hs = null;
          s.transport = w.transport;
          s.welcome = bytes = w.bytes;
        } else {
          if (!s.transport) continue;
          s.final = bytes = sealFinal(s.transport, s.sid, o.body);
        }
      } catch {
        // A reply that cannot be sealed (a firmware bug): the session ends, everyone waiting is refused.
        for (const id of ids.splice(0)) this.refuse(id, 'INTERNAL');
        this.drop(r.sid);
        continue;
      }
      for (const id of ids.splice(0)) this.out.push(hint ? { kind: 'reply', requestId: id, body: bytes, hint } : { kind: 'reply', requestId: id, body: bytes });
    }
  }

  private expire(): void {
    for (const [sid, s] of this.sessions) if (s.expiresAt < this.now) this.drop(sid);
  }

  private drop(sid: string): void {
    const s = this.sessions.get(sid);
    if (!s) return;
    s.transport?.toVault.fill(0);
    s.transport?.toDevice.fill(0);
    this.sessions.delete(sid);
    // Copies waiting on it hear so now; the original hears when the firmware answers it.
    for (const id of [...s.waiting.welcome, ...s.waiting.final]) if (!this.route.has(id)) this.refuse(id, 'SESSION_EXPIRED');
  }
}

/** The public keys devices pin, hex, by name (PINNED_KEYS): what a vault prints and vault-keys.json holds. */
export function pinnedKeys(g: SessionGate): Record<PinnedKeyName, string> {
  const out = {} as Record<PinnedKeyName, string>;
  for (const s of WIRE_SUITES) out[s] = Buffer.from(g.serverPublicKey(s)).toString('hex');
  out.session = Buffer.from(g.sessionPublicKey()).toString('hex');
  return out;
}
