// The two HTTP chores every vault-side front (single vault, fleet, replica process) shares: read a
// bounded request body, and answer once with an exact content-length.
import type { IncomingMessage, ServerResponse } from 'node:http';
import { InputError } from '../../protocol/errors.ts';
import { bearerMatches } from '../../protocol/hop-secret.ts';
import { BkvError } from '../../protocol/errors.ts';
import { MAX_RELAY_BODY, decodeRelayRequest, encodeRelayReply } from '../../protocol/relay.ts';

/** What a vault-side front answers a relayed request with: the reply body, or a code. */
export type RelayOutcome = { ok: true; body: Uint8Array } | { ok: false; code: string; status?: number };

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
