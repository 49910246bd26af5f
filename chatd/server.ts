// ChatD: the untrusted relay between devices and the vault. It authenticates a device by its account
// token, rate-limits it, and forwards its bytes to the vault named as the account's user, without
// being able to read them. HTTP (one request per POST) and WebSocket (pipelined, framed by
// protocol/device-frames.ts) carry the same operation.
import http from 'node:http';
import type { Duplex } from 'node:stream';
import { WebSocketServer, type WebSocket, type RawData } from 'ws';
import { MAX_RELAY_BODY, REGION_HEADER, isRegionHint } from '../protocol/relay.ts';
import { listenError } from '../protocol/errors.ts';
import { bearerMatches } from '../protocol/hop-secret.ts';
import { ChatdMetrics } from './metrics.ts';

/** Prometheus metrics, with the metrics key (docs/chatd.md). */
export const CHATD_METRICS_PATH = '/metrics';
import {
  CHATD_HEALTH_PATH,
  CHATD_HTTP_PATH,
  CHATD_WS_PATH,
  FRAME_HEADER_BYTES,
  FrameError,
  FrameKind,
  MAX_TOKEN_BYTES,
  chatdError,
  decodeFrame,
  encodeErrorBody,
  encodeFrame,
} from '../protocol/device-frames.ts';
import { AccountIndex, type AuthenticatedAccount } from './accounts.ts';
import { AccountStoreError, ChatdConfigError, ChatdReplyError } from './errors.ts';
import { VaultForwarder } from './forward.ts';
import { RateLimiter, type BucketLimit } from './rate-limit.ts';
import { stderrLog, type ChatdLog, type ChatdLogEntry } from './log.ts';

export interface ChatdLimits {
  /** Requests per authenticated account. */
  perAccount: BucketLimit;
  /** Authenticated requests (and WebSocket upgrades that carry a valid token) per client address. */
  perAddress: BucketLimit;
  /**
   * Requests that fail authentication (no token, an unknown or revoked one; token-less WebSocket
   * upgrades; failed AUTH frames) per client address: their own bucket, so a flood of them cannot
   * spend the one valid devices at that address draw from.
   */
  perUnauthenticated: BucketLimit;
  /** Largest device message accepted; at most MAX_RELAY_BODY. */
  maxBodyBytes: number;
  /** How long ChatD waits for the vault before answering VAULT_TIMEOUT. */
  vaultTimeoutMs: number;
  /** Requests one WebSocket may have waiting on the vault at once. */
  maxInFlightPerSocket: number;
  /** A WebSocket without a token in its upgrade must send its AUTH frame within this. */
  wsAuthTimeoutMs: number;
  /** Slow clients: the whole HTTP request (headers and body) must arrive within this. */
  requestTimeoutMs: number;
  /** close() lets requests already at the vault finish for this long. */
  shutdownGraceMs: number;
}

export const DEFAULT_LIMITS: ChatdLimits = {
  perAccount: { burst: 50, perSecond: 20 },
  // Generous: on loopback every device shares one address.
  perAddress: { burst: 1000, perSecond: 500 },
  perUnauthenticated: { burst: 200, perSecond: 50 },
  maxBodyBytes: MAX_RELAY_BODY,
  vaultTimeoutMs: 10_000,
  maxInFlightPerSocket: 32,
  wsAuthTimeoutMs: 5_000,
  requestTimeoutMs: 15_000,
  shutdownGraceMs: 5_000,
};

export interface ChatdOptions {
  /** 0 (default): any free port. */
  port?: number;
  /** Default 127.0.0.1. */
  host?: string;
  /** Base URL of the vault's HTTP front; RELAY_PATH is appended. */
  vaultUrl: string;
  /** The relay key the vault demands on the ChatD -> vault hop (protocol/hop-secret.ts). */
  relayKey?: string;
  /** GET /metrics answers only requests carrying this key (the metrics key, <state>/metrics.key); unset: no /metrics. */
  metricsKey?: string;
  /** Holds chatd/accounts.json (see accounts.ts). */
  stateDir: string;
  limits?: Partial<ChatdLimits>;
  /** Default: JSON lines on stderr. */
  log?: ChatdLog;
  /** Monotonic milliseconds, for rate limits and latencies (tests may drive it). */
  now?: () => number;
}

export interface Chatd {
  /** http://host:port */
  url: string;
  /** ws://host:port/v1/ws */
  wsUrl: string;
  close(): Promise<void>;
}

export async function startChatd(opts: ChatdOptions): Promise<Chatd> {
  const limits = resolveLimits(opts.limits);
  const log = opts.log ?? stderrLog;
  const now = opts.now ?? (() => performance.now());
  const accounts = new AccountIndex(opts.stateDir);
  await accounts.load(); // a malformed store stops start-up rather than failing every request
  const forwarder = new VaultForwarder({ vaultUrl: opts.vaultUrl, timeoutMs: limits.vaultTimeoutMs, relayKey: opts.relayKey });
  const byAccount = new RateLimiter(limits.perAccount, now);
  const byAddress = new RateLimiter(limits.perAddress, now);
  const byUnauthenticated = new RateLimiter(limits.perUnauthenticated, now);
  const inflight = new Set<Promise<unknown>>();
  const sockets = new Set<WsSession>();
  let closing = false;

  const metrics = new ChatdMetrics();
  const emit = (e: Omit<ChatdLogEntry, 't'>) => {
    try {
      metrics.observe(e);
      log({ t: new Date().toISOString(), ...e });
    } catch {
      // a failing logger must not take a request down with it
    }
  };

  async function authenticate(token: string | undefined): Promise<AuthenticatedAccount> {
    if (!token || token.length > MAX_TOKEN_BYTES) throw new ChatdReplyError('UNAUTHORIZED', 'missing or invalid account token');
    let acct: AuthenticatedAccount | undefined;
    try {
      acct = await accounts.authenticate(token);
    } catch (e) {
      if (!(e instanceof AccountStoreError)) throw e;
      emit({ event: 'account-store-error', code: e.code });
      throw new ChatdReplyError('UNAVAILABLE', 'ChatD cannot read its account store');
    }
    if (!acct) throw new ChatdReplyError('UNAUTHORIZED', 'missing or invalid account token');
    return acct;
  }

  /** Sessions authenticate once; this re-checks the account before each of their requests. */
  async function stillActive(acct: AuthenticatedAccount): Promise<void> {
    let ok: boolean;
    try {
      ok = await accounts.stillActive(acct);
    } catch (e) {
      if (!(e instanceof AccountStoreError)) throw e;
      emit({ event: 'account-store-error', code: e.code });
      throw new ChatdReplyError('UNAVAILABLE', 'ChatD cannot read its account store');
    }
    if (!ok) throw new ChatdReplyError('UNAUTHORIZED', 'the account token was revoked');
  }

  function admit(limiter: RateLimiter, key: string, what: string): void {
    const v = limiter.take(key);
    if (!v.ok) throw new ChatdReplyError('RATE_LIMITED', `rate limit for this ${what} exceeded`, { retryAfterMs: v.retryAfterMs });
  }

  /**
   * Authenticates, charging the address's bucket by the outcome: a valid token spends perAddress, a
   * failure spends perUnauthenticated (429 once that is empty, 401 before). Tokens are 256-bit random,
   * so guessing is hopeless at any rate; what the split protects is the valid devices' share of an
   * address (on loopback every device has the same one) from a flood of failures.
   */
  async function authenticateAt(addr: string, token: string | undefined): Promise<AuthenticatedAccount> {
    let acct: AuthenticatedAccount;
    try {
      acct = await authenticate(token);
    } catch (e) {
      if (e instanceof ChatdReplyError && e.code === 'UNAUTHORIZED') admit(byUnauthenticated, addr, 'address (requests that fail authentication)');
      throw e;
    }
    admit(byAddress, addr, 'address');
    return acct;
  }

  function track<T>(p: Promise<T>): Promise<T> {
    inflight.add(p);
    const drop = () => inflight.delete(p);
    p.then(drop, drop);
    return p;
  }

  // ---- HTTP ---------------------------------------------------------------------------------------

  async function handleHttp(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const t0 = now();
    const path = (req.url ?? '').split('?')[0]!;
    const entry: Omit<ChatdLogEntry, 't'> = {
      event: 'request',
      via: 'http',
      addr: clientAddress(req.socket.remoteAddress),
      method: req.method,
      route: knownRoute(path),
      inBytes: 0,
      outBytes: 0,
    };
    let bodyRead = false;
    try {
      if (path === CHATD_METRICS_PATH && req.method === 'GET' && opts.metricsKey !== undefined) {
        if (!bearerMatches(req.headers.authorization, opts.metricsKey)) throw new ChatdReplyError('UNAUTHORIZED', 'metrics need the metrics key (<state>/metrics.key)');
        const text = Buffer.from(await metrics.text());
        entry.status = 200;
        entry.outBytes = text.length;
        res.writeHead(200, { 'content-type': metrics.contentType, 'content-length': text.length }).end(text);
        return;
      }
      if (path === CHATD_HEALTH_PATH && req.method === 'GET') {
        entry.status = 200;
        entry.outBytes = 2;
        res.writeHead(200, { 'content-type': 'text/plain', 'content-length': 2 }).end('ok');
        return;
      }
      if (path !== CHATD_HTTP_PATH) throw new ChatdReplyError('NOT_FOUND', 'no such route');
      if (req.method !== 'POST') throw new ChatdReplyError('METHOD_NOT_ALLOWED', `${CHATD_HTTP_PATH} takes POST`);
      if (closing) throw new ChatdReplyError('UNAVAILABLE', 'ChatD is shutting down');
      const acct = await authenticateAt(entry.addr!, bearer(req.headers.authorization));
      entry.acct = acct.tag;
      admit(byAccount, acct.user, 'account');
      const hint = req.headers[REGION_HEADER];
      if (hint !== undefined && !isRegionHint(hint)) throw new ChatdReplyError('BAD_REQUEST', `${REGION_HEADER} must be a replica name`);
      const body = await readBody(req, limits.maxBodyBytes);
      bodyRead = true;
      entry.inBytes = body.length;
      const reply = await track(forwarder.forward(acct.user, body, hint));
      entry.status = 200;
      entry.outBytes = reply.length;
      res.writeHead(200, {
        'content-type': 'application/octet-stream',
        'content-length': reply.length,
        ...(closing ? { connection: 'close' } : {}),
      });
      res.end(reply);
    } catch (e) {
      const err = asReplyError(e);
      entry.status = err.status;
      entry.code = err.code;
      if (err.body.vaultCode) entry.vaultCode = err.body.vaultCode;
      const payload = encodeErrorBody(err.body);
      entry.outBytes = payload.length;
      if (res.headersSent) {
        res.destroy();
        return;
      }
      const headers: http.OutgoingHttpHeaders = { 'content-type': 'application/json', 'content-length': payload.length };
      if (err.body.retryAfterMs !== undefined) headers['retry-after'] = String(Math.max(1, Math.ceil(err.body.retryAfterMs / 1000)));
      if (err.code === 'UNAUTHORIZED') headers['www-authenticate'] = 'Bearer realm="bkv"';
      if (err.code === 'METHOD_NOT_ALLOWED') headers.allow = 'POST';
      // A body we refused unread (or only partly read) is not worth draining: end the connection.
      if (closing || err.code === 'BODY_TOO_LARGE' || (!bodyRead && req.method === 'POST' && !req.complete)) {
        headers.connection = 'close';
      }
      res.writeHead(err.status, headers);
      res.end(payload);
    } finally {
      entry.ms = round(now() - t0);
      emit(entry);
    }
  }

  // ---- WebSocket ----------------------------------------------------------------------------------

  const wss = new WebSocketServer({
    noServer: true,
    // Frames a little over the body limit get a per-request BODY_TOO_LARGE; far larger ones close.
    maxPayload: FRAME_HEADER_BYTES + limits.maxBodyBytes + 64 * 1024,
  });

  async function handleUpgrade(req: http.IncomingMessage, socket: Duplex, head: Buffer): Promise<void> {
    const t0 = now();
    const path = (req.url ?? '').split('?')[0]!;
    const addr = clientAddress(req.socket.remoteAddress);
    const entry: Omit<ChatdLogEntry, 't'> = { event: 'ws-open', via: 'ws', addr, route: knownRoute(path) };
    socket.on('error', () => {});
    try {
      if (path !== CHATD_WS_PATH) throw new ChatdReplyError('NOT_FOUND', 'no such route');
      if (closing) throw new ChatdReplyError('UNAVAILABLE', 'ChatD is shutting down');
      let acct: AuthenticatedAccount | undefined;
      if (req.headers.authorization !== undefined) {
        acct = await authenticateAt(addr, bearer(req.headers.authorization));
        entry.acct = acct.tag;
      } else {
        // Not authenticated yet (its AUTH frame comes later): the unauthenticated bucket pays.
        admit(byUnauthenticated, addr, 'address (requests that fail authentication)');
      }
      wss.handleUpgrade(req, socket, head, (ws) => {
        entry.status = 101;
        entry.ms = round(now() - t0);
        emit(entry);
        const s = new WsSession(ws, addr, acct);
        sockets.add(s);
        ws.on('close', () => sockets.delete(s));
      });
    } catch (e) {
      const err = asReplyError(e);
      entry.status = err.status;
      entry.code = err.code;
      entry.ms = round(now() - t0);
      emit(entry);
      rejectUpgrade(socket, err);
    }
  }

  class WsSession {
    private acct: AuthenticatedAccount | undefined;
    private authing = false;
    private readonly queued: RawData[] = [];
    private readonly pending = new Set<number>();
    private requests = 0;
    private readonly authTimer: NodeJS.Timeout | undefined;

    constructor(
      private readonly ws: WebSocket,
      private readonly addr: string,
      acct: AuthenticatedAccount | undefined,
    ) {
      this.acct = acct;
      ws.on('message', (data, isBinary) => {
        if (!isBinary) return this.fail(1003, 'binary frames only');
        if (this.authing) {
          this.queued.push(data);
          return;
        }
        void this.onFrame(data);
      });
      ws.on('error', () => {});
      ws.on('close', (code) => {
        if (this.authTimer) clearTimeout(this.authTimer);
        emit({ event: 'ws-close', via: 'ws', addr, acct: this.acct?.tag, closeCode: code, requests: this.requests });
      });
      if (acct) this.send(FrameKind.Ready, 0, new Uint8Array());
      else {
        this.authTimer = setTimeout(() => {
          this.sendError(0, new ChatdReplyError('UNAUTHORIZED', 'no AUTH frame in time'));
          this.fail(1008, 'authentication timeout');
        }, limits.wsAuthTimeoutMs);
      }
    }

    /** Closes the socket once requests already at the vault have answered (or the grace ran out). */
    async shutdown(): Promise<void> {
      this.ws.close(1001, 'ChatD is shutting down');
    }

    terminate(): void {
      this.ws.terminate();
    }

    private async onFrame(data: RawData): Promise<void> {
      // Frames that arrive after ChatD started closing the socket (bad frame, failed auth) are dropped.
      if (this.ws.readyState !== this.ws.OPEN) return;
      const bytes = toBytes(data);
      let frame;
      try {
        frame = decodeFrame(bytes);
      } catch (e) {
        if (e instanceof FrameError) return this.fail(1002, 'malformed frame');
        throw e;
      }
      if (!this.acct) {
        if (frame.kind !== FrameKind.Auth) {
          this.sendError(frame.id, new ChatdReplyError('UNAUTHORIZED', 'the first frame must be AUTH'));
          return this.fail(1008, 'not authenticated');
        }
        return this.onAuth(frame.payload);
      }
      if (frame.kind !== FrameKind.Request) {
        if (frame.kind === FrameKind.Auth) {
          this.sendError(frame.id, new ChatdReplyError('BAD_REQUEST', 'already authenticated'));
          return;
        }
        return this.fail(1002, 'unexpected frame kind');
      }
      await this.onRequest(frame.id, frame.payload);
    }

    private async onAuth(payload: Uint8Array): Promise<void> {
      this.authing = true;
      const t0 = now();
      try {
        if (payload.length > MAX_TOKEN_BYTES) throw new ChatdReplyError('UNAUTHORIZED', 'missing or invalid account token');
        this.acct = await authenticateAt(this.addr, new TextDecoder().decode(payload));
        if (this.authTimer) clearTimeout(this.authTimer);
        emit({ event: 'request', via: 'ws', addr: this.addr, acct: this.acct.tag, route: 'ws:auth', status: 200, ms: round(now() - t0) });
        this.send(FrameKind.Ready, 0, new Uint8Array());
      } catch (e) {
        const err = asReplyError(e);
        emit({ event: 'request', via: 'ws', addr: this.addr, route: 'ws:auth', status: err.status, code: err.code, ms: round(now() - t0) });
        this.sendError(0, err);
        this.queued.length = 0;
        return this.fail(1008, 'authentication failed');
      } finally {
        this.authing = false;
      }
      for (const data of this.queued.splice(0)) void this.onFrame(data);
    }

    private async onRequest(id: number, payload: Uint8Array): Promise<void> {
      const t0 = now();
      const acct = this.acct!;
      const entry: Omit<ChatdLogEntry, 't'> = {
        event: 'request', via: 'ws', addr: this.addr, acct: acct.tag, route: CHATD_WS_PATH, id, inBytes: payload.length, outBytes: 0,
      };
      let claimed = false;
      try {
        if (id === 0 || this.pending.has(id)) throw new ChatdReplyError('BAD_REQUEST', 'request id is 0 or already in flight');
        if (closing) throw new ChatdReplyError('UNAVAILABLE', 'ChatD is shutting down');
        if (this.pending.size >= limits.maxInFlightPerSocket) {
          throw new ChatdReplyError('TOO_MANY_IN_FLIGHT', `at most ${limits.maxInFlightPerSocket} requests in flight per socket`, { retryAfterMs: 100 });
        }
        this.pending.add(id);
        claimed = true;
        this.requests++;
        admit(byAddress, this.addr, 'address');
        await stillActive(acct);
        admit(byAccount, acct.user, 'account');
        if (payload.length === 0) throw new ChatdReplyError('BAD_REQUEST', 'empty body');
        if (payload.length > limits.maxBodyBytes) {
          throw new ChatdReplyError('BODY_TOO_LARGE', `body exceeds ${limits.maxBodyBytes} bytes`);
        }
        const reply = await track(forwarder.forward(acct.user, payload));
        entry.status = 200;
        entry.outBytes = reply.length;
        this.send(FrameKind.Reply, id, reply);
      } catch (e) {
        const err = asReplyError(e);
        entry.status = err.status;
        entry.code = err.code;
        if (err.body.vaultCode) entry.vaultCode = err.body.vaultCode;
        entry.outBytes = this.sendError(id, err);
        if (err.code === 'UNAUTHORIZED') this.fail(1008, 'account revoked');
      } finally {
        if (claimed) this.pending.delete(id);
        entry.ms = round(now() - t0);
        emit(entry);
      }
    }

    private send(kind: FrameKind, id: number, payload: Uint8Array): void {
      if (this.ws.readyState === this.ws.OPEN) this.ws.send(encodeFrame({ kind, id, payload }), { binary: true });
    }

    private sendError(id: number, err: ChatdReplyError): number {
      const payload = encodeErrorBody(err.body);
      this.send(FrameKind.Error, id, payload);
      return payload.length;
    }

    private fail(code: number, reason: string): void {
      if (this.authTimer) clearTimeout(this.authTimer);
      if (this.ws.readyState === this.ws.OPEN || this.ws.readyState === this.ws.CONNECTING) this.ws.close(code, reason);
    }
  }

  // ---- server ---------------------------------------------------------------------------------------

  // Node checks these timeouts only every connectionsCheckingInterval (30 s by default, which cut
  // slow requests anywhere from 15 to 45 s): check often enough that the cut comes at the stated time.
  const headersMs = Math.min(limits.requestTimeoutMs, 10_000);
  const server = http.createServer({
    requestTimeout: limits.requestTimeoutMs, headersTimeout: headersMs,
    connectionsCheckingInterval: Math.max(20, Math.min(250, Math.floor(headersMs / 20))),
  });
  server.on('request', (req, res) => {
    handleHttp(req, res).catch(() => res.destroy());
  });
  server.on('upgrade', (req, socket: Duplex, head: Buffer) => {
    handleUpgrade(req, socket, head).catch(() => socket.destroy());
  });
  server.on('clientError', (e, socket) => {
    if (!socket.writable) return void socket.destroy();
    // A slow client (headers or body not in within the timeouts) gets 408; anything else Node's
    // parser refused, 400. Both as ChatD's JSON error body, then the connection is closed.
    const timedOut = (e as NodeJS.ErrnoException).code === 'ERR_HTTP_REQUEST_TIMEOUT';
    const err = timedOut
      ? chatdError('REQUEST_TIMEOUT', `the request did not arrive in time (headers within ${headersMs} ms, the whole request within ${limits.requestTimeoutMs} ms)`)
      : chatdError('BAD_REQUEST', 'malformed HTTP request');
    const payload = Buffer.from(encodeErrorBody(err));
    emit({ event: 'request', via: 'http', addr: clientAddress((socket as { remoteAddress?: string }).remoteAddress), route: 'other', status: err.status, code: err.code, inBytes: 0, outBytes: payload.length });
    socket.end(Buffer.concat([Buffer.from(`HTTP/1.1 ${err.status} ${timedOut ? 'Request Timeout' : 'Bad Request'}\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: ${payload.length}\r\n\r\n`), payload]));
  });

  const host = opts.host ?? '127.0.0.1';
  await new Promise<void>((resolve, reject) => {
    const onError = (e: unknown) => reject(listenError(e, host, opts.port ?? 0));
    server.once('error', onError);
    server.listen(opts.port ?? 0, host, () => {
      server.off('error', onError);
      resolve();
    });
  });
  const addr = server.address();
  if (addr === null || typeof addr === 'string') throw new ChatdConfigError('ChatD is not listening on TCP');
  const urlHost = addr.family === 'IPv6' ? `[${addr.address}]` : addr.address;
  const url = `http://${urlHost}:${addr.port}`;
  emit({ event: 'listening', url });

  let closed: Promise<void> | undefined;
  async function close(): Promise<void> {
    closing = true;
    const serverClosed = new Promise<void>((r) => server.close(() => r()));
    server.closeIdleConnections();
    // Requests already at the vault get their answer if it comes within the grace period.
    let grace: NodeJS.Timeout | undefined;
    await Promise.race([
      Promise.allSettled([...inflight]),
      new Promise((r) => (grace = setTimeout(r, limits.shutdownGraceMs))),
    ]);
    clearTimeout(grace);
    forwarder.close();
    for (const s of sockets) await s.shutdown();
    // Peers that do not finish the closing handshake promptly are cut off.
    await new Promise((r) => setTimeout(r, sockets.size > 0 ? 200 : 0));
    for (const s of sockets) s.terminate();
    wss.close();
    server.closeAllConnections();
    await serverClosed;
    emit({ event: 'closed' });
  }

  return {
    url,
    wsUrl: `ws://${urlHost}:${addr.port}${CHATD_WS_PATH}`,
    close: () => (closed ??= close()),
  };
}

function resolveLimits(p: Partial<ChatdLimits> | undefined): ChatdLimits {
  const l: ChatdLimits = { ...DEFAULT_LIMITS, ...(p ?? {}) };
  const positive = (n: number) => Number.isFinite(n) && n > 0;
  for (const k of ['vaultTimeoutMs', 'maxInFlightPerSocket', 'wsAuthTimeoutMs', 'requestTimeoutMs', 'shutdownGraceMs'] as const) {
    if (!positive(l[k])) throw new ChatdConfigError(`limit ${k} must be a positive number`);
  }
  if (!Number.isInteger(l.maxBodyBytes) || l.maxBodyBytes < 1 || l.maxBodyBytes > MAX_RELAY_BODY) {
    throw new ChatdConfigError(`maxBodyBytes must be 1..${MAX_RELAY_BODY} (the relay's own limit)`);
  }
  for (const k of ['perAccount', 'perAddress', 'perUnauthenticated'] as const) {
    if (!(l[k].burst >= 1) || !(l[k].perSecond > 0)) throw new ChatdConfigError(`limit ${k} needs burst >= 1 and perSecond > 0`);
  }
  return l;
}

function bearer(header: string | undefined): string | undefined {
  const m = /^Bearer +([^\s]+) *$/i.exec(header ?? '');
  return m?.[1];
}

function clientAddress(a: string | undefined): string {
  if (!a) return 'unknown';
  return a.startsWith('::ffff:') ? a.slice(7) : a;
}

// Logs name routes ChatD serves; whatever else a client sent is not echoed into the log.
function knownRoute(path: string): string {
  return path === CHATD_HTTP_PATH || path === CHATD_WS_PATH || path === CHATD_HEALTH_PATH || path === CHATD_METRICS_PATH ? path : 'other';
}

function asReplyError(e: unknown): ChatdReplyError {
  if (e instanceof ChatdReplyError) return e;
  return new ChatdReplyError('INTERNAL', 'internal error');
}

function round(ms: number): number {
  return Math.round(ms * 100) / 100;
}

function toBytes(data: RawData): Uint8Array {
  if (Array.isArray(data)) return new Uint8Array(Buffer.concat(data));
  if (data instanceof ArrayBuffer) return new Uint8Array(data);
  return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
}

function readBody(req: http.IncomingMessage, max: number): Promise<Uint8Array> {
  const declared = req.headers['content-length'];
  if (declared !== undefined && Number(declared) > max) {
    return Promise.reject(new ChatdReplyError('BODY_TOO_LARGE', `body exceeds ${max} bytes`));
  }
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let n = 0;
    const onData = (c: Buffer) => {
      n += c.length;
      if (n > max) {
        cleanup();
        req.pause();
        reject(new ChatdReplyError('BODY_TOO_LARGE', `body exceeds ${max} bytes`));
        return;
      }
      chunks.push(c);
    };
    const onEnd = () => {
      cleanup();
      if (n === 0) return reject(new ChatdReplyError('BAD_REQUEST', 'empty body'));
      const b = Buffer.concat(chunks);
      resolve(new Uint8Array(b.buffer, b.byteOffset, b.byteLength));
    };
    const onAbort = () => {
      cleanup();
      reject(new ChatdReplyError('BAD_REQUEST', 'request body incomplete'));
    };
    const cleanup = () => {
      req.off('data', onData);
      req.off('end', onEnd);
      req.off('aborted', onAbort);
      req.off('error', onAbort);
    };
    req.on('data', onData);
    req.on('end', onEnd);
    req.on('aborted', onAbort);
    req.on('error', onAbort);
  });
}

function rejectUpgrade(socket: Duplex, err: ChatdReplyError): void {
  const payload = Buffer.from(encodeErrorBody(err.body));
  const lines = [
    `HTTP/1.1 ${err.status} ${http.STATUS_CODES[err.status] ?? 'Error'}`,
    'content-type: application/json',
    `content-length: ${payload.length}`,
    'connection: close',
  ];
  if (err.body.retryAfterMs !== undefined) lines.push(`retry-after: ${Math.max(1, Math.ceil(err.body.retryAfterMs / 1000))}`);
  if (err.code === 'UNAUTHORIZED') lines.push('www-authenticate: Bearer realm="bkv"');
  if (socket.writable) socket.end(Buffer.concat([Buffer.from(lines.join('\r\n') + '\r\n\r\n'), payload]));
  else socket.destroy();
}
