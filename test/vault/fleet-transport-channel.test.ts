// The replica-to-replica secure channel, with identities held in real SoftHSM2 tokens.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { provisionTestFleet, type TestFleet } from '../helpers/fleet.ts';
import { KeyLabels, type Token } from '../../hsm-adapter/token.ts';
import {
  CHANNEL_VERSION, ChannelError, ChannelFrameType, SecureChannel, type ChannelConfig, type ChannelErrorCode,
} from '../../vault/fleet/channel.ts';

const FLEET = 'fleet-test';
let fleet: TestFleet;
let tokens: Token[];
let ids: string[];
let pins: Map<string, Uint8Array>;

beforeAll(async () => {
  fleet = await provisionTestFleet({ replicas: 3 });
  tokens = fleet.replicas.map((r) => fleet.openToken(r.tokenLabel));
  ids = fleet.replicas.map((r) => r.name);
  pins = new Map(ids.map((id, i) => [id, tokens[i]!.publicKey(KeyLabels.replicaIdentity)]));
});
afterAll(async () => { await fleet?.cleanup(); });

function cfg(i: number, over: Partial<ChannelConfig> = {}): ChannelConfig {
  return { fleetId: FLEET, self: ids[i]!, token: tokens[i]!, pins, ...over };
}

/** Runs the three-message handshake between two configs; returns both open channels. */
function connect(a: ChannelConfig, b: ChannelConfig, peer = b.self): { i: SecureChannel; r: SecureChannel } {
  const { channel: i, hello } = SecureChannel.initiate(a, peer);
  const r = SecureChannel.accept(b);
  const reply = r.receive(hello).reply!;
  const fin = i.receive(reply);
  expect(fin.opened).toBe(true);
  expect(r.receive(fin.reply!).opened).toBe(true);
  return { i, r };
}

function code(f: () => unknown): ChannelErrorCode | 'none' {
  try {
    f();
    return 'none';
  } catch (e) {
    if (e instanceof ChannelError) return e.code;
    throw e;
  }
}

const bytes = (s: string) => new TextEncoder().encode(s);
const str = (b: Uint8Array | undefined) => new TextDecoder().decode(b);

describe('secure channel handshake', () => {
  it('mutually authenticates two replicas and carries messages both ways', () => {
    const { i, r } = connect(cfg(0), cfg(1));
    expect(i.state).toBe('open');
    expect(r.peer).toBe(ids[0]);
    expect(i.sessionId).toBe(r.sessionId);
    expect(str(r.receive(i.seal(bytes('append entries'))).message)).toBe('append entries');
    expect(str(i.receive(r.seal(bytes('ack'))).message)).toBe('ack');
    const frame = i.seal(bytes('secret record data'));
    expect(Buffer.from(frame).includes(Buffer.from('secret record data'))).toBe(false);
  });

  it('refuses a third token pretending to be the responder', () => {
    // Replica 2's token answers a HELLO meant for replica 1, claiming to be replica 1.
    const { channel: i, hello } = SecureChannel.initiate(cfg(0), ids[1]!);
    const impostor = SecureChannel.accept(cfg(2, { self: ids[1]! }));
    const reply = impostor.receive(hello).reply!;
    expect(code(() => i.receive(reply))).toBe('CHANNEL_BAD_SIGNATURE');
    expect(i.state).toBe('hello-sent');
    expect(code(() => i.seal(bytes('x')))).toBe('CHANNEL_STATE');
    expect(i.stats.rejected.CHANNEL_BAD_SIGNATURE).toBe(1);
  });

  it('refuses a third token pretending to be the initiator', () => {
    const { channel: impostor, hello } = SecureChannel.initiate(cfg(2, { self: ids[0]! }), ids[1]!);
    const r = SecureChannel.accept(cfg(1));
    const reply = r.receive(hello).reply!;
    const fin = impostor.receive(reply); // the impostor can check the real responder...
    expect(code(() => r.receive(fin.reply!))).toBe('CHANNEL_BAD_SIGNATURE'); // ...but cannot sign as replica 0
    expect(r.state).toBe('await-finish');
    expect(code(() => r.receive(impostor.seal(bytes('x'))))).toBe('CHANNEL_STATE');
  });

  it('refuses unpinned peers, other fleets and misaddressed hellos', () => {
    const few = new Map([...pins].filter(([id]) => id !== ids[0]));
    const { hello } = SecureChannel.initiate(cfg(0), ids[1]!);
    expect(code(() => SecureChannel.accept(cfg(1, { pins: few })).receive(hello))).toBe('CHANNEL_UNKNOWN_PEER');
    expect(code(() => SecureChannel.accept(cfg(1, { fleetId: 'other' })).receive(hello))).toBe('CHANNEL_FLEET_MISMATCH');
    expect(code(() => SecureChannel.accept(cfg(2)).receive(hello))).toBe('CHANNEL_WRONG_PEER');
    expect(code(() => SecureChannel.initiate(cfg(0), 'nobody'))).toBe('CHANNEL_UNKNOWN_PEER');
    const bad = Uint8Array.from(hello);
    bad[0] = CHANNEL_VERSION + 1;
    expect(code(() => SecureChannel.accept(cfg(1)).receive(bad))).toBe('CHANNEL_VERSION');
    expect(code(() => SecureChannel.accept(cfg(1)).receive(hello.subarray(0, hello.length - 3)))).toBe('CHANNEL_MALFORMED');
  });

  it('detects tampering with any handshake message', () => {
    // Flip a bit inside the initiator's ephemeral key: the transcripts differ, the signature fails.
    const { channel: i, hello } = SecureChannel.initiate(cfg(0), ids[1]!);
    const t = Uint8Array.from(hello);
    t[t.length - 5]! ^= 0x01;
    const r = SecureChannel.accept(cfg(1));
    let c: string;
    try {
      const reply = r.receive(t).reply!;
      c = code(() => i.receive(reply));
    } catch (e) {
      c = (e as ChannelError).code; // the altered point may not even be on the curve
    }
    expect(['CHANNEL_BAD_SIGNATURE', 'CHANNEL_MALFORMED']).toContain(c);
    expect(i.state).not.toBe('open');

    // Flip a bit in the responder's signature.
    const { channel: i2, hello: h2 } = SecureChannel.initiate(cfg(0), ids[1]!);
    const reply2 = Uint8Array.from(SecureChannel.accept(cfg(1)).receive(h2).reply!);
    reply2[2 + 2 + 65 + 2 + 10]! ^= 0x80;
    expect(code(() => i2.receive(reply2))).toBe('CHANNEL_BAD_SIGNATURE');
  });

  it('gives every connection fresh keys (rekey on reconnect)', () => {
    const a = connect(cfg(0), cfg(1));
    const b = connect(cfg(0), cfg(1));
    expect(a.i.sessionId).not.toBe(b.i.sessionId);
    const old = a.i.seal(bytes('from the old session'));
    expect(code(() => b.r.receive(old))).toBe('CHANNEL_AUTH_FAILED');
    expect(str(b.r.receive(b.i.seal(bytes('new'))).message)).toBe('new');
  });

  it('refuses replayed handshake messages', () => {
    const { channel: i, hello } = SecureChannel.initiate(cfg(0), ids[1]!);
    const r = SecureChannel.accept(cfg(1));
    const reply = r.receive(hello).reply!;
    expect(code(() => r.receive(hello))).toBe('CHANNEL_STATE');
    const fin = i.receive(reply).reply!;
    r.receive(fin);
    expect(code(() => r.receive(fin))).toBe('CHANNEL_STATE');
    // A recorded HELLO replayed to a fresh responder yields a session the replayer cannot finish.
    const r2 = SecureChannel.accept(cfg(1));
    r2.receive(hello);
    expect(code(() => r2.receive(fin))).toBe('CHANNEL_BAD_SIGNATURE');
  });
});

describe('secure channel data frames', () => {
  it('rejects any single-bit alteration and stays usable', () => {
    const { i, r } = connect(cfg(0), cfg(1));
    fc.assert(fc.property(fc.nat(), fc.integer({ min: 0, max: 7 }), fc.uint8Array({ minLength: 0, maxLength: 64 }), (pos, bit, msg) => {
      const frame = i.seal(msg);
      const bad = Uint8Array.from(frame);
      const p = pos % bad.length;
      bad[p]! ^= 1 << bit;
      const c = code(() => r.receive(bad));
      // The version and type bytes are checked before the tag; all else fails authentication.
      expect(c).toBe(p === 0 ? 'CHANNEL_VERSION' : p === 1 ? 'CHANNEL_MALFORMED' : 'CHANNEL_AUTH_FAILED');
      expect(Buffer.compare(Buffer.from(r.receive(frame).message!), Buffer.from(msg))).toBe(0);
    }), { numRuns: 300 });
    expect(r.stats.rejected.CHANNEL_AUTH_FAILED).toBeGreaterThan(200);
  });

  it('rejects forged frames, reflected frames and data before the handshake', () => {
    const { i, r } = connect(cfg(0), cfg(1));
    const forged = new Uint8Array(10 + 20 + 16);
    forged[0] = CHANNEL_VERSION; forged[1] = ChannelFrameType.Data;
    forged.set(tokens[0]!.random(36), 10);
    expect(code(() => r.receive(forged))).toBe('CHANNEL_AUTH_FAILED');
    // A's own frame bounced back at A: the directions have different keys.
    expect(code(() => i.receive(i.seal(bytes('mirror'))))).toBe('CHANNEL_AUTH_FAILED');
    const fresh = SecureChannel.accept(cfg(1));
    expect(code(() => fresh.receive(i.seal(bytes('early'))))).toBe('CHANNEL_STATE');
    expect(code(() => r.receive(forged.subarray(0, 20)))).toBe('CHANNEL_MALFORMED');
  });

  it('rejects replays and reordering on a strict (TCP) channel', () => {
    const { i, r } = connect(cfg(0), cfg(1));
    const f0 = i.seal(bytes('0')), f1 = i.seal(bytes('1')), f2 = i.seal(bytes('2'));
    expect(code(() => r.receive(f1))).toBe('CHANNEL_OUT_OF_ORDER');
    expect(str(r.receive(f0).message)).toBe('0');
    expect(code(() => r.receive(f0))).toBe('CHANNEL_REPLAY');
    expect(code(() => r.receive(f2))).toBe('CHANNEL_OUT_OF_ORDER'); // f1 must come first: no silent deletion
    expect(str(r.receive(f1).message)).toBe('1');
    expect(str(r.receive(f2).message)).toBe('2');
    expect(r.stats).toMatchObject({ opened: 3, rejected: { CHANNEL_OUT_OF_ORDER: 2, CHANNEL_REPLAY: 1 } });
  });

  it('tolerates loss but not replay or reordering on a monotonic (lossy link) channel', () => {
    const { i, r } = connect(cfg(0, { ordering: 'monotonic' }), cfg(1, { ordering: 'monotonic' }));
    const f = [0, 1, 2, 3].map((n) => i.seal(bytes(String(n))));
    expect(str(r.receive(f[0]!).message)).toBe('0');
    expect(str(r.receive(f[2]!).message)).toBe('2'); // f1 lost
    expect(code(() => r.receive(f[1]!))).toBe('CHANNEL_REPLAY'); // late = reordered: refused
    expect(code(() => r.receive(f[2]!))).toBe('CHANNEL_REPLAY');
    expect(str(r.receive(f[3]!).message)).toBe('3');
  });

  it('refuses frames after close and oversized messages', () => {
    const { i, r } = connect(cfg(0, { maxPlaintextBytes: 100 }), cfg(1, { maxPlaintextBytes: 50 }));
    expect(code(() => i.seal(new Uint8Array(101)))).toBe('CHANNEL_TOO_LARGE');
    expect(code(() => r.receive(i.seal(new Uint8Array(80))))).toBe('CHANNEL_TOO_LARGE');
    const f = i.seal(bytes('late'));
    r.close();
    expect(code(() => r.receive(f))).toBe('CHANNEL_CLOSED');
  });
});
