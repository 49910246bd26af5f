// The two HTTP chores every vault-side front (single vault, fleet, replica process) shares: read a
// bounded request body, and answer once with an exact content-length.
import type { IncomingMessage, ServerResponse } from 'node:http';
import { InputError } from '../../protocol/errors.ts';
import { bearerMatches } from '../../protocol/hop-secret.ts';
import { encodeRelayReply } from '../../protocol/relay.ts';

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
