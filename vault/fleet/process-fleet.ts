// The process host of the fleet runner (runner.ts): one `replica-process.ts` per replica (its own
// token, LMDB and replica core), joined by TcpTransport on loopback, behind the runner's front, so
// `bkv fleet up --transport tcp`, ChatD and `bkv fleet status` work unchanged. The supervisor holds
// no token and no key: it picks ports, starts the processes (reading their typed stdout lines,
// process-protocol.ts), asks a replica's own relay endpoint, gathers statuses, and kills (SIGKILL) or
// restarts processes. Network faults belong to the real network here (namespaces, firewall rules):
// the runner refuses them with FAULT_UNSUPPORTED. Token and clock faults (with --faults) reach into a
// replica through its own control endpoint, which takes the operator key.
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { createServer as createNetServer, type AddressInfo, type Server as NetServer } from 'node:net';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { RELAY_PATH, decodeRelayReply, encodeRelayRequest } from '../../protocol/relay.ts';
import { finalizeModule } from '../../hsm-adapter/pkcs11-token.ts';
import { activateSoftHsmConf, loadState } from '../../softhsm/state.ts';
import type { Fleet, ReplicaControl, StartFleetOptions } from './fleet-types.ts';
import { REPLICA_CONTROL_PATH, REPLICA_STATUS_PATH, resolvePeers } from './process-config.ts';
import { decodeProcessLine, encodeReplicaControl, type ProcessMessage } from './process-protocol.ts';
import type { ReplicaProcessStatus } from './replica-process.ts';
import { FleetError, emitter, fleetNames, startRunner, type ReplicaHosts } from './runner.ts';
import { bearer, hopSecret } from '../../protocol/hop-secret.ts';
import { emptyReplicaMetrics } from '../../protocol/metrics-wire.ts';

/** The process fleet's errors are the fleet's (one class, one set of codes). */
export { FleetError as ProcessFleetError } from './runner.ts';

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
  const names = fleetNames(state, opts);
  if (opts.wan !== undefined && opts.wan !== 'none') {
    throw new FleetError('WAN_UNSUPPORTED', 'replicas over TCP run on the real network: the WAN model is for the in-process transport (use wan none)');
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
    mkdirSync(join(file, '..'), { recursive: true, mode: 0o700 });
    writeFileSync(file, JSON.stringify({
      version: 1,
      peers: Object.fromEntries(names.filter((n) => n !== name).map((n) => [n, { host: '127.0.0.1', port: peerPort.get(n), identityKey: Buffer.from(pins.get(n)!).toString('hex') }])),
    }, null, 1), { mode: 0o600 });
  }
  const emit = emitter(opts);
  const running = new Map<string, Proc>();
  /** Every live child, ready or not (a failed start must not leave a sibling running). */
  const children = new Set<ChildProcess>();
  // The replica processes' own relay listeners take the state's relay key (they read it themselves).
  const relayHeaders = { authorization: bearer(hopSecret(state.stateDir, 'relay')) };
  const faults = opts.faultEndpoint === true;
  const operatorHeaders: Record<string, string> = faults ? { authorization: bearer(hopSecret(state.stateDir, 'operator')), 'content-type': 'application/json' } : {};
  let closing = false;

  const launch = (name: string): Promise<Record<string, string>> => {
    const args = [
      RUN, ENTRY, '--state', state.stateDir, '--replica', name, '--listen', `127.0.0.1:${peerPort.get(name)}`,
      '--peers', peersFile(name),
      '--relay-port', String(relayPort.get(name)), '--election-ms', String(electionMs), '--exit-with-stdin',
      ...(opts.policy?.requestTtlMs === undefined ? [] : ['--request-ttl-ms', String(opts.policy.requestTtlMs)]),
      ...(faults ? ['--faults'] : []),
    ];
    const child = spawn(process.execPath, args, { cwd: ROOT, stdio: ['pipe', 'pipe', 'pipe'] });
    children.add(child);
    const exited = new Promise<void>((r) => child.once('exit', () => { children.delete(child); r(); }));
    let lastLine = '';
    createInterface({ input: child.stderr! }).on('line', (line) => {
      lastLine = line.slice(0, 300);
      const m = /^\[[^\]]*\] (.*)$/.exec(line);
      emit({ kind: 'log', replica: name, line: m ? m[1]! : line });
    });
    return new Promise<Record<string, string>>((resolve, reject) => {
      createInterface({ input: child.stdout! }).on('line', (line) => {
        let msg: ProcessMessage | undefined;
        try {
          msg = decodeProcessLine(line);
        } catch (e) {
          emit({ kind: 'log', replica: name, line: `refused a line from the replica process: ${(e as Error).message}` });
          return;
        }
        switch (msg?.t) {
          case undefined: return; // the lines for people
          case 'ready':
            running.set(name, { child, relayUrl: msg.relayUrl, exited });
            emit({ kind: 'started', replica: name });
            resolve(msg.akeKeys);
            return;
          case 'leader': emit({ kind: 'leader', replica: name, term: msg.term }); return;
          case 'role': emit({ kind: 'role', replica: name, role: msg.role, term: msg.term, leader: msg.leader }); return;
          case 'rejoined': emit({ kind: 'rejoined', replica: name, index: msg.index }); return;
          case 'health': emit({ kind: 'health', replica: name, healthy: msg.healthy, code: msg.code, reason: msg.reason }); return;
        }
      });
      void exited.then(() => {
        const p = running.get(name);
        if (p?.child === child) { running.delete(name); if (!closing) emit({ kind: 'crashed', replica: name }); }
        reject(new FleetError('REPLICA_EXITED', `replica ${name} exited (${child.exitCode ?? child.signalCode})${lastLine ? `: ${lastLine}` : ''}`));
      });
    });
  };

  const hosts: ReplicaHosts = {
    start: launch,
    isRunning: (name) => running.has(name),
    async request(name, user, body) {
      const p = running.get(name);
      if (!p) return { ok: false, code: 'REPLICA_DOWN' };
      try {
        const r = await fetch(p.relayUrl + RELAY_PATH, { method: 'POST', body: encodeRelayRequest({ user, body }), headers: relayHeaders, signal: AbortSignal.timeout(120_000) });
        const reply = decodeRelayReply(new Uint8Array(await r.arrayBuffer()));
        return reply.ok ? { ok: true, body: reply.body } : { ok: false, code: reply.code };
      } catch {
        // Died under the request: its outcome is unknown (an attempt may be charged), like a worker's exit.
        return { ok: false, code: 'REPLICA_DOWN' };
      }
    },
    async status(name) {
      const p = running.get(name);
      if (!p) return undefined;
      try {
        const res = await fetch(p.relayUrl + REPLICA_STATUS_PATH, { headers: relayHeaders, signal: AbortSignal.timeout(2_000) });
        const s = (await res.json()) as ReplicaProcessStatus;
        return { name: s.name, role: s.role, term: s.term, commitIndex: s.commitIndex, lastIndex: s.lastIndex ?? 0, appliedIndex: s.appliedIndex, healthy: s.healthy, reason: s.reason, leader: s.leader, digest: s.digest ?? '', heardMsAgo: s.heardMsAgo ?? {}, stats: s.stats ?? {}, metrics: s.metrics ?? emptyReplicaMetrics() };
      } catch {
        return undefined;
      }
    },
    ...(faults ? {
      async control(name: string, c: ReplicaControl) {
        const p = running.get(name);
        if (!p) throw new FleetError('REPLICA_DOWN', `replica ${name} is not running`);
        const r = await fetch(p.relayUrl + REPLICA_CONTROL_PATH, { method: 'POST', body: encodeReplicaControl(c), headers: operatorHeaders, signal: AbortSignal.timeout(5_000) })
          .catch(() => { throw new FleetError('REPLICA_DOWN', `replica ${name} did not answer its control request`); });
        if (!r.ok) throw new FleetError('FAULT_REFUSED', `replica ${name} refused the control request (${r.status})`);
      },
    } : {}),
    async kill(name) {
      const p = running.get(name);
      if (!p) return;
      p.child.kill('SIGKILL');
      await p.exited;
    },
    copyRunningDisk(name) {
      // Another process's LMDB cannot be copied between two of its Readies from here: crash it first.
      return Promise.reject(new FleetError('REPLICA_RUNNING', `replica ${name} is running; over TCP, crash it before copying its disk`));
    },
    async close() {
      closing = true;
      await Promise.all([...children].map(async (c) => {
        const exited = new Promise<void>((r) => { if (c.exitCode !== null || c.signalCode !== null) r(); else c.once('exit', () => r()); });
        c.kill('SIGTERM');
        const t = setTimeout(() => c.kill('SIGKILL'), 10_000);
        await exited;
        clearTimeout(t);
      }));
      finalizeModule();
    },
  };
  return startRunner(state, names, hosts, opts, emit);
}
