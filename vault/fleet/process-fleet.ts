// The fleet as OS processes on one host: one `replica-process.ts` per replica (its own token, LMDB,
// firmware and RaftLog), joined by TcpTransport on loopback, behind the same HTTP front and `Fleet`
// interface as the threaded runner (fleet.ts), so `bkv fleet up --transport tcp`, ChatD and
// `bkv fleet status` work unchanged. The supervisor holds no token and no key: it picks ports, starts
// the processes, routes each relayed request to a replica's own relay endpoint (header
// `x-bkv-region` or round-robin), gathers statuses, and crashes (SIGKILL) or restarts
// processes. Network faults (partition, isolate, block) belong to the real network here (network
// namespaces, firewall rules) and are refused with FAULT_UNSUPPORTED.
import { spawn, type ChildProcess } from 'node:child_process';
import { cpSync, mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { createServer as createHttpServer, type IncomingMessage, type ServerResponse } from 'node:http';
import { createServer as createNetServer, type AddressInfo, type Server as NetServer } from 'node:net';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { BkvError, InputError } from '../../protocol/errors.ts';
import { MAX_RELAY_BODY, RELAY_PATH, decodeRelayRequest, encodeRelayReply } from '../../protocol/relay.ts';
import { PINNED_KEYS } from '../../protocol/wire.ts';
import { finalizeModule } from '../../hsm-adapter/pkcs11-token.ts';
import { activateSoftHsmConf, loadState } from '../../softhsm/state.ts';
import { replicaDbDir } from '../agent/replica.ts';
import {
  REGION_HEADER,
  type Fleet, type FleetEvent, type FleetFault, type ReplicaStatus, type StartFleetOptions,
} from './fleet-types.ts';
import { REPLICA_STATUS_PATH, resolvePeers } from './process-config.ts';
import type { ReplicaProcessStatus } from './replica-process.ts';
import { readBody, refuseUnauthorizedRelay, sendBody } from '../agent/http.ts';
import { startOperatorListener } from './admin-routes.ts';
import { EntryRouter } from './router.ts';
import { bearer, hopSecret } from '../../protocol/hop-secret.ts';

export class ProcessFleetError extends BkvError {}

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const RUN = join(ROOT, 'bin/run.js');
const ENTRY = join(ROOT, 'vault/fleet/replica-process.ts');

interface Proc {
  child: ChildProcess;
  relayUrl: string;
  exited: Promise<void>;
}

/** Loopback ports bound and released at once (ports 0 cannot be used: peers must know them before they start). */
async function freePorts(n: number): Promise<number[]> {
  const servers = await Promise.all(Array.from({ length: n }, () => new Promise<NetServer>((resolve, reject) => {
    const s = createNetServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => resolve(s));
  })));
  const ports = servers.map((s) => (s.address() as AddressInfo).port);
  await Promise.all(servers.map((s) => new Promise<void>((r) => s.close(() => r()))));
  return ports;
}

export async function startProcessFleet(opts: StartFleetOptions): Promise<Fleet> {
  const state = loadState(opts.stateDir);
  const names = opts.replicas ?? state.replicas.map((r) => r.name);
  if (names.length === 0) throw new ProcessFleetError('FLEET_EMPTY', 'no replicas to run');
  for (const n of names) {
    if (!state.replicas.some((r) => r.name === n)) throw new ProcessFleetError('UNKNOWN_REPLICA', `no replica named ${JSON.stringify(n)} in ${state.stateDir}`);
  }
  if (new Set(names).size !== names.length) throw new ProcessFleetError('DUPLICATE_REPLICA', 'a replica is named twice');
  if (opts.wan !== undefined && opts.wan !== 'none') {
    throw new ProcessFleetError('WAN_UNSUPPORTED', 'replicas over TCP run on the real network: the WAN model is for the in-process transport (use wan none)');
  }
  const electionMs = opts.electionTimeoutMs ?? 1000;
  const ports = await freePorts(names.length * 2);
  const peersFile = (name: string) => join(state.stateDir, 'replicas', name, 'peers.json');
  const peerPort = new Map(names.map((n, i) => [n, ports[i]!]));
  const relayPort = new Map(names.map((n, i) => [n, ports[names.length + i]!]));
  // The pins, read once from the tokens (public keys, checked against fleet.json) before any replica
  // runs, and handed to each process in its peers file: no process then opens another's token.
  activateSoftHsmConf(state);
  const pins = resolvePeers(state, names[0]!, names.slice(1).map((n) => ({ name: n, address: { host: '127.0.0.1', port: 1 } }))).pins;
  for (const name of names) {
    const file = peersFile(name);
    mkdirSync(join(file, '..'), { recursive: true });
    writeFileSync(file, JSON.stringify({
      version: 1,
      peers: Object.fromEntries(names.filter((n) => n !== name).map((n) => [n, { host: '127.0.0.1', port: peerPort.get(n), identityKey: Buffer.from(pins.get(n)!).toString('hex') }])),
    }, null, 1));
  }
  const emit = (e: FleetEvent) => { try { opts.onEvent?.(e); } catch { /* an observer must not break the fleet */ } };
  const running = new Map<string, Proc>();
  /** Every live child, ready or not (a failed start must not leave a sibling running). */
  const children = new Set<ChildProcess>();
  // The replica processes' own relay listeners take the state's relay key (they read it themselves).
  const relayHeaders = { authorization: bearer(hopSecret(state.stateDir, 'relay')) };
  const diskCopies = new Map<string, string>();
  let operator: { url: string; close(): Promise<void> } | undefined;
  let akeKeys: Record<string, string> = {};
  let closed = false;

  const launch = (name: string): Promise<void> => {
    const args = [
      RUN, ENTRY, '--state', state.stateDir, '--replica', name, '--listen', `127.0.0.1:${peerPort.get(name)}`,
      '--peers', peersFile(name),
      '--relay-port', String(relayPort.get(name)), '--election-ms', String(electionMs), '--exit-with-stdin',
      ...(opts.policy?.requestTtlMs === undefined ? [] : ['--request-ttl-ms', String(opts.policy.requestTtlMs)]),
    ];
    const child = spawn(process.execPath, args, { cwd: ROOT, stdio: ['pipe', 'pipe', 'pipe'] });
    children.add(child);
    const exited = new Promise<void>((r) => child.once('exit', () => { children.delete(child); r(); }));
    const values = new Map<string, string>();
    let lastLine = '';
    createInterface({ input: child.stderr! }).on('line', (line) => {
      lastLine = line.slice(0, 300);
      const m = /^\[[^\]]*\] (.*)$/.exec(line);
      const text = m ? m[1]! : line;
      emit({ kind: 'log', replica: name, line: text });
      const lead = /^leader in term (\d+)$/.exec(text);
      if (lead) emit({ kind: 'leader', replica: name, term: Number(lead[1]) });
      const rj = /^rejoined at (\d+)$/.exec(text);
      if (rj) emit({ kind: 'rejoined', replica: name, index: Number(rj[1]) });
    });
    return new Promise<void>((resolve, reject) => {
      createInterface({ input: child.stdout! }).on('line', (line) => {
        const eq = line.indexOf('=');
        if (eq > 0) values.set(line.slice(0, eq), line.slice(eq + 1));
        if (!line.startsWith('READY=')) return;
        const keys: Record<string, string> = {};
        for (const s of PINNED_KEYS) {
          const v = values.get(`VAULT_AKE_PUBLIC_KEY_${s.replace(/[^A-Za-z0-9]/g, '_')}`);
          if (v) keys[s] = v;
        }
        akeKeys = keys;
        running.set(name, { child, relayUrl: values.get('REPLICA_RELAY_URL')!, exited });
        emit({ kind: 'started', replica: name });
        resolve();
      });
      void exited.then(() => {
        const p = running.get(name);
        if (p?.child === child) { running.delete(name); if (!closed) emit({ kind: 'crashed', replica: name }); }
        reject(new ProcessFleetError('REPLICA_EXITED', `replica ${name} exited (${child.exitCode ?? child.signalCode})${lastLine ? `: ${lastLine}` : ''}`));
      });
    });
  };

  try {
    await Promise.all(names.map((n) => launch(n)));
  } catch (e) {
    for (const c of children) c.kill('SIGKILL');
    finalizeModule();
    throw e;
  }

  const statusOf = async (name: string): Promise<ReplicaProcessStatus | undefined> => {
    const p = running.get(name);
    if (!p) return undefined;
    try {
      const res = await fetch(p.relayUrl + REPLICA_STATUS_PATH, { headers: relayHeaders, signal: AbortSignal.timeout(2_000) });
      return (await res.json()) as ReplicaProcessStatus;
    } catch {
      return undefined;
    }
  };

  const router = new EntryRouter(names, (n) => running.has(n), async () =>
    (await Promise.all(names.filter((n) => running.has(n)).map(statusOf))).flatMap((s) => (s ? [s] : [])));

  const fleet: Fleet = {
    url: '',
    replicas: [...names],
    akePublicKeys: () => ({ ...akeKeys }),
    async status(): Promise<ReplicaStatus[]> {
      const st = await Promise.all(names.map(statusOf));
      const leaderCommit = st.filter((s) => s?.role === 'leader').sort((a, b) => b!.term - a!.term)[0]?.commitIndex;
      return names.map((n, i) => {
        const s = st[i];
        if (!s) return { name: n, region: n, role: 'down', term: 0, commitIndex: 0, appliedIndex: 0, lag: -1, healthy: false, reason: running.has(n) ? 'NOT_RESPONDING' : 'CRASHED', leader: null };
        const { akePublicKeys: _k, ...rest } = s;
        return { ...rest, lag: leaderCommit === undefined ? -1 : Math.max(0, leaderCommit - s.appliedIndex) };
      });
    },
    async leader() {
      const st = await Promise.all(names.map(statusOf));
      return st.filter((s) => s?.role === 'leader').sort((a, b) => b!.term - a!.term)[0]?.name;
    },
    partition() { throw unsupported('partition'); },
    heal() { throw unsupported('heal'); },
    isolate() { throw unsupported('isolate'); },
    blockLink() { throw unsupported('block'); },
    async crash(name) {
      if (!names.includes(name)) throw new ProcessFleetError('UNKNOWN_REPLICA', `no replica ${name}`);
      const p = running.get(name);
      if (!p) return;
      p.child.kill('SIGKILL');
      await p.exited;
    },
    async restart(name, o = {}) {
      if (!names.includes(name)) throw new ProcessFleetError('UNKNOWN_REPLICA', `no replica ${name}`);
      if (running.has(name)) throw new ProcessFleetError('REPLICA_RUNNING', `replica ${name} is running; crash it first`);
      if (o.disk === 'rollback') {
        const copy = diskCopies.get(name);
        if (!copy) throw new ProcessFleetError('NO_DISK_COPY', `no snapshotDisk() copy of ${name} to roll back to`);
        const dir = replicaDbDir(state.stateDir, name);
        rmSync(dir, { recursive: true, force: true });
        cpSync(copy, dir, { recursive: true });
      }
      await launch(name);
    },
    async snapshotDisk(name) {
      if (!names.includes(name)) throw new ProcessFleetError('UNKNOWN_REPLICA', `no replica ${name}`);
      // Another process's LMDB cannot be copied between two of its Readies from here: crash it first.
      if (running.has(name)) throw new ProcessFleetError('REPLICA_RUNNING', `replica ${name} is running; over TCP, crash it before copying its disk`);
      const dir = join(state.stateDir, 'replicas', name, `disk-copy-${Date.now()}`);
      cpSync(replicaDbDir(state.stateDir, name), dir, { recursive: true });
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
      await Promise.all([...running.values()].map(async (p) => {
        p.child.kill('SIGTERM');
        const t = setTimeout(() => p.child.kill('SIGKILL'), 10_000);
        await p.exited;
        clearTimeout(t);
      }));
      for (const c of diskCopies.values()) rmSync(c, { recursive: true, force: true });
      finalizeModule();
    },
  };

  const handleFault = async (f: FleetFault): Promise<unknown> => {
    const name = (v: unknown): string => {
      if (typeof v !== 'string') throw new InputError('replica must be a replica name', 'BAD_FAULT');
      return v;
    };
    switch (f.op) {
      case 'crash': await fleet.crash(name(f.replica)); return {};
      case 'restart':
        if (f.disk !== undefined && f.disk !== 'keep' && f.disk !== 'rollback') throw new InputError('disk must be keep or rollback', 'BAD_FAULT');
        await fleet.restart(name(f.replica), { disk: f.disk });
        return {};
      case 'snapshotDisk': return { path: await fleet.snapshotDisk(name(f.replica)) };
      case 'partition': case 'heal': case 'isolate': case 'block': throw unsupported(f.op);
      default: throw new InputError('unknown fault op', 'BAD_FAULT');
    }
  };

  const server = createHttpServer((req, res) => { void serve(req, res).catch(() => sendBody(res, 500, 'application/json', JSON.stringify({ code: 'INTERNAL' }))); });
  const serve = async (req: IncomingMessage, res: ServerResponse): Promise<void> => {
    if (refuseUnauthorizedRelay(req, res, opts.relayKey)) return;
    if (req.url !== RELAY_PATH || req.method !== 'POST') return sendBody(res, 404, 'application/json', JSON.stringify({ code: 'NOT_FOUND' }));
    let raw: Uint8Array;
    let relayedBody: Uint8Array;
    try {
      raw = await readBody(req, MAX_RELAY_BODY + 256);
      relayedBody = decodeRelayRequest(raw).body;
    } catch (e) {
      return sendBody(res, 400, 'application/octet-stream', encodeRelayReply({ ok: false, code: e instanceof BkvError ? e.code : 'BAD_RELAY_MESSAGE', message: 'malformed relay request' }));
    }
    const hint = req.headers[REGION_HEADER];
    const name = router.pick(relayedBody, typeof hint === 'string' ? hint : undefined);
    const p = name ? running.get(name) : undefined;
    if (!p) return sendBody(res, 503, 'application/octet-stream', encodeRelayReply({ ok: false, code: 'NO_REPLICA', message: 'no replica is running' }));
    try {
      // The replica's reply (relay envelope, success or its error code) passes through unchanged.
      const r = await fetch(p.relayUrl + RELAY_PATH, { method: 'POST', body: raw, headers: relayHeaders, signal: AbortSignal.timeout(120_000) });
      return sendBody(res, r.status, 'application/octet-stream', new Uint8Array(await r.arrayBuffer()));
    } catch {
      // Died under the request: its outcome is unknown (an attempt may be charged), like a worker's exit.
      return sendBody(res, 503, 'application/octet-stream', encodeRelayReply({ ok: false, code: 'REPLICA_DOWN', message: 'vault fleet did not serve the request' }));
    }
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

function unsupported(op: string): ProcessFleetError {
  return new ProcessFleetError('FAULT_UNSUPPORTED', `${op}: replicas over TCP use the real network; cut links with network namespaces or firewall rules`);
}
