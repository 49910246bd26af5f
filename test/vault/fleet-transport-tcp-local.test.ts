// TCP transport edge cases, with both replicas in this process (real tokens, real loopback sockets).
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { connect, type Socket } from 'node:net';
import { provisionTestFleet, type TestFleet } from '../helpers/fleet.ts';
import { KeyLabels, type Token } from '../../hsm-adapter/token.ts';
import { TokenError } from '../../hsm-adapter/errors.ts';
import { TcpTransport, type TcpTransportOptions } from '../../vault/fleet/transport-tcp.ts';
import { TransportError } from '../../vault/fleet/transport.ts';

let fleet: TestFleet;
let tokens: Token[];
let ids: string[];
let pins: Map<string, Uint8Array>;
const open: TcpTransport[] = [];
const sockets: Socket[] = [];

beforeAll(async () => {
  fleet = await provisionTestFleet({ replicas: 2 });
  tokens = fleet.replicas.map((r) => fleet.openToken(r.tokenLabel));
  ids = fleet.replicas.map((r) => r.name);
  pins = new Map(ids.map((id, i) => [id, tokens[i]!.publicKey(KeyLabels.replicaIdentity)]));
});
afterEach(async () => {
  for (const s of sockets.splice(0)) s.destroy();
  await Promise.all(open.splice(0).map((t) => t.close()));
});
afterAll(async () => { await fleet?.cleanup(); });

async function start(i: number, over: Partial<TcpTransportOptions> = {}): Promise<TcpTransport> {
  const t = await TcpTransport.start({ fleetId: 'local', self: ids[i]!, token: tokens[i]!, pins, backoff: { initialMs: 10, maxMs: 50 }, ...over });
  open.push(t);
  return t;
}
function inbox(t: TcpTransport): { from: string; text: string }[] {
  const got: { from: string; text: string }[] = [];
  t.onMessage((from, b) => got.push({ from, text: new TextDecoder().decode(b) }));
  return got;
}
async function until(cond: () => boolean, ms = 10_000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 5));
  }
}
const enc = (s: string) => new TextEncoder().encode(s);
function rawSocket(port: number): Promise<Socket> {
  return new Promise((resolve) => {
    const s = connect({ host: '127.0.0.1', port }, () => resolve(s));
    s.on('error', () => {});
    sockets.push(s);
  });
}

describe('TCP transport (in process)', () => {
  it('refuses unknown peers with a typed error and drops oversized messages', async () => {
    const a = await start(0, { maxFrameBytes: 1024 });
    expect(() => a.send('nobody', enc('x'))).toThrow(TransportError);
    a.send(ids[1]!, new Uint8Array(2000));
    expect(a.stats().dropped['too-large']).toBe(1);
    await expect(TcpTransport.start({ fleetId: 'local', self: 'stranger', token: tokens[0]!, pins })).rejects.toThrow(/no pinned identity/);
  });

  it('holds a bounded queue until the peer is reachable, then delivers in order', async () => {
    const b = await start(1);
    const got = inbox(b);
    const a = await start(0, { maxQueuedPerPeer: 3 });
    for (let k = 0; k < 5; k++) a.send(ids[1]!, enc(`q${k}`));
    expect(a.stats().dropped['queue-full']).toBe(2);
    a.setPeerAddress(ids[1]!, b.address);
    await until(() => got.length === 3);
    expect(got.map((m) => m.text)).toEqual(['q2', 'q3', 'q4']);
    expect(got.every((m) => m.from === ids[0])).toBe(true);
  });

  it('survives its own token failing during a handshake, and the dialler retries', async () => {
    // The real token, with one injected CKR_DEVICE_ERROR on the next signature.
    let failNext = true;
    const real = tokens[1]!;
    const flaky: Token = Object.create(real, {
      sign: { value: (label: string, data: Uint8Array) => {
        if (failNext) { failNext = false; throw new TokenError('TOKEN_FAILED', 'C_Sign failed', { ckr: 'CKR_DEVICE_ERROR', operation: 'sign' }); }
        return real.sign(label, data);
      } },
    });
    const b = await start(1, { token: flaky });
    const got = inbox(b);
    const a = await start(0, { peers: { [ids[1]!]: b.address } });
    a.send(ids[1]!, enc('after a token hiccup'));
    await until(() => got.length === 1);
    expect(b.stats().dropped.TRANSPORT_TOKEN_FAILED).toBe(1);
    expect(b.stats().rejectedConnections).toBe(1);
  });

  it('closes connections that never finish the handshake, and bounds pending handshakes', async () => {
    const b = await start(1, { handshakeTimeoutMs: 100, maxPendingHandshakes: 2 });
    const silent = await rawSocket(b.address.port);
    const closed = new Promise<void>((r) => silent.once('close', () => r()));
    await rawSocket(b.address.port);
    const third = await rawSocket(b.address.port);
    const thirdClosed = new Promise<void>((r) => third.once('close', () => r()));
    await thirdClosed;
    expect(b.stats().dropped['handshake-limit']).toBe(1);
    await closed;
    await until(() => (b.stats().dropped['handshake-timeout'] ?? 0) >= 2);
  });
});
