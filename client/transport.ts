// The device's way to the vault: through ChatD, which authenticates it by its account token and relays
// its bytes. One request per HTTP POST, or a WebSocket session that pipelines requests (replies are
// matched by id). Whatever goes wrong comes back as a typed error the caller can branch on.
import http from 'node:http';
import { WebSocket } from 'ws';
import { BkvError, InputError } from '../protocol/errors.ts';
import {
  CHATD_HTTP_PATH,
  CHATD_WS_PATH,
  FrameError,
  FrameKind,
  MAX_FRAME_ID,
  decodeErrorBody,
  decodeFrame,
  encodeFrame,
  type ChatdErrorBody,
  type ChatdErrorCode,
} from '../protocol/device-frames.ts';
import { MAX_RELAY_BODY, REGION_HEADER, isRegionHint } from '../protocol/relay.ts';

/** Every failure of a request through ChatD. `status` is ChatD's HTTP status when it sent one. */
export class ChatdTransportError extends BkvError {
  readonly status: number | undefined;
  constructor(code: string, message: string, status?: number, options?: { cause?: unknown }) {
    super(code, message, options);
    this.status = status;
  }
}

/** The token is missing, unknown or revoked (401). */
export class ChatdAuthError extends ChatdTransportError {
  constructor(message: string) {
    super('UNAUTHORIZED', message, 401);
  }
}

/** Too many requests for this account or address (429); retry after `retryAfterMs`. */
export class ChatdRateLimitError extends ChatdTransportError {
  readonly retryAfterMs: number;
  constructor(message: string, retryAfterMs: number, code: 'RATE_LIMITED' | 'TOO_MANY_IN_FLIGHT' = 'RATE_LIMITED') {
    super(code, message, 429);
    this.retryAfterMs = retryAfterMs;
  }
}

/** ChatD answered but the vault could not be reached or cannot serve now (502/503). */
export class VaultUnavailableError extends ChatdTransportError {
  readonly vaultCode: string | undefined;
  constructor(message: string, status: number, vaultCode?: string) {
    super('VAULT_UNAVAILABLE', message, status);
    this.vaultCode = vaultCode;
  }
}

/** No answer in time: the vault did not answer ChatD (504), or ChatD did not answer us. */
export class ChatdTimeoutError extends ChatdTransportError {
  constructor(message: string, status?: number) {
    super('TIMEOUT', message, status);
  }
}

/** ChatD or the vault refused this request (bad or oversized body, the vault's typed error...). */
export class ChatdRejectedError extends ChatdTransportError {
  readonly vaultCode: string | undefined;
  constructor(code: ChatdErrorCode, message: string, status: number, vaultCode?: string) {
    super(code, message, status);
    this.vaultCode = vaultCode;
  }
}

/** ChatD itself cannot be reached (refused, reset, DNS...). */
export class ChatdUnreachableError extends ChatdTransportError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('CHATD_UNREACHABLE', message, undefined, options);
  }
}

/** ChatD sent something that is not the protocol. */
export class ChatdProtocolError extends ChatdTransportError {
  constructor(message: string, status?: number) {
    super('BAD_CHATD_REPLY', message, status);
  }
}

/** The WebSocket session ended before this request was answered. */
export class SessionClosedError extends ChatdTransportError {
  readonly closeCode: number | undefined;
  constructor(message: string, closeCode?: number) {
    super('SESSION_CLOSED', message);
    this.closeCode = closeCode;
  }
}

/** Maps ChatD's wire error to the typed error a device branches on. */
export function errorFromBody(b: ChatdErrorBody): ChatdTransportError {
  switch (b.code) {
    case 'UNAUTHORIZED':
      return new ChatdAuthError(b.message);
    case 'RATE_LIMITED':
    case 'TOO_MANY_IN_FLIGHT':
      return new ChatdRateLimitError(b.message, b.retryAfterMs ?? 1000, b.code);
    case 'VAULT_UNAVAILABLE':
    case 'UNAVAILABLE':
      return new VaultUnavailableError(b.message, b.status, b.vaultCode);
    case 'VAULT_TIMEOUT':
      return new ChatdTimeoutError(b.message, b.status);
    default:
      return new ChatdRejectedError(b.code, b.message, b.status, b.vaultCode);
  }
}

export interface ChatdClientOptions {
  /** ChatD's base URL, e.g. http://127.0.0.1:7200 */
  url: string;
  /** The account token `bkv account create` printed. */
  token: string;
  /** Per request, ours on top of ChatD's own vault timeout. Default 20 s. */
  timeoutMs?: number;
  /** The device's data center (a replica name): a routing hint ChatD passes to the fleet. */
  region?: string;
}

export class ChatdClient {
  readonly url: URL;
  private readonly token: string;
  private readonly timeoutMs: number;
  private readonly region: string | undefined;
  // Idle pooled sockets go after 2 s, inside ChatD's keep-alive timeout (see chatd/forward.ts).
  private readonly agent = new http.Agent({ keepAlive: true, timeout: 2000 });

  constructor(opts: ChatdClientOptions) {
    try {
      this.url = new URL(opts.url);
    } catch {
      throw new InputError(`ChatD URL is not a URL: ${JSON.stringify(opts.url)}`, 'BAD_CHATD_URL');
    }
    if (this.url.protocol !== 'http:') throw new InputError('ChatD URL must be http://', 'BAD_CHATD_URL');
    if (typeof opts.token !== 'string' || !/^[\x21-\x7e]{1,256}$/.test(opts.token)) {
      throw new InputError('account token is missing or malformed', 'BAD_TOKEN');
    }
    this.token = opts.token;
    this.timeoutMs = opts.timeoutMs ?? 20_000;
    if (opts.region !== undefined && !isRegionHint(opts.region)) throw new InputError('region must be a replica name (letters, digits, . _ -; at most 64)', 'BAD_REGION');
    this.region = opts.region;
  }

  /** One vault message over HTTP; resolves with the vault's reply bytes. */
  request(body: Uint8Array): Promise<Uint8Array> {
    checkBody(body);
    return new Promise((resolve, reject) => {
      let settled = false;
      let failure: ChatdTransportError | undefined;
      const finish = (e: ChatdTransportError | null, v?: Uint8Array) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        if (e) reject(e);
        else resolve(v!);
      };
      const req = http.request(new URL(CHATD_HTTP_PATH, this.url), {
        method: 'POST',
        agent: this.agent,
        headers: {
          authorization: `Bearer ${this.token}`,
          'content-type': 'application/octet-stream',
          'content-length': body.length,
          ...(this.region === undefined ? {} : { [REGION_HEADER]: this.region }),
        },
      });
      const timer = setTimeout(() => {
        failure ??= new ChatdTimeoutError(`ChatD did not answer within ${this.timeoutMs} ms`);
        req.destroy(failure);
      }, this.timeoutMs);
      req.on('error', (e) => finish(failure ?? new ChatdUnreachableError(`cannot reach ChatD at ${this.url.origin}`, { cause: e })));
      req.on('response', (res) => {
        const chunks: Buffer[] = [];
        let n = 0;
        res.on('data', (c: Buffer) => {
          n += c.length;
          if (n > MAX_RELAY_BODY + 4096) {
            failure ??= new ChatdProtocolError('ChatD reply is too large', res.statusCode);
            req.destroy(failure);
            return;
          }
          chunks.push(c);
        });
        res.on('error', (e) => finish(failure ?? new ChatdUnreachableError('ChatD dropped the connection', { cause: e })));
        res.on('end', () => {
          const status = res.statusCode ?? 0;
          const b = Buffer.concat(chunks);
          const bytes = new Uint8Array(b.buffer, b.byteOffset, b.byteLength);
          if (status === 200) return finish(null, bytes);
          let eb: ChatdErrorBody;
          try {
            eb = decodeErrorBody(bytes);
          } catch {
            return finish(new ChatdProtocolError(`ChatD answered HTTP ${status} without an error body`, status));
          }
          if (eb.retryAfterMs === undefined && res.headers['retry-after']) {
            eb.retryAfterMs = Number(res.headers['retry-after']) * 1000;
          }
          finish(errorFromBody(eb));
        });
      });
      req.end(body);
    });
  }

  /** A WebSocket session: many requests in flight at once, each answered by id. */
  openSession(opts: { authInFirstFrame?: boolean } = {}): Promise<ChatdSession> {
    const wsUrl = new URL(CHATD_WS_PATH, this.url);
    wsUrl.protocol = 'ws:';
    return ChatdSession.open(wsUrl.href, this.token, this.timeoutMs, opts.authInFirstFrame ?? false);
  }

  /** Drops pooled HTTP connections. */
  close(): void {
    this.agent.destroy();
  }
}

interface Waiter {
  resolve(v: Uint8Array): void;
  reject(e: ChatdTransportError): void;
  timer: NodeJS.Timeout;
}

export class ChatdSession {
  private nextId = 1;
  private readonly waiting = new Map<number, Waiter>();
  private closedBy: SessionClosedError | undefined;

  private constructor(
    private readonly ws: WebSocket,
    private readonly timeoutMs: number,
  ) {}

  static open(wsUrl: string, token: string, timeoutMs: number, authInFirstFrame: boolean): Promise<ChatdSession> {
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(wsUrl, {
        headers: authInFirstFrame ? {} : { authorization: `Bearer ${token}` },
        maxPayload: MAX_RELAY_BODY + 64 * 1024,
        handshakeTimeout: timeoutMs,
      });
      let ready = false;
      const fail = (e: ChatdTransportError) => {
        if (ready) return;
        ready = true; // settled
        clearTimeout(timer);
        ws.terminate();
        reject(e);
      };
      const timer = setTimeout(() => fail(new ChatdTimeoutError('ChatD did not open the session in time')), timeoutMs);
      ws.on('unexpected-response', (_req, res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => {
          try {
            fail(errorFromBody(decodeErrorBody(new Uint8Array(Buffer.concat(chunks)))));
          } catch {
            fail(new ChatdProtocolError(`ChatD refused the WebSocket with HTTP ${res.statusCode}`, res.statusCode));
          }
        });
        res.on('error', () => fail(new ChatdProtocolError('ChatD refused the WebSocket', res.statusCode)));
      });
      ws.on('error', (e) => fail(new ChatdUnreachableError(`cannot reach ChatD at ${wsUrl}`, { cause: e })));
      ws.on('close', (code) => fail(new SessionClosedError(`ChatD closed the session (${code})`, code)));
      ws.on('open', () => {
        if (authInFirstFrame) {
          ws.send(encodeFrame({ kind: FrameKind.Auth, id: 0, payload: new TextEncoder().encode(token) }), { binary: true });
        }
      });
      // Until READY, the only frames that matter are READY and the session's ERROR.
      const onFirst = (data: Buffer | ArrayBuffer | Buffer[], isBinary: boolean) => {
        let f;
        try {
          if (!isBinary) throw new FrameError('text frame');
          f = decodeFrame(toBytes(data));
        } catch {
          return fail(new ChatdProtocolError('ChatD sent a malformed frame'));
        }
        if (f.kind === FrameKind.Ready) {
          if (ready) return;
          ready = true;
          clearTimeout(timer);
          ws.off('message', onFirst);
          ws.removeAllListeners('close');
          ws.removeAllListeners('error');
          const s = new ChatdSession(ws, timeoutMs);
          s.attach();
          resolve(s);
          return;
        }
        if (f.kind === FrameKind.Error) {
          try {
            return fail(errorFromBody(decodeErrorBody(f.payload)));
          } catch {
            return fail(new ChatdProtocolError('ChatD sent a malformed error frame'));
          }
        }
        fail(new ChatdProtocolError(`unexpected frame kind ${f.kind} before READY`));
      };
      ws.on('message', onFirst);
    });
  }

  /** How many requests are waiting for their reply. */
  get inFlight(): number {
    return this.waiting.size;
  }

  request(body: Uint8Array): Promise<Uint8Array> {
    checkBody(body);
    if (this.closedBy) return Promise.reject(this.closedBy);
    const id = this.takeId();
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiting.delete(id);
        reject(new ChatdTimeoutError(`no reply to request ${id} within ${this.timeoutMs} ms`));
      }, this.timeoutMs);
      this.waiting.set(id, { resolve, reject, timer });
      this.ws.send(encodeFrame({ kind: FrameKind.Request, id, payload: body }), { binary: true }, (e) => {
        if (e) this.settle(id, new SessionClosedError('could not send on the session'));
      });
    });
  }

  /** Closes the session; requests still waiting fail with SessionClosedError. */
  close(): Promise<void> {
    if (this.ws.readyState === WebSocket.CLOSED) return Promise.resolve();
    return new Promise((resolve) => {
      this.ws.once('close', () => resolve());
      this.ws.close(1000, 'done');
    });
  }

  private attach(): void {
    this.ws.on('message', (data, isBinary) => {
      let f;
      try {
        if (!isBinary) throw new FrameError('text frame');
        f = decodeFrame(toBytes(data));
      } catch {
        this.closedBy = new SessionClosedError('ChatD sent a malformed frame');
        this.ws.close(1002, 'malformed frame');
        return;
      }
      if (f.kind === FrameKind.Reply) return this.settle(f.id, null, new Uint8Array(f.payload));
      if (f.kind === FrameKind.Error) {
        let err: ChatdTransportError;
        try {
          err = errorFromBody(decodeErrorBody(f.payload));
        } catch {
          err = new ChatdProtocolError('ChatD sent a malformed error frame');
        }
        if (f.id === 0) {
          this.closedBy = new SessionClosedError(`ChatD ended the session: ${err.message}`);
          return;
        }
        return this.settle(f.id, err);
      }
      // Anything else from ChatD mid-session is ignored; it cannot be matched to a request.
    });
    this.ws.on('error', () => {});
    this.ws.on('close', (code) => {
      const e = this.closedBy ?? new SessionClosedError(`ChatD closed the session (${code})`, code);
      this.closedBy = e;
      for (const id of [...this.waiting.keys()]) this.settle(id, e);
    });
  }

  private settle(id: number, e: ChatdTransportError | null, v?: Uint8Array): void {
    const w = this.waiting.get(id);
    if (!w) return; // timed out already, or an id we never used
    this.waiting.delete(id);
    clearTimeout(w.timer);
    if (e) w.reject(e);
    else w.resolve(v!);
  }

  private takeId(): number {
    for (;;) {
      const id = this.nextId;
      this.nextId = id >= MAX_FRAME_ID ? 1 : id + 1;
      if (!this.waiting.has(id)) return id;
    }
  }
}

function checkBody(body: Uint8Array): void {
  if (!(body instanceof Uint8Array)) throw new InputError('a vault message must be bytes', 'BAD_INPUT');
}

function toBytes(data: Buffer | ArrayBuffer | Buffer[]): Uint8Array {
  if (Array.isArray(data)) return new Uint8Array(Buffer.concat(data));
  if (data instanceof ArrayBuffer) return new Uint8Array(data);
  return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
}
