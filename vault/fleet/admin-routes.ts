// The fleet's operator listener, shared by the thread fleet and the process fleet: status (GET) and,
// when enabled, fault injection (POST JSON FleetFault). It listens apart from the relay front (which
// carries device traffic only), and every request must carry the operator key (protocol/hop-secret.ts):
// other local users reach neither the status nor the faults.
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { bearerMatches } from '../../protocol/hop-secret.ts';
import { BkvError } from '../../protocol/errors.ts';
import { createFront, jsonRefusal, listenFront, readBody, sendBody } from '../agent/http.ts';
import { ACTOR_HEADER, FLEET_FAULT_PATH, FLEET_MEMBER_PATH, FLEET_STATUS_PATH, METRICS_PATH, type FleetFault, type FleetStatusReport, type MemberRequest, type MemberResult } from './fleet-types.ts';
import { parseMemberRequest } from './membership.ts';

export interface AdminRoutes {
  status(): Promise<FleetStatusReport>;
  /** GET /metrics: the Prometheus text (vault/agent/metrics.ts). */
  metrics?: () => Promise<{ type: string; text: string }>;
  /** Present only when the fault endpoint is enabled; resolves to extra fields of the {ok:true} answer. `by`: who asked. */
  fault?: (f: FleetFault, by: string) => Promise<unknown>;
  /** POST FLEET_MEMBER_PATH: one membership change; `progress` gets each step (streamed to the caller). */
  member?: (req: MemberRequest, by: string, progress: (line: string) => void) => Promise<MemberResult>;
  /** A fault request refused before it reached `fault` (faults off, not JSON): logged all the same. */
  refused?: (f: { op: 'unknown' }, by: string, code: string) => void;
}

/** Who asked, as the client names itself: printable ASCII, at most 120 characters, for the audit line. */
export function actorOf(req: IncomingMessage): string {
  const h = req.headers[ACTOR_HEADER];
  const v = (typeof h === 'string' ? h : '').replace(/[^\x20-\x7e]/g, '').trim().slice(0, 120);
  return `operator key${v ? ` (${v})` : ''}`;
}

/**
 * The operator listener on 127.0.0.1; `key` is the operator key every request must present, except
 * that GET /metrics also takes `metricsKey` (a scraper needs no power over the fleet).
 */
export async function startOperatorListener(routes: AdminRoutes, key: string, port = 0, metricsKey?: string): Promise<{ url: string; close(): Promise<void> }> {
  const server = createFront((req, res) => {
    void (async () => {
      const scrape = req.url === METRICS_PATH && req.method === 'GET' && metricsKey !== undefined && bearerMatches(req.headers.authorization, metricsKey);
      if (!scrape && !bearerMatches(req.headers.authorization, key)) {
        return sendBody(res, 401, 'application/json', JSON.stringify({ code: 'UNAUTHORIZED', message: 'operator routes need the operator key (<state>/operator.key)' }));
      }
      if (!(await serveAdminRoute(req, res, routes))) sendBody(res, 404, 'application/json', JSON.stringify({ code: 'NOT_FOUND' }));
    })().catch(() => sendBody(res, 500, 'application/json', JSON.stringify({ code: 'INTERNAL' })));
  }, jsonRefusal, { maxConnections: 64 });
  await listenFront(server, port);
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    close: () => new Promise<void>((resolve) => {
      server.close(() => resolve());
      server.closeAllConnections();
    }),
  };
}

/** Answers the request if it is an operator route and returns true; false leaves it to the caller. */
async function serveAdminRoute(req: IncomingMessage, res: ServerResponse, routes: AdminRoutes): Promise<boolean> {
  if (req.url === METRICS_PATH && req.method === 'GET' && routes.metrics) {
    const m = await routes.metrics();
    sendBody(res, 200, m.type, m.text);
    return true;
  }
  if (req.url === FLEET_STATUS_PATH && req.method === 'GET') {
    sendBody(res, 200, 'application/json', JSON.stringify(await routes.status()));
    return true;
  }
  if (req.url === FLEET_MEMBER_PATH && req.method === 'POST' && routes.member) {
    await serveMember(req, res, routes.member);
    return true;
  }
  if (req.url === FLEET_FAULT_PATH && req.method === 'POST' && !routes.fault) {
    routes.refused?.({ op: 'unknown' }, actorOf(req), 'FAULTS_OFF');
    sendBody(res, 403, 'application/json', JSON.stringify({ code: 'FAULTS_OFF', message: 'fault injection is off: start the fleet with `bkv fleet up --faults`' }));
    return true;
  }
  if (req.url !== FLEET_FAULT_PATH || req.method !== 'POST' || !routes.fault) return false;
  let f: FleetFault;
  try {
    f = JSON.parse(Buffer.from(await readBody(req, 64 * 1024)).toString('utf8')) as FleetFault;
    if (typeof f !== 'object' || f === null || typeof f.op !== 'string') throw new Error('no op');
  } catch {
    routes.refused?.({ op: 'unknown' }, actorOf(req), 'BAD_FAULT');
    sendBody(res, 400, 'application/json', JSON.stringify({ code: 'BAD_FAULT', message: 'body must be JSON {op, ...}' }));
    return true;
  }
  try {
    sendBody(res, 200, 'application/json', JSON.stringify({ ok: true, ...(await routes.fault(f, actorOf(req)) as object) }));
  } catch (e) {
    sendBody(res, 400, 'application/json', JSON.stringify({ code: e instanceof BkvError ? e.code : 'FAULT_FAILED', message: e instanceof BkvError ? e.message : 'fault failed' }));
  }
  return true;
}

/**
 * A membership change takes seconds to minutes (a learner catching up), so the answer streams: a
 * refusal before anything changed is a plain 4xx {code, message}; once the change runs, 200 with one
 * JSON line per step ({"progress"}) and a last line, {"ok": true, ...} or {"error": {code, message}}.
 */
async function serveMember(req: IncomingMessage, res: ServerResponse, member: NonNullable<AdminRoutes['member']>): Promise<void> {
  let r: MemberRequest;
  try {
    let body: unknown;
    try {
      body = JSON.parse(Buffer.from(await readBody(req, 4 * 1024)).toString('utf8'));
    } catch {
      body = null;
    }
    r = parseMemberRequest(body);
  } catch (e) {
    sendBody(res, 400, 'application/json', JSON.stringify({ code: e instanceof BkvError ? e.code : 'BAD_MEMBER', message: e instanceof BkvError ? e.message : 'bad request' }));
    return;
  }
  let streaming = false;
  const line = (o: unknown) => {
    if (!streaming) {
      streaming = true;
      res.writeHead(200, { 'content-type': 'application/x-ndjson', 'cache-control': 'no-store' });
    }
    res.write(JSON.stringify(o) + '\n');
  };
  try {
    const done = await member(r, actorOf(req), (progress) => line({ progress }));
    line({ ok: true, ...done });
    res.end();
  } catch (e) {
    const err = { code: e instanceof BkvError ? e.code : 'MEMBER_FAILED', message: e instanceof BkvError ? e.message : 'membership change failed' };
    if (!streaming) {
      sendBody(res, e instanceof BkvError && e.code === 'CHANGE_IN_FLIGHT' ? 409 : 400, 'application/json', JSON.stringify(err));
      return;
    }
    line({ error: err });
    res.end();
  }
}
