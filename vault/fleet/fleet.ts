// The thread host of the fleet runner (runner.ts): one worker thread per replica, each with its own
// token, LMDB and replica core, joined by MessagePorts through the WAN model and the secure channel.
// Network faults go through the shared link table; crash = terminate the worker, restart = a new
// worker with fresh ports to every peer.
// Types (frozen for the CLI, walkthrough and bench:fleet): fleet-types.ts. Design: docs/fleet.md.
import { MessageChannel, Worker, type MessagePort } from 'node:worker_threads';
import { finalizeModule, openToken } from '../../hsm-adapter/pkcs11-token.ts';
import { KeyLabels } from '../../hsm-adapter/token.ts';
import { activateSoftHsmConf, loadState, type FleetState } from '../../softhsm/state.ts';
import { replicaDbDir } from '../agent/replica.ts';
import type { Fleet, StartFleetOptions } from './fleet-types.ts';
import type { FromWorker, ReplicaWorkerData, ToWorker } from './replica-worker.ts';
import { createPortFleet, type PortEndpointInit } from './transport-port.ts';
import { createHash } from 'node:crypto';
import { noneWanConfig, resolveWanConfig, type WanConfig, type WanNode } from './wan.ts';
import { FleetError, emitter, fleetNames, startRunner, type ReplicaHosts } from './runner.ts';

export type { Fleet, FleetEvent, FleetFault, ReplicaRole, ReplicaStatus, StartFleetOptions } from './fleet-types.ts';
export { REGION_HEADER, FLEET_STATUS_PATH, FLEET_FAULT_PATH } from './fleet-types.ts';

export { FleetError } from './runner.ts';

interface Running {
  worker: Worker;
  ready: boolean;
  exited: Promise<void>;
}

const WORKER_URL = new URL('../../bin/ts-worker.js', import.meta.url);
const ENTRY_URL = new URL('./replica-worker.ts', import.meta.url).href;

/** The fleet with one worker thread per replica, joined by MessagePorts through the WAN model. */
export async function startFleet(opts: StartFleetOptions): Promise<Fleet> {
  const state = loadState(opts.stateDir);
  activateSoftHsmConf(state);
  const names = fleetNames(state, opts);
  // Standby replicas (spares, removed members) are in the mesh from the start, so that a membership
  // change can start one without re-keying the others: their links and pinned keys already exist.
  const standby = state.standby.map((r) => r.name).filter((n) => !names.includes(n));
  const mesh = [...names, ...standby];
  const founders = state.manifest.founders ?? [...names];
  const wan = wanConfig(opts.wan);
  const nodes: WanNode[] = mesh.map((n) => ({ name: n, region: n, kind: 'replica' }));
  const electionMs = opts.electionTimeoutMs ?? 1000;
  const tickMs = Math.max(5, Math.round(electionMs / 10));
  const pins = identityPins(state, mesh);
  const fleetId = `bkv-fleet-${state.manifest.kcv.fleetAke}`;
  const portFleet = createPortFleet({ config: wan, nodes, seed: opts.seed ?? 1 });
  const emit = emitter(opts);
  const running = new Map<string, Running>();
  // A standby replica's first start takes the restart path (fresh ports to every running peer); the
  // ends made for it at start are closed, so nothing queues for a replica that may never run.
  const started = new Set<string>(standby);
  for (const n of standby) for (const p of portFleet.transferList(n)) p.close();
  let nextId = 1;
  const calls = new Map<number, { name: string; resolve(m: FromWorker): void }>();

  const spawn = (name: string, endpoint: PortEndpointInit, transfer: MessagePort[]): Promise<Record<string, string>> => {
    const info = [...state.replicas, ...state.standby].find((r) => r.name === name)!;
    // Every replica gets the founding configuration: a replica on a blank disk writes it as its
    // entry 1, which must be the founders' entry 1 whatever the membership is now. Before any
    // change was recorded, the founders are the replicas run (a fresh fleet bootstraps with them).
    const data: ReplicaWorkerData & { __entry: string } = {
      __entry: ENTRY_URL, name, voters: founders, token: state.tokenOptions(info.tokenLabel),
      dbDir: replicaDbDir(state.stateDir, name), fleetId, pins, endpoint, policy: opts.policy, tickMs, faults: opts.faultEndpoint === true,
    };
    const worker = new Worker(WORKER_URL, { workerData: data, transferList: transfer });
    let exitedResolve!: () => void;
    const r: Running = { worker, ready: false, exited: new Promise((res) => { exitedResolve = res; }) };
    running.set(name, r);
    return new Promise<Record<string, string>>((resolve, reject) => {
      worker.on('message', (m: FromWorker) => {
        switch (m.t) {
          case 'ready':
            r.ready = true;
            emit({ kind: 'started', replica: name });
            resolve(m.akeKeys);
            return;
          case 'failed':
            reject(new FleetError(m.code, `replica ${name} failed to start: ${m.message}`));
            return;
          case 'event':
            if (m.e.kind === 'log') emit({ kind: 'log', replica: name, line: m.e.line });
            else if (m.e.kind === 'leader') emit({ kind: 'leader', replica: name, term: m.e.term });
            else if (m.e.kind === 'role') emit({ kind: 'role', replica: name, role: m.e.role, term: m.e.term, leader: m.e.leader });
            else if (m.e.kind === 'health') emit({ kind: 'health', replica: name, healthy: m.e.healthy, code: m.e.code, reason: m.e.reason });
            else emit({ kind: 'rejoined', replica: name, index: m.e.index });
            return;
          case 'reply': case 'status': case 'backup': case 'control': case 'member': {
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

  const hosts: ReplicaHosts = {
    async start(name) {
      if (!started.has(name)) {
        started.add(name);
        return spawn(name, portFleet.endpoints[name]!, portFleet.transferList(name));
      }
      // A restart: fresh links to every peer (the dead worker's ports died with it).
      const ports: Record<string, MessagePort> = {};
      for (const peer of mesh) {
        if (peer === name) continue;
        const { port1, port2 } = new MessageChannel();
        ports[peer] = port1;
        const pr = running.get(peer);
        if (pr) pr.worker.postMessage({ t: 'port', peer: name, port: port2 } satisfies ToWorker, [port2]);
        else port2.close();
      }
      try {
        return await spawn(name, { self: name, ports, wan: portFleet.endpoints[name]!.wan }, Object.values(ports));
      } catch (e) {
        await running.get(name)?.worker.terminate();
        throw e;
      }
    },
    isRunning: (name) => !!running.get(name)?.ready,
    async request(name, user, body) {
      const m = await call(name, { t: 'request', id: nextId++, user, body }, 120_000);
      if (m?.t === 'reply') return m.ok ? { ok: true, body: m.body } : { ok: false, code: m.code };
      return { ok: false, code: 'TIMEOUT' };
    },
    async status(name) {
      const m = await call(name, { t: 'status', id: nextId++ }, 2000);
      return m?.t === 'status' ? m.status : undefined;
    },
    async kill(name) {
      const r = running.get(name);
      if (!r) return;
      await crashWorker(r.worker, r.exited);
    },
    async copyRunningDisk(name, dir) {
      const m = await call(name, { t: 'backup', id: nextId++, path: dir }, 10_000);
      if (m?.t !== 'backup' || !m.ok) throw new FleetError('BACKUP_FAILED', `could not copy ${name}'s disk`);
    },
    async close() {
      await Promise.all([...running.values()].map(async (r) => {
        r.worker.postMessage({ t: 'close' } satisfies ToWorker);
        const t = setTimeout(() => void r.worker.terminate(), 5000);
        await r.exited;
        clearTimeout(t);
      }));
      finalizeModule();
    },
    async member(name, change) {
      const m = await call(name, { t: 'member', id: nextId++, change }, 5000);
      if (m?.t !== 'member') return { ok: false, code: 'REPLICA_NOT_RESPONDING' };
      return m.ok ? { ok: true, index: m.index ?? 0 } : { ok: false, code: m.code ?? 'REFUSED' };
    },
    async stop(name) {
      const r = running.get(name);
      if (!r) return;
      r.worker.postMessage({ t: 'close' } satisfies ToWorker);
      const t = setTimeout(() => void r.worker.terminate(), 5000);
      await r.exited;
      clearTimeout(t);
    },
    standby,
    links: portFleet.links,
    async control(name, c) {
      const m = await call(name, { t: 'control', id: nextId++, c }, 5000);
      if (m?.t !== 'control') throw new FleetError('REPLICA_NOT_RESPONDING', `replica ${name} did not take the ${c.t} fault`);
      if (!m.ok) throw new FleetError('FAULT_UNSUPPORTED', `replica ${name} runs without the fault-injecting token (start the fleet with faults on)`);
    },
  };
  return startRunner(state, names, hosts, opts, emit);
}

/**
 * Kills a replica's worker at once, no flush. Not worker.terminate(): that stops the thread wherever
 * it is, and a thread stopped inside a PKCS#11 call (pkcs11js 2.1.7: C_CreateObject, the anchor and
 * vote writes) returns an unchecked napi_value and segfaults the whole process, every other replica
 * with it (test/hsm-adapter/worker-crash.test.ts). The worker exits on the message instead, between
 * two event-loop tasks; terminate() only for a worker that does not answer (wedged in a loop).
 */
export async function crashWorker(worker: Worker, exited: Promise<void>, graceMs = 3000): Promise<void> {
  worker.postMessage({ t: 'crash' } satisfies ToWorker);
  let timer: NodeJS.Timeout | undefined;
  const wedged = await Promise.race([exited.then(() => false), new Promise<boolean>((r) => { timer = setTimeout(() => r(true), graceMs); })]);
  clearTimeout(timer);
  if (wedged) await worker.terminate();
  await exited;
}

function wanConfig(w: StartFleetOptions['wan']): WanConfig {
  if (w === undefined || w === 'none') return noneWanConfig();
  if (typeof w === 'string') return resolveWanConfig(w);
  return w;
}

/** Each replica's identity public key, read from its token and checked against fleet.json. */
function identityPins(state: FleetState, names: readonly string[]): Record<string, string> {
  const pins: Record<string, string> = {};
  for (const r of [...state.manifest.replicas, ...(state.manifest.standby ?? [])]) {
    if (!names.includes(r.name)) continue;
    if (r.identityFingerprint === '') {
      throw new FleetError('NO_IDENTITY', `replica ${r.name} has no identity key (provisioned as a single vault on a token without EC key generation); every fleet replica signs with one`);
    }
    const t = openToken(state.tokenOptions(r.tokenLabel));
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
