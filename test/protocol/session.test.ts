// The device-vault session (protocol/session.ts): Noise NK against the published test vector, then the
// framing, padding and every way a relay could alter a frame.
import { describe, expect, it } from 'vitest';
import { x25519DhGroup, fastX25519 } from '../../protocol/opaque/group.ts';
import {
  DeviceSession,
  FRAME_BYTES,
  SessionError,
  acceptHello,
  decodeSessionFrame,
  noiseNK,
  openNext,
  sealFinal,
  sealWelcome,
} from '../../protocol/session.ts';
import { NOISE_NK_VECTOR as V } from '../fixtures/noise-nk-vector.ts';

const h = (s: string) => new Uint8Array(Buffer.from(s, 'hex'));
const hex = (b: Uint8Array) => Buffer.from(b).toString('hex');

describe('Noise_NK_25519_ChaChaPoly_SHA256', () => {
  for (const backend of ['native', 'noble'] as const) {
    it(`reproduces the published vector (${backend} X25519)`, () => {
      const dh = x25519DhGroup(backend);
      const s = { privateKey: h(V.responderStatic), publicKey: dh.publicKey(h(V.responderStatic)) };
      expect(hex(s.publicKey)).toBe(V.responderStaticPublic);
      const pro = h(V.prologue);
      const m = V.messages;
      const w1 = noiseNK.writeHello(dh, pro, s.publicKey, h(V.initiatorEphemeral), h(m[0]!.payload));
      expect(hex(w1.message)).toBe(m[0]!.ciphertext);
      const r1 = noiseNK.readHello(dh, pro, s, w1.message)!;
      expect(hex(r1.payload)).toBe(m[0]!.payload);
      const w2 = noiseNK.writeWelcome(dh, r1.state, r1.re, h(V.responderEphemeral), h(m[1]!.payload));
      expect(hex(w2.message)).toBe(m[1]!.ciphertext);
      const r2 = noiseNK.readWelcome(dh, w1.state, h(V.initiatorEphemeral), w2.message)!;
      expect(hex(r2.payload)).toBe(m[1]!.payload);
      expect(hex(r2.transport.handshakeHash)).toBe(V.handshakeHash);
      expect(hex(w2.transport.handshakeHash)).toBe(V.handshakeHash);
      // Transport messages alternate initiator, responder, each direction counting its own nonces.
      const empty = new Uint8Array(0);
      for (let i = 2; i < m.length; i++) {
        const fromInitiator = i % 2 === 0;
        const n = Math.floor((i - 2) / 2);
        const key = fromInitiator ? r2.transport.toVault : w2.transport.toDevice;
        expect(hex(noiseNK.seal(key, n, empty, h(m[i]!.payload)))).toBe(m[i]!.ciphertext);
        expect(hex(noiseNK.open(key, n, empty, h(m[i]!.ciphertext))!)).toBe(m[i]!.payload);
      }
    });
  }
});

describe('framed session', () => {
  const dh = fastX25519();
  const sk = new Uint8Array(32).fill(3);
  const key = { privateKey: sk, publicKey: dh.publicKey(sk) };
  let n = 0;
  const rng = (k: number) => new Uint8Array(k).fill(++n);
  const enc = new TextEncoder();

  function roundTrip(user = 'alice') {
    const dev = new DeviceSession(dh, user, key.publicKey, rng);
    const hello = dev.hello(enc.encode('first'));
    const f = decodeSessionFrame(hello);
    if (f.kind !== 'hello') throw new Error('not a hello');
    const a = acceptHello(dh, key, user, f)!;
    const w = sealWelcome(dh, a.state, a.re, rng(32), enc.encode('reply one'));
    return { dev, hello, a, w };
  }

  it('carries two requests and two replies, each frame kind at one fixed size', () => {
    const { dev, hello, a, w } = roundTrip();
    expect(new TextDecoder().decode(a.message)).toBe('first');
    expect(hello.length).toBe(FRAME_BYTES.hello);
    expect(w.bytes.length).toBe(FRAME_BYTES.welcome);
    expect(new TextDecoder().decode(dev.openWelcome(w.bytes))).toBe('reply one');
    const next = dev.next(enc.encode('second, longer than the first'));
    expect(next.length).toBe(FRAME_BYTES.next);
    const nf = decodeSessionFrame(next);
    if (nf.kind !== 'next') throw new Error('not a next');
    expect(new TextDecoder().decode(openNext(w.transport, nf)!)).toBe('second, longer than the first');
    const fin = sealFinal(w.transport, nf.sid, enc.encode('ok'));
    expect(fin.length).toBe(FRAME_BYTES.final);
    expect(new TextDecoder().decode(dev.openFinal(fin))).toBe('ok');
  });

  it('a Hello relayed for another user, or with any byte flipped, does not open', () => {
    const { hello } = roundTrip();
    const f = decodeSessionFrame(hello) as Extract<ReturnType<typeof decodeSessionFrame>, { kind: 'hello' }>;
    expect(acceptHello(dh, key, 'mallory', f)).toBeNull();
    for (const i of [2, 20, 40, hello.length - 1]) {
      const bad = hello.slice();
      bad[i]! ^= 1;
      const g = decodeSessionFrame(bad);
      expect(g.kind === 'hello' ? acceptHello(dh, key, 'alice', g) : null).toBeNull();
    }
  });

  it('a flipped Welcome or Final is refused by the device with a typed error', () => {
    const { dev, w } = roundTrip();
    const bad = w.bytes.slice();
    bad[100]! ^= 0x80;
    expect(() => dev.openWelcome(bad)).toThrow(SessionError);
    const t = roundTrip();
    t.dev.openWelcome(t.w.bytes);
    const nf = decodeSessionFrame(t.dev.next(enc.encode('x'))) as Extract<ReturnType<typeof decodeSessionFrame>, { kind: 'next' }>;
    const fin = sealFinal(t.w.transport, nf.sid, enc.encode('ok'));
    fin[10]! ^= 1;
    expect(() => t.dev.openFinal(fin)).toThrow(expect.objectContaining({ code: 'SESSION_REJECTED' }));
  });

  it('a Welcome from another session (a replay) does not open', () => {
    const one = roundTrip();
    const two = roundTrip();
    expect(() => one.dev.openWelcome(two.w.bytes)).toThrow(expect.objectContaining({ code: 'SESSION_REJECTED' }));
  });

  it('a device message that does not fit its position is refused before it is sent', () => {
    const dev = new DeviceSession(dh, 'alice', key.publicKey, rng);
    expect(() => dev.hello(new Uint8Array(300))).toThrow(SessionError);
  });

  it('malformed frames are typed errors', () => {
    for (const b of [new Uint8Array(0), Uint8Array.of(1), Uint8Array.of(2, 9), Uint8Array.of(2, 1, 0), Uint8Array.of(2, 0xee, 0x61)]) {
      expect(() => decodeSessionFrame(b)).toThrow(SessionError);
    }
  });
});
