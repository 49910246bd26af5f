// The replica's HTTP face on loopback: POST RELAY_PATH carries one relayed device request
// (protocol/relay.ts) to the firmware and its reply back. An unhealthy replica answers 503 with the
// typed code (TAMPERED, ROLLBACK_DETECTED, ...). Logs name the route, status and code only: never a
// body, never a user's message.
import type { IncomingMessage, Server, ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { BkvError } from '../../protocol/errors.ts';
import { RELAY_PATH } from '../../protocol/relay.ts';
import type { Replica } from './replica.ts';
import { createFront, listenFront, refuseUnauthorizedRelay, relayRefusal, serveRelay, type FrontLimits } from './http.ts';

export const HEALTH_PATH = '/v1/health';

export interface VaultServer {
  url: string;
  server: Server;
  close(): Promise<void>;
}

export async function startVaultServer(replica: Replica, opts: { host?: string; port?: number; log?: (line: string) => void; relayKey?: string; limits?: Partial<FrontLimits> } = {}): Promise<VaultServer> {
  const say = opts.log ?? (() => undefined);
  const server = createFront((req, res) => {
    void serve(replica, req, res, opts.relayKey).then(
      (r) => say(`${req.method} ${req.url} ${r.status}${r.code ? ` ${r.code}` : ''}`),
      () => say(`${req.method} ${req.url} failed`),
    );
  }, relayRefusal, opts.limits);
  await listenFront(server, opts.port ?? 0, opts.host ?? '127.0.0.1');
  const addr = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${addr.port}`,
    server,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}

async function serve(replica: Replica, req: IncomingMessage, res: ServerResponse, relayKey: string | undefined): Promise<{ status: number; code?: string }> {
  if (req.url === HEALTH_PATH && req.method === 'GET') {
    const h = replica.health;
    return send(res, h.healthy ? 200 : 503, 'application/json', JSON.stringify({ healthy: h.healthy, code: h.code ?? null, index: replica.firmware.appliedIndex }));
  }
  if (refuseUnauthorizedRelay(req, res, relayKey)) return { status: 401, code: 'UNAUTHORIZED' };
  if (req.url !== RELAY_PATH || req.method !== 'POST') {
    return send(res, 404, 'application/json', JSON.stringify({ code: 'NOT_FOUND' }), 'NOT_FOUND');
  }
  return serveRelay(req, res, 'vault replica', async (user, body) => {
    try {
      return { ok: true, body: await replica.handle(user, body) };
    } catch (e) {
      return { ok: false, code: e instanceof BkvError ? e.code : 'UNAVAILABLE' };
    }
  });
}

function send(res: ServerResponse, status: number, type: string, body: Uint8Array | string, code?: string): { status: number; code?: string } {
  res.writeHead(status, { 'content-type': type, 'content-length': Buffer.byteLength(body) });
  res.end(body);
  return { status, code };
}
