// The fleet runner (main thread): one worker thread per replica, each with its own token, LMDB and
// Raft node, joined by MessagePorts through the WAN model and the secure channel; an HTTP front on
// loopback that takes relayed device requests and hands each to a replica (header `x-bkv-region`
// or round-robin), which forwards it to the leader. Faults: partitions through the shared link
// table, crash = terminate the worker, restart = a new worker (optionally on an old disk copy).
// Types (frozen for the CLI, walkthrough and bench:fleet): fleet-types.ts. Design: docs/fleet.md.
import { cpSync, rmSync } from 'node:fs';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { MessageChannel, Worker, type MessagePort } from 'node:worker_threads';
import { finalizeModule, openToken } from '../../hsm-adapter/pkcs11-token.ts';
import { KeyLabels } from '../../hsm-adapter/token.ts';
import { BkvError, InputError } from '../../protocol/errors.ts';
import { MAX_RELAY_BODY, RELAY_PATH, decodeRelayRequest, encodeRelayReply } from '../../protocol/relay.ts';
import { activateSoftHsmConf, loadState, type FleetState } from '../../softhsm/state.ts';
import { replicaDbDir } from '../agent/replica.ts';
import {
  REGION_HEADER,
  type Fleet, type FleetEvent, type FleetFault, type ReplicaStatus, type StartFleetOptions,
} from './fleet-types.ts';
import type { LocalStatus } from './replica.ts';
import type { FromWorker, ReplicaWorkerData, ToWorker } from './replica-worker.ts';
import { createPortFleet, type PortEndpointInit } from './transport-port.ts';
import { createHash } from 'node:crypto';
import { noneWanConfig, resolveWanConfig, type LinkTable, type WanConfig, type WanNode } from './wan.ts';
import { readBody, refuseUnauthorizedRelay, sendBody } from '../agent/http.ts';
import { startOperatorListener } from './admin-routes.ts';
import { EntryRouter } from './router.ts';

export type { Fleet, FleetEvent, FleetFault, ReplicaRole, ReplicaStatus, StartFleetOptions } from './fleet-types.ts';
export { REGION_HEADER, FLEET_STATUS_PATH, FLEET_FAULT_PATH } from './fleet-types.ts';

export class FleetError extends BkvError {}

interface Running {
  worker: Worker;
  ready: boolean;
  exited: Promise<void>;
}

const WORKER_URL = new URL('../../bin/ts-worker.js', import.meta.url);
const ENTRY_URL = new URL('./replica-worker.ts', import.meta.url).href;

export async function startFleet(opts: StartFleetOptions): Promise<Fleet> {
  const state = loadState(opts.stateDir);
  activateSoftHsmConf(state);
  const names = opts.replicas ?? state.replicas.map((r) => r.name);
  if (names.length === 0) throw new FleetError('FLEET_EMPTY', 'no replicas to run');
  for (const n of names) {
    if (!state.replicas.some((r) => r.name === n)) throw new FleetError('UNKNOWN_REPLICA', `no replica named ${JSON.stringify(n)} in ${state.stateDir}`);
  }
  if (new Set(names).size !== names.length) throw new FleetError('DUPLICATE_REPLICA', 'a replica is named twice');
  const wan = wanConfig(opts.wan);
  const nodes: WanNode[] = names.map((n) => ({ name: n, region: wan.none ? n : n, kind: 'replica' }));
  const seed = opts.seed ?? 1;
  const electionMs = opts.electionTimeoutMs ?? 1000;
  const tickMs = Math.max(5, Math.round(electionMs / 10));
  const pins = identityPins(state, names);
  const fleetId = `bkv-fleet-${state.manifest.kcv.fleetAke}`;
  const portFleet = createPortFleet({ config: wan, nodes, seed });
  const links: LinkTable = portFleet.links;
  const emit = (e: FleetEvent) => { try { opts.onEvent?.(e); } catch { /* an observer must not break the fleet */ } };

  const running = new Map<string, Running>();
  let akeKeys: Record<string, string> = {};
  let nextId = 1;
  const calls = new Map<number, { name: string; resolve(m: FromWorker): void }>();
  const diskCopies = new Map<string, string>();
  let operator: { url: string; close(): Promise<void> } | undefined;
  let closed = false;

  const spawn = (name: string, endpoint: PortEndpointInit, transfer: MessagePort[]): Promise<void> => {
    const info = state.replicas.find((r) => r.name === name)!;
    const data: ReplicaWorkerData & { __entry: string } = {
      __entry: ENTRY_URL, name, voters: names, modulePath: state.modulePath, tokenLabel: info.tokenLabel,
      pin: state.pinFor(info.tokenLabel), sealScheme: state.sealSchemeFor(info.tokenLabel),
      dbDir: replicaDbDir(state.stateDir, name), fleetId, pins, endpoint, policy: opts.policy, tickMs,
    };
    const worker = new Worker(WORKER_URL, { workerData: data, transferList: transfer });
    let exitedResolve!: () => void;
    const r: Running = { worker, ready: false, exited: new Promise((res) => { exitedResolve = res; }) };
    running.set(name, r);
    return new Promise<void>((resolve, reject) => {
      worker.on('message', (m: FromWorker) => {
        switch (m.t) {
          case 'ready':
            r.ready = true;
            akeKeys = m.akeKeys;
            emit({ kind: 'started', replica: name });
            resolve();
            return;
          case 'failed':
            reject(new FleetError(m.code, `replica ${name} failed to start: ${m.message}`));
            return;
          case 'event':
            if (m.e.kind === 'log') emit({ kind: 'log', replica: name, line: m.e.line });
            else if (m.e.kind === 'leader') emit({ kind: 'leader', replica: name, term: m.e.term });
            else if (m.e.kind === 'health') emit({ kind: 'health', replica: name, healthy: m.e.healthy, code: m.e.code, reason: m.e.reason });
            else emit({ kind: 'rejoined', replica: name, index: m.e.index });
            return;
          case 'reply': case 'status': case 'backup': {
            const c = calls.get(m.id);
            if (c) { calls.delete(m.id); c.resolve(m); }
            return;
          }
          case 'closed':
            return;
        }
      });
      worker.on('error', (e) => { emit({ kind: 'log', replica: name, line: `worker error: ${e.message}` }); reject(new FleetError('REPLICA_FAILED', `replica ${name}: ${e.message}`)); });
      worker.on('exit', () => {
        exitedResolve();
        if (running.get(name) === r) running.delete(name);
        for (const [id, c] of calls) if (c.name === name) { calls.delete(id); c.resolve({ t: 'reply', id, ok: false, code: 'REPLICA_DOWN' }); }
        reject(new FleetError('REPLICA_EXITED', `replica ${name} exited`));
      });
    });
  };

  const call = (name: string, msg: ToWorker & { id: number }, timeoutMs: number): Promise<FromWorker | undefined> => {
    const r = running.get(name);
    if (!r) return Promise.resolve(undefined);
    return new Promise((resolve) => {
      const timer = setTimeout(() => { calls.delete(msg.id); resolve(undefined); }, timeoutMs);
      calls.set(msg.id, { name, resolve: (m) => { clearTimeout(timer); resolve(m); } });
      r.worker.postMessage(msg);
    });
  };

  try {
    await Promise.all(names.map((n) => spawn(n, portFleet.endpoints[n]!, portFleet.transferList(n))));
  } catch (e) {
    await Promise.all([...running.values()].map((r) => r.worker.terminate()));
    finalizeModule();
    throw e;
  }

  const localStatus = async (): Promise<Map<string, LocalStatus>> => {
    const out = new Map<string, LocalStatus>();
    await Promise.all(names.filter((n) => running.get(n)?.ready).map(async (n) => {
      const m = await call(n, { t: 'status', id: nextId++ }, 2000);
      if (m?.t === 'status') out.set(n, m.status);
    }));
    return out;
  };
  const router = new EntryRouter(names, (n) => !!running.get(n)?.ready, async () => [...(await localStatus()).values()]);

  const fleet: Fleet = {
    url: '',
    replicas: [...names],
    akePublicKeys: () => ({ ...akeKeys }),
    async status(): Promise<ReplicaStatus[]> {
      const st = await localStatus();
      const leaders = [...st.values()].filter((s) => s.role === 'leader').sort((a, b) => b.term - a.term);
      const leaderCommit = leaders[0]?.commitIndex;
      return names.map((n) => {
        const s = st.get(n);
        if (!s) return { name: n, region: n, role: 'down', term: 0, commitIndex: 0, appliedIndex: 0, lag: -1, healthy: false, reason: running.has(n) ? 'NOT_RESPONDING' : 'CRASHED', leader: null };
        return {
          name: n, region: n, role: s.role, term: s.term, commitIndex: s.commitIndex, appliedIndex: s.appliedIndex,
          lag: leaderCommit === undefined ? -1 : Math.max(0, leaderCommit - s.appliedIndex), healthy: s.healthy, reason: s.reason, leader: s.leader,
          lastIndex: s.lastIndex, digest: s.digest, stats: s.stats,
        };
      });
    },
    async leader(): Promise<string | undefined> {
      const st = await localStatus();
      return [...st.values()].filter((s) => s.role === 'leader').sort((a, b) => b.term - a.term)[0]?.name;
    },
    partition(groups) {
      for (const g of groups) for (const n of g) if (!names.includes(n)) throw new FleetError('UNKNOWN_REPLICA', `no replica ${n}`);
      links.partition(groups);
    },
    heal() { links.heal(); },
    isolate(name) {
      if (!names.includes(name)) throw new FleetError('UNKNOWN_REPLICA', `no replica ${name}`);
      links.isolate(name);
    },
    blockLink(from, to) {
      for (const n of [from, to]) if (!names.includes(n)) throw new FleetError('UNKNOWN_REPLICA', `no replica ${n}`);
      links.block(from, to);
    },
    async crash(name) {
      if (!names.includes(name)) throw new FleetError('UNKNOWN_REPLICA', `no replica ${name}`);
      const r = running.get(name);
      if (!r) return;
      await r.worker.terminate();
      await r.exited;
      emit({ kind: 'crashed', replica: name });
    },
    async restart(name, o = {}) {
      if (!names.includes(name)) throw new FleetError('UNKNOWN_REPLICA', `no replica ${name}`);
      if (running.has(name)) throw new FleetError('REPLICA_RUNNING', `replica ${name} is running; crash it first`);
      if (o.disk === 'rollback') {
        const copy = diskCopies.get(name);
        if (!copy) throw new FleetError('NO_DISK_COPY', `no snapshotDisk() copy of ${name} to roll back to`);
        const dir = replicaDbDir(state.stateDir, name);
        rmSync(dir, { recursive: true, force: true });
        cpSync(copy, dir, { recursive: true });
      }
      // Fresh links to every peer: the dead worker's ports died with it.
      const ports: Record<string, MessagePort> = {};
      for (const peer of names) {
        if (peer === name) continue;
        const { port1, port2 } = new MessageChannel();
        ports[peer] = port1;
        const pr = running.get(peer);
        if (pr) pr.worker.postMessage({ t: 'port', peer: name, port: port2 } satisfies ToWorker, [port2]);
        else port2.close();
      }
      const base = portFleet.endpoints[name]!;
      const endpoint: PortEndpointInit = { self: name, ports, wan: base.wan };
      try {
        await spawn(name, endpoint, Object.values(ports));
      } catch (e) {
        await running.get(name)?.worker.terminate();
        throw e;
      }
    },
    async snapshotDisk(name) {
      if (!names.includes(name)) throw new FleetError('UNKNOWN_REPLICA', `no replica ${name}`);
      const dir = join(state.stateDir, 'replicas', name, `disk-copy-${Date.now()}`);
      if (running.has(name)) {
        const m = await call(name, { t: 'backup', id: nextId++, path: dir }, 10_000);
        if (m?.t !== 'backup' || !m.ok) throw new FleetError('BACKUP_FAILED', `could not copy ${name}'s disk`);
      } else {
        cpSync(replicaDbDir(state.stateDir, name), dir, { recursive: true });
      }
      // One copy per replica: a newer one replaces (and removes) the older, and close() removes the rest.
      const old = diskCopies.get(name);
      if (old && old !== dir) rmSync(old, { recursive: true, force: true });
      diskCopies.set(name, dir);
      return dir;
    },
    async close() {
      if (closed) return;
      closed = true;
      await new Promise<void>((res) => { server.close(() => res()); server.closeAllConnections(); });
      await operator?.close();
      router.close();
      await Promise.all([...running.entries()].map(async ([, r]) => {
        r.worker.postMessage({ t: 'close' } satisfies ToWorker);
        const t = setTimeout(() => void r.worker.terminate(), 5000);
        await r.exited;
        clearTimeout(t);
      }));
      for (const c of diskCopies.values()) rmSync(c, { recursive: true, force: true });
      finalizeModule();
    },
  };

  const handleFault = async (f: FleetFault): Promise<unknown> => {
    const str = (v: unknown, what: string): string => {
      if (typeof v !== 'string') throw new InputError(`${what} must be a replica name`, 'BAD_FAULT');
      return v;
    };
    if (f.op === 'partition' && !(Array.isArray(f.groups) && f.groups.every((g) => Array.isArray(g) && g.every((n) => typeof n === 'string')))) {
      throw new InputError('groups must be an array of arrays of replica names', 'BAD_FAULT');
    }
    if (f.op === 'isolate' || f.op === 'crash' || f.op === 'restart' || f.op === 'snapshotDisk') str(f.replica, 'replica');
    if (f.op === 'block') { str(f.from, 'from'); str(f.to, 'to'); }
    if (f.op === 'restart' && f.disk !== undefined && f.disk !== 'keep' && f.disk !== 'rollback') throw new InputError('disk must be keep or rollback', 'BAD_FAULT');
    switch (f.op) {
      case 'partition': fleet.partition(f.groups); return {};
      case 'heal': fleet.heal(); return {};
      case 'isolate': fleet.isolate(f.replica); return {};
      case 'block': fleet.blockLink(f.from, f.to); return {};
      case 'crash': await fleet.crash(f.replica); return {};
      case 'restart': await fleet.restart(f.replica, { disk: f.disk }); return {};
      case 'snapshotDisk': return { path: await fleet.snapshotDisk(f.replica) };
      default: throw new InputError('unknown fault op', 'BAD_FAULT');
    }
  };

  const server = createServer((req, res) => { void serve(req, res).catch(() => sendBody(res, 500, 'application/json', JSON.stringify({ code: 'INTERNAL' }))); });
  const serve = async (req: IncomingMessage, res: ServerResponse): Promise<void> => {
    if (refuseUnauthorizedRelay(req, res, opts.relayKey)) return;
    if (req.url !== RELAY_PATH || req.method !== 'POST') return sendBody(res, 404, 'application/json', JSON.stringify({ code: 'NOT_FOUND' }));
    let relayed;
    try {
      relayed = decodeRelayRequest(await readBody(req, MAX_RELAY_BODY + 256));
    } catch (e) {
      const code = e instanceof BkvError ? e.code : 'BAD_RELAY_MESSAGE';
      return sendBody(res, 400, 'application/octet-stream', encodeRelayReply({ ok: false, code, message: 'malformed relay request' }));
    }
    const hint = req.headers[REGION_HEADER];
    const name = router.pick(relayed.body, typeof hint === 'string' ? hint : undefined);
    if (!name) return sendBody(res, 503, 'application/octet-stream', encodeRelayReply({ ok: false, code: 'NO_REPLICA', message: 'no replica is running' }));
    const m = await call(name, { t: 'request', id: nextId++, user: relayed.user, body: relayed.body }, 120_000);
    if (m?.t === 'reply' && m.ok) return sendBody(res, 200, 'application/octet-stream', encodeRelayReply({ ok: true, body: m.body }));
    const code = m?.t === 'reply' && !m.ok ? m.code : 'TIMEOUT';
    return sendBody(res, 503, 'application/octet-stream', encodeRelayReply({ ok: false, code, message: 'vault fleet did not serve the request' }));
  };
  server.keepAliveTimeout = 5_000;
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(opts.port ?? 0, '127.0.0.1', () => resolve());
  });
  fleet.url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  if (opts.operatorKey !== undefined) {
    const op = await startOperatorListener({ status: () => fleet.status(), fault: opts.faultEndpoint ? handleFault : undefined }, opts.operatorKey);
    fleet.operatorUrl = op.url;
    operator = op;
  }
  return fleet;
}

function wanConfig(w: StartFleetOptions['wan']): WanConfig {
  if (w === undefined || w === 'none') return noneWanConfig();
  if (typeof w === 'string') return resolveWanConfig(w);
  return w;
}

/** Each replica's identity public key, read from its token and checked against fleet.json. */
function identityPins(state: FleetState, names: readonly string[]): Record<string, string> {
  const pins: Record<string, string> = {};
  for (const r of state.manifest.replicas) {
    if (!names.includes(r.name)) continue;
    const t = openToken({ modulePath: state.modulePath, token: r.tokenLabel, pin: state.pinFor(r.tokenLabel), sealScheme: state.sealSchemeFor(r.tokenLabel) });
    try {
      const pub = t.publicKey(KeyLabels.replicaIdentity);
      const fp = createHash('sha256').update(pub).digest().subarray(0, 16).toString('hex');
      if (r.identityFingerprint && fp !== r.identityFingerprint) {
        throw new FleetError('IDENTITY_MISMATCH', `token ${r.tokenLabel} holds another identity than fleet.json pins for ${r.name}`);
      }
      pins[r.name] = Buffer.from(pub).toString('hex');
    } finally {
      t.close();
    }
  }
  return pins;
}
