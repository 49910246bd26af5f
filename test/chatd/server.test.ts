// ChatD over real loopback sockets, between the device transport (client/transport.ts) and a stand-in
// vault that decodes and records every relay envelope it receives.
import { afterEach, describe, expect, it } from 'vitest';
import net from 'node:net';
import { WebSocket } from 'ws';
import { MAX_RELAY_BODY, encodeRelayReply } from '../../protocol/relay.ts';
import {
  CHATD_HTTP_PATH,
  FrameKind,
  decodeErrorBody,
  decodeFrame,
  encodeFrame,
} from '../../protocol/device-frames.ts';
import { AccountStore } from '../../chatd/accounts.ts';
import { startChatd, type Chatd, type ChatdLimits } from '../../chatd/server.ts';
import {
  ChatdAuthError,
  ChatdClient,
  ChatdRateLimitError,
  ChatdRejectedError,
  ChatdTimeoutError,
  ChatdUnreachableError,
  SessionClosedError,
  VaultUnavailableError,
} from '../../client/transport.ts';
import {
  captureLog,
  closedPort,
  randomBody,
  sleep,
  startStandInVault,
  tempState,
  transform,
  type StandInVault,
} from './fixtures.ts';

const ALICE = '+15551234567';
const BOB = '+447700900123';

interface Rig {
  vault: StandInVault;
  chatd: Chatd;
  alice: string;
  bob: string;
  store: AccountStore;
  logs: ReturnType<typeof captureLog>;
  clock: { t: number };
}

const cleanups: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

async function boot(limits: Partial<ChatdLimits> = {}, opts: { vaultUrl?: string; fakeClock?: boolean } = {}): Promise<Rig> {
  const state = tempState();
  cleanups.push(state.cleanup);
  const vault = await startStandInVault();
  cleanups.push(() => vault.close());
  const store = new AccountStore(state.dir);
  const alice = (await store.create(ALICE)).token;
  const bob = (await store.create(BOB)).token;
  const logs = captureLog();
  const clock = { t: 0 };
  const chatd = await startChatd({
    vaultUrl: opts.vaultUrl ?? vault.url,
    stateDir: state.dir,
    limits,
    log: logs.log,
    ...(opts.fakeClock ? { now: () => clock.t } : {}),
  });
  cleanups.push(() => chatd.close());
  return { vault, chatd, alice, bob, store, logs, clock };
}

function client(rig: Rig, token: string): ChatdClient {
  const c = new ChatdClient({ url: rig.chatd.url, token });
  cleanups.push(() => c.close());
  return c;
}

async function post(url: string, headers: Record<string, string>, body: Uint8Array) {
  const res = await fetch(url + CHATD_HTTP_PATH, { method: 'POST', headers, body });
  return { status: res.status, headers: res.headers, body: new Uint8Array(await res.arrayBuffer()) };
}

describe('ChatD authentication', () => {
  it('refuses missing, malformed, unknown and revoked tokens with 401 and forwards nothing', async () => {
    const rig = await boot();
    const body = randomBody(64);
    const unknown = 'bkvt_' + 'A'.repeat(43);
    for (const headers of [{} as Record<string, string>, { authorization: 'Basic abc' }, { authorization: 'Bearer' }, { authorization: `Bearer ${unknown}` }]) {
      const r = await post(rig.chatd.url, headers, body);
      expect(r.status).toBe(401);
      expect(r.headers.get('www-authenticate')).toMatch(/^Bearer/);
      expect(decodeErrorBody(r.body).code).toBe('UNAUTHORIZED');
    }
    await expect(client(rig, unknown).request(body)).rejects.toBeInstanceOf(ChatdAuthError);
    // Works, then the account is revoked (by another store instance, as the CLI would) and stops working.
    const c = client(rig, rig.alice);
    expect(await c.request(body)).toEqual(transform(body));
    const open = await c.openSession();
    await rig.store.revoke(ALICE);
    await expect(c.request(body)).rejects.toBeInstanceOf(ChatdAuthError);
    // A session opened before the revocation is refused at its next request, then closed.
    await expect(open.request(body)).rejects.toBeInstanceOf(ChatdAuthError);
    await expect(open.request(body)).rejects.toBeInstanceOf(SessionClosedError);
    await expect(c.openSession()).rejects.toBeInstanceOf(ChatdAuthError);
    await expect(c.openSession({ authInFirstFrame: true })).rejects.toBeInstanceOf(ChatdAuthError);
    expect(rig.vault.received).toHaveLength(1);
  });

  it('forwards the authenticated account as the user, whatever the body says', async () => {
    const rig = await boot();
    const a = client(rig, rig.alice);
    const b = client(rig, rig.bob);
    const body = new TextEncoder().encode(`{"user":"${BOB}"}`);
    await a.request(body);
    await b.request(body);
    const s = await a.openSession();
    await s.request(body);
    await s.close();
    expect(rig.vault.received.map((r) => r.user)).toEqual([ALICE, BOB, ALICE]);
  });

  it('closes a WebSocket that sends no AUTH frame in time, or a REQUEST before AUTH', async () => {
    const rig = await boot({ wsAuthTimeoutMs: 100 });
    const silent = new WebSocket(rig.chatd.wsUrl);
    const code = await new Promise<number>((r) => silent.on('close', (c) => r(c)));
    expect(code).toBe(1008);
    const eager = new WebSocket(rig.chatd.wsUrl);
    await new Promise((r) => eager.on('open', r));
    const frames: Uint8Array[] = [];
    eager.on('message', (d) => frames.push(new Uint8Array(d as Buffer)));
    eager.send(encodeFrame({ kind: FrameKind.Request, id: 1, payload: randomBody(8) }));
    expect(await new Promise<number>((r) => eager.on('close', (c) => r(c)))).toBe(1008);
    const f = decodeFrame(frames[0]!);
    expect(f.kind).toBe(FrameKind.Error);
    expect(decodeErrorBody(f.payload).code).toBe('UNAUTHORIZED');
    expect(rig.vault.received).toHaveLength(0);
  });
});

describe('ChatD forwarding', () => {
  it('passes bodies byte-exact both ways over HTTP', async () => {
    const rig = await boot();
    const c = client(rig, rig.alice);
    const all = Uint8Array.from({ length: 256 }, (_, i) => i);
    const bodies = [new Uint8Array([0]), all, randomBody(1000), randomBody(MAX_RELAY_BODY)];
    for (const body of bodies) {
      expect(await c.request(body)).toEqual(transform(body));
    }
    expect(rig.vault.received.map((r) => Buffer.from(r.body).toString('hex'))).toEqual(bodies.map((b) => Buffer.from(b).toString('hex')));
  });

  it('passes bodies byte-exact over WebSocket, with the token in the header or the first frame', async () => {
    const rig = await boot();
    const c = client(rig, rig.alice);
    for (const authInFirstFrame of [false, true]) {
      const s = await c.openSession({ authInFirstFrame });
      for (const body of [randomBody(1), randomBody(300), randomBody(MAX_RELAY_BODY)]) {
        expect(await s.request(body)).toEqual(transform(body));
      }
      await s.close();
    }
    expect(rig.vault.received).toHaveLength(6);
    expect(rig.vault.received.every((r) => r.user === ALICE)).toBe(true);
  });

  it('matches pipelined WebSocket replies to their requests when the vault answers out of order', async () => {
    const rig = await boot();
    // The vault answers each request after a delay derived from its first byte: later requests first.
    rig.vault.handler = async (r, res) => {
      await sleep(((255 - r.body[0]!) % 16) * 5);
      res.writeHead(200).end(encodeRelayReply({ ok: true, body: transform(r.body) }));
    };
    const s = await client(rig, rig.alice).openSession();
    const bodies = Array.from({ length: 24 }, (_, i) => {
      const b = randomBody(40 + i);
      b[0] = i * 10;
      return b;
    });
    const replies = await Promise.all(bodies.map((b) => s.request(b)));
    replies.forEach((r, i) => expect(r).toEqual(transform(bodies[i]!)));
    expect(rig.vault.maxConcurrent).toBeGreaterThan(1);
    await s.close();
  });
});

describe('ChatD WebSocket sessions', () => {
  it('caps requests in flight per socket and refuses an id already in flight', async () => {
    const rig = await boot({ maxInFlightPerSocket: 2 });
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    rig.vault.handler = async (r, res) => {
      await gate;
      res.writeHead(200).end(encodeRelayReply({ ok: true, body: transform(r.body) }));
    };
    const s = await client(rig, rig.alice).openSession();
    const held = [randomBody(10), randomBody(11)];
    const first = held.map((b) => s.request(b));
    while (rig.vault.received.length < 2) await sleep(5);
    const third = await s.request(randomBody(12)).catch((e: unknown) => e);
    expect(third).toBeInstanceOf(ChatdRateLimitError);
    expect((third as ChatdRateLimitError).code).toBe('TOO_MANY_IN_FLIGHT');
    release();
    expect(await Promise.all(first)).toEqual(held.map(transform));
    await s.close();

    // A device that reuses an id still in flight gets an ERROR for it; the original is still answered.
    rig.vault.handler = async (r, res) => {
      await sleep(50);
      res.writeHead(200).end(encodeRelayReply({ ok: true, body: transform(r.body) }));
    };
    const ws = new WebSocket(rig.chatd.wsUrl, { headers: { authorization: `Bearer ${rig.alice}` } });
    const frames: ReturnType<typeof decodeFrame>[] = [];
    ws.on('message', (d) => frames.push(decodeFrame(new Uint8Array(d as Buffer))));
    await new Promise((r) => ws.on('open', r));
    const body = randomBody(9);
    ws.send(encodeFrame({ kind: FrameKind.Request, id: 7, payload: body }));
    ws.send(encodeFrame({ kind: FrameKind.Request, id: 7, payload: randomBody(9) }));
    while (frames.length < 3) await sleep(5);
    expect(frames.map((f) => [f.kind, f.id])).toEqual([[FrameKind.Ready, 0], [FrameKind.Error, 7], [FrameKind.Reply, 7]]);
    expect(decodeErrorBody(frames[1]!.payload).code).toBe('BAD_REQUEST');
    expect(frames[2]!.payload).toEqual(transform(body));
    ws.close();
  });

  it('times out at the device when ChatD does not answer', async () => {
    const net = await import('node:net');
    const held = new Set<import('node:net').Socket>();
    const mute = net.createServer((sock) => held.add(sock)); // accepts, never answers
    await new Promise<void>((r) => mute.listen(0, '127.0.0.1', r));
    cleanups.push(() => {
      for (const sock of held) sock.destroy();
      return new Promise<void>((r) => mute.close(() => r()));
    });
    const url = `http://127.0.0.1:${(mute.address() as { port: number }).port}`;
    const c = new ChatdClient({ url, token: 'bkvt_' + 'A'.repeat(43), timeoutMs: 100 });
    const e = await c.request(randomBody(4)).catch((x: unknown) => x);
    expect(e).toBeInstanceOf(ChatdTimeoutError);
    expect((e as ChatdTimeoutError).status).toBeUndefined();
    await expect(c.openSession()).rejects.toBeInstanceOf(ChatdTimeoutError);
    c.close();
  });
});

describe('ChatD rate limits', () => {
  it('answers 429 with Retry-After once an account spends its burst; other accounts are unaffected', async () => {
    const rig = await boot({ perAccount: { burst: 3, perSecond: 0.5 } }, { fakeClock: true });
    const a = client(rig, rig.alice);
    for (let i = 0; i < 3; i++) await a.request(randomBody(10));
    const err = await a.request(randomBody(10)).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ChatdRateLimitError);
    expect((err as ChatdRateLimitError).retryAfterMs).toBe(2000);
    const raw = await post(rig.chatd.url, { authorization: `Bearer ${rig.alice}` }, randomBody(10));
    expect(raw.status).toBe(429);
    expect(raw.headers.get('retry-after')).toBe('2');
    // Over WebSocket the same bucket applies.
    const s = await a.openSession();
    await expect(s.request(randomBody(10))).rejects.toBeInstanceOf(ChatdRateLimitError);
    await client(rig, rig.bob).request(randomBody(10));
    expect(rig.vault.received.map((r) => r.user)).toEqual([ALICE, ALICE, ALICE, BOB]);
    // Two seconds later (on ChatD's clock) Alice has one token again.
    rig.clock.t += 2000;
    await s.request(randomBody(10));
    await expect(s.request(randomBody(10))).rejects.toBeInstanceOf(ChatdRateLimitError);
    await s.close();
  });

  it('limits a client address across accounts; failed authentications spend their own bucket, not the valid devices\'', async () => {
    const rig = await boot({ perAddress: { burst: 4, perSecond: 1 }, perUnauthenticated: { burst: 2, perSecond: 1 } }, { fakeClock: true });
    await client(rig, rig.alice).request(randomBody(10));
    await client(rig, rig.bob).request(randomBody(10));
    // Guesses are limited by their own bucket: two 401s, then 429, token or not.
    for (const headers of [{ authorization: 'Bearer bkvt_' + 'B'.repeat(43) }, {}] as Record<string, string>[]) {
      expect((await post(rig.chatd.url, headers, randomBody(10))).status).toBe(401);
    }
    for (const headers of [{ authorization: 'Bearer bkvt_' + 'D'.repeat(43) }, {}] as Record<string, string>[]) {
      const r = await post(rig.chatd.url, headers, randomBody(10));
      expect(r.status).toBe(429);
      expect(decodeErrorBody(r.body)).toMatchObject({ code: 'RATE_LIMITED', retryAfterMs: 1000 });
    }
    // ...which left the address's valid devices their whole share: two more, then the address is spent.
    await client(rig, rig.alice).request(randomBody(10));
    await client(rig, rig.bob).request(randomBody(10));
    for (const token of [rig.alice, rig.bob]) {
      const e = await client(rig, token).request(randomBody(10)).catch((x: unknown) => x);
      expect(e).toBeInstanceOf(ChatdRateLimitError);
      expect((e as ChatdRateLimitError).retryAfterMs).toBe(1000);
    }
    // The WebSocket upgrade is refused too: with a valid token (the address's bucket), and token-less (the failures' bucket).
    await expect(client(rig, rig.bob).openSession()).rejects.toBeInstanceOf(ChatdRateLimitError);
    await expect(client(rig, rig.bob).openSession({ authInFirstFrame: true })).rejects.toBeInstanceOf(ChatdRateLimitError);
    expect(rig.vault.received).toHaveLength(4);
  });

  it('a flood of token-less and wrong-token requests does not 429 a valid device at the same address (defaults)', async () => {
    const rig = await boot({}, { fakeClock: true });
    const flood = [...Array(1500).keys()].map((i) => post(rig.chatd.url, i % 2 ? {} : { authorization: 'Bearer bkvt_' + 'Z'.repeat(43) }, randomBody(10)));
    const statuses = (await Promise.all(flood)).map((r) => r.status);
    expect(statuses.filter((x) => x === 401)).toHaveLength(200); // the failures' burst
    expect(statuses.filter((x) => x === 429)).toHaveLength(1300);
    // The clock has not moved: before the split, the flood had spent the address's 1,000 tokens too.
    const c = client(rig, rig.alice);
    for (let i = 0; i < 20; i++) await c.request(randomBody(10));
    const s = await client(rig, rig.bob).openSession();
    await s.request(randomBody(10));
    await s.close();
    expect(rig.vault.received).toHaveLength(21);
  });
});

describe('ChatD slow clients', () => {
  it('cuts a request whose headers or body do not arrive in time with 408 at the stated time, forwarding nothing', async () => {
    const requestTimeoutMs = 800;
    const rig = await boot({ requestTimeoutMs });
    const { port } = new URL(rig.chatd.url);
    const slow = (first: string) => new Promise<{ ms: number; head: string; body: string }>((resolve, reject) => {
      const t0 = performance.now();
      const sock = net.connect(Number(port), '127.0.0.1', () => sock.write(first));
      let got = '';
      sock.on('data', (d) => { got += d.toString(); });
      sock.on('error', reject);
      sock.on('close', () => {
        const [head, body] = got.split('\r\n\r\n');
        resolve({ ms: performance.now() - t0, head: head ?? '', body: body ?? '' });
      });
    });
    const [headers, body] = await Promise.all([
      slow(`POST ${CHATD_HTTP_PATH} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer ${rig.alice}\r\n`),
      slow(`POST ${CHATD_HTTP_PATH} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer ${rig.alice}\r\ncontent-length: 100\r\n\r\nab`),
    ]);
    for (const r of [headers, body]) {
      expect(r.head.split('\r\n')[0]).toBe('HTTP/1.1 408 Request Timeout');
      expect(decodeErrorBody(new TextEncoder().encode(r.body))).toMatchObject({ code: 'REQUEST_TIMEOUT', status: 408 });
      // Checked every 40 ms here (a twentieth of the timeout): at the time, not up to 30 s later.
      expect(r.ms).toBeGreaterThanOrEqual(requestTimeoutMs - 5);
      expect(r.ms).toBeLessThan(requestTimeoutMs + 400);
    }
    expect(rig.vault.received).toHaveLength(0);
    expect(rig.logs.entries.filter((e) => e.code === 'REQUEST_TIMEOUT')).toHaveLength(2);
  });
});

describe('ChatD input limits', () => {
  it('rejects oversized and empty bodies over HTTP with nothing forwarded', async () => {
    const rig = await boot();
    const c = client(rig, rig.alice);
    const big = await c.request(randomBody(MAX_RELAY_BODY + 1)).catch((e: unknown) => e);
    expect(big).toBeInstanceOf(ChatdRejectedError);
    expect((big as ChatdRejectedError).code).toBe('BODY_TOO_LARGE');
    expect((big as ChatdRejectedError).status).toBe(413);
    // A body far past the limit, declared honestly, is refused before it is read.
    const huge = await post(rig.chatd.url, { authorization: `Bearer ${rig.alice}` }, randomBody(1 << 20)).catch(() => ({ status: 413 }));
    expect(huge.status).toBe(413);
    const empty = await c.request(new Uint8Array(0)).catch((e: unknown) => e);
    expect((empty as ChatdRejectedError).code).toBe('BAD_REQUEST');
    const wrongMethod = await fetch(rig.chatd.url + CHATD_HTTP_PATH, { headers: { authorization: `Bearer ${rig.alice}` } });
    expect(wrongMethod.status).toBe(405);
    expect((await fetch(rig.chatd.url + '/v1/other', { method: 'POST' })).status).toBe(404);
    expect(await (await fetch(rig.chatd.url + '/v1/health')).text()).toBe('ok');
    expect(rig.vault.received).toHaveLength(0);
    expect(await c.request(randomBody(5))).toHaveLength(5); // ChatD still serves
  });

  it('rejects an oversized WebSocket request per request and closes on malformed frames', async () => {
    const rig = await boot();
    const s = await client(rig, rig.alice).openSession();
    const e = await s.request(randomBody(MAX_RELAY_BODY + 1)).catch((x: unknown) => x);
    expect((e as ChatdRejectedError).code).toBe('BODY_TOO_LARGE');
    const empty = await s.request(new Uint8Array(0)).catch((x: unknown) => x);
    expect((empty as ChatdRejectedError).code).toBe('BAD_REQUEST');
    const ok = randomBody(33);
    expect(await s.request(ok)).toEqual(transform(ok)); // the session survives
    await s.close();

    for (const [bad, want] of [
      [new Uint8Array([9, FrameKind.Request, 0, 0, 0, 1, 42]), 1002], // wrong version
      [new Uint8Array([1, 0x7f, 0, 0, 0, 1, 42]), 1002], // unknown kind
      [new Uint8Array([1, 2, 0]), 1002], // shorter than a header
      ['text frame', 1003],
    ] as const) {
      const ws = new WebSocket(rig.chatd.wsUrl, { headers: { authorization: `Bearer ${rig.alice}` } });
      await new Promise((r) => ws.on('message', r)); // READY
      ws.send(bad);
      expect(await new Promise<number>((r) => ws.on('close', (c) => r(c)))).toBe(want);
    }
    expect(rig.vault.received.map((r) => r.body)).toEqual([ok]);
  });
});

describe('ChatD when the vault misbehaves', () => {
  it('maps an unreachable vault to 502 VaultUnavailableError', async () => {
    const rig = await boot({}, { vaultUrl: `http://127.0.0.1:${await closedPort()}` });
    const c = client(rig, rig.alice);
    const e = await c.request(randomBody(10)).catch((x: unknown) => x);
    expect(e).toBeInstanceOf(VaultUnavailableError);
    expect((e as VaultUnavailableError).status).toBe(502);
    const s = await c.openSession();
    await expect(s.request(randomBody(10))).rejects.toBeInstanceOf(VaultUnavailableError);
    await s.close();
  });

  it('maps a vault 503, a typed vault error, a garbage reply and a slow vault to typed errors', async () => {
    const rig = await boot({ vaultTimeoutMs: 150 });
    const c = client(rig, rig.alice);
    rig.vault.handler = (_r, res) => res.writeHead(503).end(encodeRelayReply({ ok: false, code: 'NO_QUORUM', message: 'no quorum' }));
    const down = await c.request(randomBody(10)).catch((x: unknown) => x);
    expect(down).toBeInstanceOf(VaultUnavailableError);
    expect((down as VaultUnavailableError).status).toBe(503);
    expect((down as VaultUnavailableError).vaultCode).toBe('NO_QUORUM');

    rig.vault.handler = (_r, res) => res.writeHead(200).end(encodeRelayReply({ ok: false, code: 'BAD_WIRE_MESSAGE', message: 'bad\nmessage' }));
    const rejected = await c.request(randomBody(10)).catch((x: unknown) => x);
    expect(rejected).toBeInstanceOf(ChatdRejectedError);
    expect((rejected as ChatdRejectedError).code).toBe('VAULT_REJECTED');
    expect((rejected as ChatdRejectedError).vaultCode).toBe('BAD_WIRE_MESSAGE');

    rig.vault.handler = (_r, res) => res.writeHead(200).end('not msgpack at all');
    const garbage = await c.request(randomBody(10)).catch((x: unknown) => x);
    expect(garbage).toBeInstanceOf(VaultUnavailableError);
    expect((garbage as VaultUnavailableError).status).toBe(502);

    rig.vault.handler = () => {}; // never answers
    const slow = await c.request(randomBody(10)).catch((x: unknown) => x);
    expect(slow).toBeInstanceOf(ChatdTimeoutError);
    expect((slow as ChatdTimeoutError).status).toBe(504);
    const s = await c.openSession();
    await expect(s.request(randomBody(10))).rejects.toBeInstanceOf(ChatdTimeoutError);
    await s.close();
  });
});

describe('ChatD logging', () => {
  it('logs one structured line per request and never the token or body bytes', async () => {
    const rig = await boot({ perAccount: { burst: 12, perSecond: 0.001 } });
    const c = client(rig, rig.alice);
    const ascii = new TextEncoder().encode('OPAQUE-KE1 password-derived blob '.repeat(8));
    const bodies = [ascii, randomBody(200), randomBody(MAX_RELAY_BODY)];
    for (const b of bodies) await c.request(b);
    const s = await c.openSession({ authInFirstFrame: true });
    for (const b of bodies) await s.request(b);
    await s.request(randomBody(MAX_RELAY_BODY + 1)).catch(() => {});
    await s.close();
    rig.vault.handler = (_r, res) => res.writeHead(200).end(encodeRelayReply({ ok: false, code: 'LOCKED', message: 'locked' }));
    await c.request(bodies[1]!).catch(() => {});
    // A near-miss token must not be logged either.
    const nearMiss = rig.alice.slice(0, -1) + (rig.alice.endsWith('A') ? 'B' : 'A');
    await client(rig, nearMiss).request(bodies[0]!).catch(() => {});
    for (let i = 0; i < 6; i++) await c.request(bodies[0]!).catch(() => {}); // into the rate limit
    await rig.chatd.close();

    const entries = rig.logs.entries;
    const text = entries.map((e) => JSON.stringify(e)).join('\n');
    // No 12-character piece of any token's random part (the bkvt_ prefix is public).
    for (const token of [rig.alice, rig.bob, nearMiss]) {
      for (let i = 5; i + 12 <= token.length; i++) expect(text).not.toContain(token.slice(i, i + 12));
    }
    expect(leakedWindows(text, [...bodies, ...bodies.map(transform)])).toEqual([]);
    const http = entries.filter((e) => e.event === 'request' && e.via === 'http');
    expect(http.length).toBe(3 + 1 + 1 + 6);
    for (const e of http) {
      expect(e).toMatchObject({ route: CHATD_HTTP_PATH, addr: '127.0.0.1', method: 'POST' });
      expect(typeof e.t).toBe('string');
      expect(typeof e.status).toBe('number');
      expect(typeof e.ms).toBe('number');
      expect(typeof e.inBytes).toBe('number');
      expect(typeof e.outBytes).toBe('number');
    }
    expect(http.slice(0, 3).map((e) => [e.status, e.inBytes, e.outBytes])).toEqual(bodies.map((b) => [200, b.length, b.length]));
    expect(http[3]).toMatchObject({ status: 422, code: 'VAULT_REJECTED', vaultCode: 'LOCKED' });
    expect(http[4]).toMatchObject({ status: 401, code: 'UNAUTHORIZED' });
    expect(http[4]!.acct).toBeUndefined();
    expect(http.at(-1)).toMatchObject({ status: 429, code: 'RATE_LIMITED' });
    const tags = new Set(http.filter((e) => e.acct).map((e) => e.acct));
    expect(tags.size).toBe(1);
    expect([...tags][0]).toMatch(/^[0-9a-f]{12}$/);
    const ws = entries.filter((e) => e.event === 'request' && e.via === 'ws' && e.route === '/v1/ws');
    expect(ws.map((e) => e.status)).toEqual([200, 200, 200, 413]);
    expect(entries.some((e) => e.event === 'ws-close' && e.requests === 4)).toBe(true);
  });
});

describe('ChatD shutdown', () => {
  it('lets a request already at the vault finish, closes sessions, then refuses connections', async () => {
    const rig = await boot();
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    rig.vault.handler = async (r, res) => {
      await gate;
      res.writeHead(200).end(encodeRelayReply({ ok: true, body: transform(r.body) }));
    };
    const c = client(rig, rig.alice);
    const s = await c.openSession();
    const body = randomBody(20);
    const pending = c.request(body);
    while (rig.vault.received.length === 0) await sleep(5);
    const closing = rig.chatd.close();
    await sleep(20);
    release();
    expect(await pending).toEqual(transform(body));
    await closing;
    await expect(s.request(randomBody(5))).rejects.toBeInstanceOf(SessionClosedError);
    await expect(new ChatdClient({ url: rig.chatd.url, token: rig.alice }).request(body)).rejects.toBeInstanceOf(ChatdUnreachableError);
  });
});

/**
 * Every 16-byte window of every body, looked for in the log text the ways bytes could end up in a JSON
 * line: hex, base64 (any alignment), printable latin1, or a list of numbers.
 */
function leakedWindows(text: string, bodies: Uint8Array[]): string[] {
  const hex = new Set<string>();
  const b64 = new Set<string>();
  const latin1 = new Set<string>();
  for (const b of bodies) {
    const buf = Buffer.from(b);
    for (let i = 0; i + 16 <= buf.length; i++) {
      const w = buf.subarray(i, i + 16);
      hex.add(w.toString('hex'));
      // 12 aligned bytes -> 16 base64 characters; any base64 rendering of the window contains one.
      for (let k = 0; k < 3; k++) b64.add(w.subarray(k, k + 12).toString('base64'));
      const l = w.toString('latin1');
      if (/^[\x20-\x7e]+$/.test(l)) latin1.add(l);
    }
  }
  const found: string[] = [];
  const lower = text.toLowerCase();
  for (let i = 0; i + 16 <= text.length; i++) {
    if (i + 32 <= text.length && hex.has(lower.slice(i, i + 32))) found.push(`hex@${i}`);
    if (b64.has(text.slice(i, i + 16))) found.push(`base64@${i}`);
    if (latin1.has(text.slice(i, i + 16))) found.push(`latin1@${i}`);
  }
  for (const m of text.matchAll(/\d{1,3}(?:,\d{1,3}){15,}/g)) {
    const nums = m[0].split(',').map(Number);
    if (nums.some((n) => n > 255)) continue;
    for (let i = 0; i + 16 <= nums.length; i++) {
      if (hex.has(Buffer.from(nums.slice(i, i + 16)).toString('hex'))) found.push(`numbers@${m.index}`);
    }
  }
  return found;
}
