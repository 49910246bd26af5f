// The fleet front's two operator routes, shared by the thread fleet and the process fleet: status
// (GET) and, when enabled, fault injection (POST JSON FleetFault). Relay routing stays with each front.
import type { IncomingMessage, ServerResponse } from 'node:http';
import { BkvError } from '../../protocol/errors.ts';
import { readBody, sendBody } from '../agent/http.ts';
import { FLEET_FAULT_PATH, FLEET_STATUS_PATH, type FleetFault, type ReplicaStatus } from './fleet-types.ts';

export interface AdminRoutes {
  status(): Promise<ReplicaStatus[]>;
  /** Present only when the fault endpoint is enabled; resolves to extra fields of the {ok:true} answer. */
  fault?: (f: FleetFault) => Promise<unknown>;
}

/** Answers the request if it is an operator route and returns true; false leaves it to the caller. */
export async function serveAdminRoute(req: IncomingMessage, res: ServerResponse, routes: AdminRoutes): Promise<boolean> {
  if (req.url === FLEET_STATUS_PATH && req.method === 'GET') {
    sendBody(res, 200, 'application/json', JSON.stringify(await routes.status()));
    return true;
  }
  if (req.url !== FLEET_FAULT_PATH || req.method !== 'POST' || !routes.fault) return false;
  let f: FleetFault;
  try {
    f = JSON.parse(Buffer.from(await readBody(req, 64 * 1024)).toString('utf8')) as FleetFault;
    if (typeof f !== 'object' || f === null || typeof f.op !== 'string') throw new Error('no op');
  } catch {
    sendBody(res, 400, 'application/json', JSON.stringify({ code: 'BAD_FAULT', message: 'body must be JSON {op, ...}' }));
    return true;
  }
  try {
    sendBody(res, 200, 'application/json', JSON.stringify({ ok: true, ...(await routes.fault(f) as object) }));
  } catch (e) {
    sendBody(res, 400, 'application/json', JSON.stringify({ code: e instanceof BkvError ? e.code : 'FAULT_FAILED', message: e instanceof BkvError ? e.message : 'fault failed' }));
  }
  return true;
}
