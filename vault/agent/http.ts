// The HTTP chores every vault-side front (single vault, fleet, replica process, operator listener)
// shares: a server with a request timeout and a connection cap, listening with a typed error, a
// bounded request body, and one answer with an exact content-length.
import { createServer, type IncomingMessage, type RequestListener, type Server, type ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import { InputError, listenError } from '../../protocol/errors.ts';
import { bearerMatches } from '../../protocol/hop-secret.ts';
import { BkvError } from '../../protocol/errors.ts';
import { MAX_RELAY_BODY, decodeRelayRequest, encodeRelayReply } from '../../protocol/relay.ts';

/** What a vault-side front answers a relayed request with: the reply body, or a code. */
export type RelayOutcome = { ok: true; body: Uint8Array } | { ok: false; code: string; status?: number };

export interface FrontLimits {
  /** The whole request (headers and body) must arrive within this, else 408 and the connection closes. */
  requestTimeoutMs: number;
  headersTimeoutMs: number;
  /** Connections open at once; more are closed as they arrive (ChatD keeps at most 64 to a vault). */
  maxConnections: number;
}

/** As ChatD's own front (docs/chatd.md): 15 s for a request, 10 s for its headers. */
export const FRONT_LIMITS: FrontLimits = { requestTimeoutMs: 15_000, headersTimeoutMs: 10_000, maxConnections: 256 };

/**
 * An HTTP server for a vault-side front: a slow client is cut with 408 at the stated time (Node
 * checks its timeouts every `connectionsCheckingInterval`, 30 s by default: checked here every
 * twentieth of the headers timeout, at most every 250 ms), a malformed request gets 400, and past
 * `maxConnections` new connections are closed at once. `refusal` writes the body of those answers
 * in the front's own format (a relay reply, or JSON).
 */
export function createFront(handler: RequestListener, refusal: (status: number, code: string, message: string) => { type: string; body: Uint8Array }, limits: Partial<FrontLimits> = {}): Server {
  const l = { ...FRONT_LIMITS, ...limits };
  const headersMs = Math.min(l.headersTimeoutMs, l.requestTimeoutMs);
  const server = createServer({
    requestTimeout: l.requestTimeoutMs, headersTimeout: headersMs,
    connectionsCheckingInterval: Math.max(20, Math.min(250, Math.floor(headersMs / 20))),
  }, handler);
  server.maxConnections = l.maxConnections;
  server.keepAliveTimeout = 5_000;
  server.on('clientError', (e: NodeJS.ErrnoException, socket: Socket) => {
    if (!socket.writable) return void socket.destroy();
    const timedOut = e.code === 'ERR_HTTP_REQUEST_TIMEOUT';
    const r = timedOut
      ? refusal(408, 'REQUEST_TIMEOUT', `the request did not arrive in time (headers within ${headersMs} ms, the whole request within ${l.requestTimeoutMs} ms)`)
      : refusal(400, 'BAD_REQUEST', 'malformed HTTP request');
    socket.end(Buffer.concat([
      Buffer.from(`HTTP/1.1 ${timedOut ? '408 Request Timeout' : '400 Bad Request'}\r\nconnection: close\r\ncontent-type: ${r.type}\r\ncontent-length: ${r.body.length}\r\n\r\n`),
      Buffer.from(r.body),
    ]));
  });
  return server;
}

/** The refusal body of a relay front: a relay reply (protocol/relay.ts), as every other answer there. */
export const relayRefusal = (_status: number, code: string, message: string) => ({ type: 'application/octet-stream', body: encodeRelayReply({ ok: false, code, message }) });
/** The refusal body of a JSON front (the operator listener). */
export const jsonRefusal = (_status: number, code: string, message: string) => ({ type: 'application/json', body: new TextEncoder().encode(JSON.stringify({ code, message })) });

/** Listens on host:port; a port in use (or not ours) rejects with the typed ListenError naming it. */
export function listenFront(server: Server, port: number, host = '127.0.0.1'): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    const onError = (e: unknown) => reject(listenError(e, host, port));
    server.once('error', onError);
    server.listen(port, host, () => { server.off('error', onError); resolve(); });
  });
}

/** Rejects with InputError BODY_TOO_LARGE past `max` bytes (and drops the connection). */
export function readBody(req: IncomingMessage, max: number): Promise<Uint8Array> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    req.on('data', (c: Buffer) => {
      size += c.length;
      if (size > max) {
        reject(new InputError('request body too large', 'BODY_TOO_LARGE'));
        req.destroy();
        return;
      }
      chunks.push(c);
    });
    req.on('end', () => resolve(new Uint8Array(Buffer.concat(chunks))));
    req.on('error', reject);
  });
}

/** Answers once; a second answer (after a timeout already replied) is dropped. */
export function sendBody(res: ServerResponse, status: number, type: string, body: Uint8Array | string): void {
  if (res.headersSent) return;
  res.writeHead(status, { 'content-type': type, 'content-length': Buffer.byteLength(body) });
  res.end(body);
}

/**
 * The ChatD -> vault hop's check: without the relay key (<state>/relay.key) a request is answered 401
 * and never reaches a replica. `key` undefined: a front built bare by a test, not by a main.
 */
export function refuseUnauthorizedRelay(req: IncomingMessage, res: ServerResponse, key: string | undefined): boolean {
  if (key === undefined || bearerMatches(req.headers.authorization, key)) return false;
  sendBody(res, 401, 'application/octet-stream', encodeRelayReply({ ok: false, code: 'UNAUTHORIZED', message: 'relay requests need the relay key' }));
  return true;
}

/**
 * One relayed device request (protocol/relay.ts): the bounded body read (413), the envelope decoded
 * (400), `handle` asked, its outcome sent (200, or 503 with the code). The one relay front of the
 * single vault, the fleet and a replica process. Returns the status and code for a log line.
 */
export async function serveRelay(req: IncomingMessage, res: ServerResponse, what: string, handle: (user: string, body: Uint8Array) => Promise<RelayOutcome>): Promise<{ status: number; code?: string }> {
  let raw: Uint8Array;
  try {
    raw = await readBody(req, MAX_RELAY_BODY + 256);
  } catch {
    sendBody(res, 413, 'application/octet-stream', encodeRelayReply({ ok: false, code: 'BODY_TOO_LARGE', message: 'request body too large' }));
    return { status: 413, code: 'BODY_TOO_LARGE' };
  }
  let relayed;
  try {
    relayed = decodeRelayRequest(raw);
  } catch (e) {
    const err = e instanceof BkvError ? e : new BkvError('BAD_RELAY_MESSAGE', 'malformed relay request');
    sendBody(res, 400, 'application/octet-stream', encodeRelayReply({ ok: false, code: err.code, message: err.message }));
    return { status: 400, code: err.code };
  }
  const o = await handle(relayed.user, relayed.body);
  if (o.ok) {
    sendBody(res, 200, 'application/octet-stream', encodeRelayReply({ ok: true, body: o.body }));
    return { status: 200 };
  }
  const status = o.status ?? 503;
  sendBody(res, status, 'application/octet-stream', encodeRelayReply({ ok: false, code: o.code, message: `${what} did not serve the request` }));
  return { status, code: o.code };
}
