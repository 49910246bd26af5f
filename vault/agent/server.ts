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
import { VaultMetrics } from './metrics.ts';
import { SoloLog } from './log.ts';
import { bearerMatches } from '../../protocol/hop-secret.ts';
import { emptyReplicaMetrics, type ReplicaMetrics } from '../../protocol/metrics-wire.ts';

/** Prometheus metrics (with the metrics key), as on the fleet's operator listener and ChatD. */
export const METRICS_PATH = '/metrics';

export const HEALTH_PATH = '/v1/health';

export interface VaultServer {
  url: string;
  server: Server;
  close(): Promise<void>;
}

export async function startVaultServer(replica: Replica, opts: {
  host?: string; port?: number; log?: (line: string) => void; relayKey?: string; limits?: Partial<FrontLimits>;
  /** GET /metrics with this key (the metrics key, <state>/metrics.key); unset: no /metrics. */
  metricsKey?: string;
  /** The token's call metrics, when the token is metered (vault/agent/metered-token.ts). */
  tokenReport?: () => ReplicaMetrics['token'];
} = {}): Promise<VaultServer> {
  const say = opts.log ?? (() => undefined);
  const metrics = new VaultMetrics();
  const name = replica.firmware.replicaId;
  const scrape = async () => {
    // One replica on a solo log: its commit is the sealed, flushed and anchored write (no quorum).
    const commit = replica.log instanceof SoloLog ? structuredClone(replica.log.commitBuckets) : emptyReplicaMetrics().commit;
    metrics.absorb(name, { ...emptyReplicaMetrics(), commit, effects: { ...replica.firmware.effects }, token: opts.tokenReport?.() ?? {} });
    return { type: metrics.contentType, text: await metrics.text() };
  };
  const server = createFront((req, res) => {
    void serve(replica, req, res, opts.relayKey, metrics, opts.metricsKey === undefined ? undefined : { key: opts.metricsKey, scrape }).then(
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

async function serve(
  replica: Replica, req: IncomingMessage, res: ServerResponse, relayKey: string | undefined, metrics: VaultMetrics,
  metricsRoute: { key: string; scrape(): Promise<{ type: string; text: string }> } | undefined,
): Promise<{ status: number; code?: string }> {
  if (req.url === HEALTH_PATH && req.method === 'GET') {
    const h = replica.health;
    return send(res, h.healthy ? 200 : 503, 'application/json', JSON.stringify({ healthy: h.healthy, code: h.code ?? null, index: replica.firmware.appliedIndex }));
  }
  if (req.url === METRICS_PATH && req.method === 'GET' && metricsRoute) {
    // The metrics key, not the relay key: ChatD relays but does not read the vault's metrics.
    if (!bearerMatches(req.headers.authorization, metricsRoute.key)) return send(res, 401, 'application/json', JSON.stringify({ code: 'UNAUTHORIZED', message: 'metrics need the metrics key (<state>/metrics.key)' }), 'UNAUTHORIZED');
    const m = await metricsRoute.scrape();
    return send(res, 200, m.type, m.text);
  }
  if (refuseUnauthorizedRelay(req, res, relayKey)) return { status: 401, code: 'UNAUTHORIZED' };
  if (req.url !== RELAY_PATH || req.method !== 'POST') {
    return send(res, 404, 'application/json', JSON.stringify({ code: 'NOT_FOUND' }), 'NOT_FOUND');
  }
  return serveRelay(req, res, 'vault replica', async (user, body) => {
    const t0 = performance.now();
    let o: { ok: true; body: Uint8Array } | { ok: false; code: string };
    try {
      o = { ok: true, body: await replica.handle(user, body) };
    } catch (e) {
      o = { ok: false, code: e instanceof BkvError ? e.code : 'UNAVAILABLE' };
    }
    metrics.request(body, o.ok, o.ok ? undefined : o.code, (performance.now() - t0) / 1000);
    return o;
  });
}

function send(res: ServerResponse, status: number, type: string, body: Uint8Array | string, code?: string): { status: number; code?: string } {
  res.writeHead(status, { 'content-type': type, 'content-length': Buffer.byteLength(body) });
  res.end(body);
  return { status, code };
}
