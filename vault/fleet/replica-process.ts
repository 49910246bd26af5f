// One fleet replica as its own OS process: its token, its LMDB directory, the firmware and RaftLog
// (FleetReplica, as in a worker thread), but the peers reached over TcpTransport (mutually
// authenticated with the token identity keys, docs/fleet-network.md) instead of MessagePorts. The
// process also serves an HTTP front on its own: device requests entering the fleet at this replica
// (POST RELAY_PATH; a follower forwards them to the leader over the channel) and its status.
//   node bin/run.js vault/fleet/replica-process.ts --state DIR --replica NAME --listen HOST:PORT \
//     (--peer NAME=HOST:PORT ... | --peers FILE) [--relay-port P] [--election-ms MS]
// Prints on stdout, once listening (KEY=VALUE lines for people, READY last):
//   REPLICA_NAME=, REPLICA_PEER_ADDR=HOST:PORT, REPLICA_RELAY_URL=http://..., REPLICA_IDENTITY_KEY=<hex>,
//   VAULT_AKE_PUBLIC_KEY_<suite>=<hex> (what devices pin), READY=<name>
// and, for a supervisor, the same as a typed `BKV1 {"t":"ready",...}` line, then one such line per
// event (leader, health, rejoined): process-protocol.ts. Logs go to stderr. SIGTERM/SIGINT: stop serving, close the replica, C_Finalize, exit 0.
// Exit 2 on bad flags or a configuration the manifest refuses, 1 when it cannot start.
// Whether it votes at once is decided from its disk and its token anchor, never by a flag: an intact
// disk votes at once, a rolled-back or blank one re-replicates first (docs/fleet.md, "Anchored
// acknowledgements"). --exit-with-stdin: stop when stdin closes (the supervisor died). --faults: the
// token goes through the fault-injecting wrapper (rates 0) and POST REPLICA_CONTROL_PATH, with the
// operator key, sets its rates and the replica's clock (the live nemesis' token and clock faults).
import type { IncomingMessage, Server, ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import { FaultyToken, type FaultPlan } from '../../hsm-adapter/faulty-token.ts';
import { finalizeModule, openToken, type Pkcs11Token } from '../../hsm-adapter/pkcs11-token.ts';
import type { Token } from '../../hsm-adapter/token.ts';
import { isBkvError } from '../../protocol/errors.ts';
import { RELAY_PATH } from '../../protocol/relay.ts';
import { pinnedKeys } from '../firmware/gate.ts';
import { activateSoftHsmConf, loadState } from '../../softhsm/state.ts';
import { replicaDbDir } from '../agent/replica.ts';
import { MeteredToken } from '../agent/metered-token.ts';
import type { ReplicaMetrics } from '../../protocol/metrics-wire.ts';
import type { ReplicaStatus } from './fleet-types.ts';
import {
  ProcessConfigError, REPLICA_CONTROL_PATH, REPLICA_STATUS_PATH, fleetIdOf, parseHostPort, parsePeerFlag, parsePeersFile, resolvePeers, type PeerSpec,
} from './process-config.ts';
import { FleetReplica } from './replica.ts';
import { TcpTransport } from './transport-tcp.ts';
import { createFront, listenFront, readBody, refuseUnauthorizedRelay, relayRefusal, sendBody, serveRelay } from '../agent/http.ts';
import { decodeReplicaControl, encodeProcessMessage, type ProcessMessage } from './process-protocol.ts';
import { bearerMatches, hopSecret } from '../../protocol/hop-secret.ts';

const USAGE = `usage: vault/fleet/replica-process.ts --replica NAME [--state DIR] [--listen HOST:PORT]
       (--peer NAME=HOST:PORT ... | --peers FILE) [--relay-host H] [--relay-port P] [--election-ms MS]
       [--request-ttl-ms MS] [--exit-with-stdin] [--faults] [--quiet]`;

/** What GET REPLICA_STATUS_PATH answers: the fleet's ReplicaStatus for this one replica, plus the keys it serves. */
export interface ReplicaProcessStatus extends ReplicaStatus {
  akePublicKeys: Record<string, string>;
  metrics?: ReplicaMetrics;
}

interface Config {
  stateDir: string;
  name: string;
  listen: { host: string; port: number };
  peers: PeerSpec[];
  relay: { host: string; port: number };
  electionMs: number;
  requestTtlMs?: number;
  quiet: boolean;
  exitWithStdin: boolean;
  faults: boolean;
}

function parse(argv: string[]): Config | 'help' {
  let v;
  try {
    v = parseArgs({
      args: argv, strict: true, allowPositionals: false,
      options: {
        state: { type: 'string', default: process.env.BKV_STATE ?? '.bkv' },
        replica: { type: 'string' },
        listen: { type: 'string', default: '127.0.0.1:0' },
        peer: { type: 'string', multiple: true, default: [] },
        peers: { type: 'string' },
        'relay-host': { type: 'string', default: '127.0.0.1' },
        'relay-port': { type: 'string', default: '0' },
        'election-ms': { type: 'string', default: '1000' },
        'request-ttl-ms': { type: 'string' },
        'exit-with-stdin': { type: 'boolean', default: false },
        faults: { type: 'boolean', default: false },
        quiet: { type: 'boolean', default: false },
        help: { type: 'boolean', default: false },
      },
    }).values;
  } catch (e) {
    throw new ProcessConfigError('BAD_FLAGS', (e as Error).message);
  }
  if (v.help) return 'help';
  if (!v.replica) throw new ProcessConfigError('BAD_FLAGS', '--replica NAME is required');
  if (v.peer!.length > 0 && v.peers) throw new ProcessConfigError('BAD_FLAGS', 'give peers either as --peer flags or as --peers FILE, not both');
  const int = (s: string, name: string, lo: number, hi: number): number => {
    const n = /^[0-9]+$/.test(s) ? Number(s) : NaN;
    if (!(n >= lo && n <= hi)) throw new ProcessConfigError('BAD_FLAGS', `--${name} must be an integer ${lo}..${hi}`);
    return n;
  };
  const relayHost = v['relay-host']!;
  return {
    stateDir: v.state!,
    name: v.replica,
    listen: parseHostPort(v.listen!, '--listen', true),
    peers: v.peers ? parsePeersFile(v.peers) : v.peer!.map(parsePeerFlag),
    relay: { host: parseHostPort(`${relayHost.includes(':') ? `[${relayHost}]` : relayHost}:1`, '--relay-host').host, port: int(v['relay-port']!, 'relay-port', 0, 65535) },
    electionMs: int(v['election-ms']!, 'election-ms', 50, 60_000),
    requestTtlMs: v['request-ttl-ms'] === undefined ? undefined : int(v['request-ttl-ms'], 'request-ttl-ms', 100, 600_000),
    quiet: v.quiet!,
    exitWithStdin: v['exit-with-stdin']!,
    faults: v.faults!,
  };
}

export async function main(argv: string[]): Promise<number> {
  let cfg: Config | 'help';
  try {
    cfg = parse(argv);
  } catch (e) {
    process.stderr.write(`replica: ${isBkvError(e) ? `${e.code}: ${e.message}` : 'bad flags'}\n${USAGE}\n`);
    return 2;
  }
  if (cfg === 'help') { process.stdout.write(`${USAGE}\n`); return 0; }
  const c = cfg;
  // Installed before anything starts: a stop asked during start-up still closes the token cleanly.
  let stopAsked!: () => void;
  const stopped = new Promise<void>((resolve) => { stopAsked = resolve; });
  process.once('SIGTERM', () => stopAsked());
  process.once('SIGINT', () => stopAsked());
  if (c.exitWithStdin) {
    // A supervisor holds our stdin: when it dies without stopping us, its end closes and we stop.
    process.stdin.on('end', () => stopAsked()).on('error', () => stopAsked()).resume();
  }
  const log = (line: string) => { if (!c.quiet) process.stderr.write(`[${c.name}] ${line}\n`); };

  let token: Pkcs11Token | undefined;
  let transport: TcpTransport | undefined;
  let replica: FleetReplica | undefined;
  let server: Server | undefined;
  const shutdown = async () => {
    if (server) await new Promise<void>((res) => { server!.close(() => res()); server!.closeAllConnections(); });
    if (replica) await replica.close();
    else await transport?.close();
    token?.close();
    finalizeModule();
    if (c.exitWithStdin) process.stdin.destroy();
  };
  try {
    const state = loadState(c.stateDir);
    activateSoftHsmConf(state);
    const info = state.replicas.find((r) => r.name === c.name);
    let peers;
    try {
      peers = await withTokenRetry(() => resolvePeers(state, c.name, c.peers), log);
    } catch (e) {
      if (e instanceof ProcessConfigError) {
        process.stderr.write(`replica: ${e.code}: ${e.message}\n${USAGE}\n`);
        finalizeModule();
        return 2;
      }
      throw e;
    }
    token = await withTokenRetry(() => openToken(state.tokenOptions(info!.tokenLabel)), log);
    // Read at every call, as in a worker: a control body changes the rates of the running wrapper.
    // A pulled token is left out (it would stay pulled; the crash fault is the restart).
    const plan: FaultPlan = { seed: process.pid ^ c.name.length, failureRate: 0, latencyRate: 0, faults: ['CKR_DEVICE_ERROR', 'CKR_SESSION_HANDLE_INVALID'], stickyRemoval: false };
    const used: Token = c.faults ? new FaultyToken(token, plan) : token;
    transport = await TcpTransport.start({
      fleetId: fleetIdOf(state), self: c.name, token: used, pins: peers.pins,
      listen: c.listen, peers: peers.addresses,
      backoff: { initialMs: 50, maxMs: Math.max(200, Math.min(2_000, c.electionMs)) },
      onEvent: (e) => {
        if (e.type === 'open') log(`channel ${e.direction === 'out' ? 'to' : 'from'} ${e.peer} open (session ${e.sessionId})`);
        else if (e.type === 'rejected') log(`refused ${e.direction} connection${e.peer ? ` (${e.peer})` : ''}: ${e.code}`);
      },
    });
    const tickMs = Math.max(5, Math.round(c.electionMs / 10));
    // Events before the ready line are held: a supervisor learns of a replica from `ready` first.
    const held: ProcessMessage[] = [];
    let readySent = false;
    const tell = (m: ProcessMessage) => { if (readySent) process.stdout.write(encodeProcessMessage(m)); else held.push(m); };
    const metered = new MeteredToken(used);
    replica = await FleetReplica.open({
      name: c.name, voters: peers.voters, token: metered, tokenReport: () => metered.report(), dbDir: replicaDbDir(state.stateDir, c.name), transport,
      policy: c.requestTtlMs === undefined ? undefined : { requestTtlMs: c.requestTtlMs }, tickMs,
      log,
      onEvent: (e) => tell(e.kind === 'leader' ? { t: 'leader', term: e.term } : e.kind === 'role' ? { t: 'role', role: e.role, term: e.term, leader: e.leader } : e.kind === 'rejoined' ? { t: 'rejoined', index: e.index } : { t: 'health', healthy: e.healthy, code: e.code, reason: e.reason }),
    });
    const akeKeys: Record<string, string> = {};
    for (const [s, k] of Object.entries(pinnedKeys(replica.firmware))) akeKeys[s] = k;
    const r = replica;
    const relayKey = hopSecret(state.stateDir, 'relay');
    const control = c.faults ? { operatorKey: hopSecret(state.stateDir, 'operator'), plan } : undefined;
    // Only this replica's supervisor talks here, through fetch's unbounded pool: a cap far above its load.
    server = createFront((req, res) => { void serve(r, akeKeys, relayKey, control, req, res).catch(() => sendBody(res, 500, 'application/json', JSON.stringify({ code: 'INTERNAL' }))); }, relayRefusal, { maxConnections: 4096 });
    const srv = server;
    await listenFront(srv, c.relay.port, c.relay.host);
    const relay = srv.address() as AddressInfo;
    const urlHost = relay.family === 'IPv6' ? `[${relay.address}]` : relay.address;
    const peerAddr = transport.address;
    const lines = [
      `REPLICA_NAME=${c.name}`,
      `REPLICA_PEER_ADDR=${peerAddr.host.includes(':') ? `[${peerAddr.host}]` : peerAddr.host}:${peerAddr.port}`,
      `REPLICA_RELAY_URL=http://${urlHost}:${relay.port}`,
      `REPLICA_IDENTITY_KEY=${Buffer.from(peers.pins.get(c.name)!).toString('hex')}`,
      ...Object.entries(akeKeys).map(([s, hex]) => `VAULT_AKE_PUBLIC_KEY_${s.replace(/[^A-Za-z0-9]/g, '_')}=${hex}`),
      `READY=${c.name}`,
    ];
    process.stdout.write(lines.join('\n') + '\n');
    process.stdout.write(encodeProcessMessage({
      t: 'ready', name: c.name, peerAddr: lines[1]!.slice('REPLICA_PEER_ADDR='.length), relayUrl: `http://${urlHost}:${relay.port}`,
      identityKey: Buffer.from(peers.pins.get(c.name)!).toString('hex'), akeKeys,
    }));
    readySent = true;
    for (const m of held.splice(0)) process.stdout.write(encodeProcessMessage(m));
    await stopped;
    log('shutting down');
    await shutdown();
    return 0;
  } catch (e) {
    process.stderr.write(`replica ${c.name}: ${isBkvError(e) ? `${e.code}: ${e.message}` : 'failed to start'}\n`);
    await shutdown().catch(() => undefined);
    return 1;
  }
}

/**
 * SoftHSM2 scans its token directory once, at C_Initialize; a token another process is writing at
 * that moment can be missing from the scan (seen on loopback: TOKEN_NOT_FOUND for a token that is
 * there). Nothing else in this process uses the module yet, so finalise, wait and scan again.
 */
async function withTokenRetry<T>(f: () => T, log: (line: string) => void): Promise<T> {
  for (let attempt = 1; ; attempt++) {
    try {
      return f();
    } catch (e) {
      if ((e as { code?: string }).code !== 'TOKEN_NOT_FOUND' || attempt >= 5) throw e;
      log(`token scan missed a token (attempt ${attempt}); scanning again`);
      finalizeModule();
      await new Promise((r) => setTimeout(r, 100 + Math.random() * 200 * attempt));
    }
  }
}

async function serve(
  replica: FleetReplica, akeKeys: Record<string, string>, relayKey: string, control: { operatorKey: string; plan: FaultPlan } | undefined,
  req: IncomingMessage, res: ServerResponse,
): Promise<void> {
  // Faults need the operator key, not the relay key ChatD holds: a relay may not slow a token.
  if (req.url === REPLICA_CONTROL_PATH && req.method === 'POST') {
    if (!control) return sendBody(res, 404, 'application/json', JSON.stringify({ code: 'FAULTS_OFF', message: 'this replica was started without --faults' }));
    if (!bearerMatches(req.headers.authorization, control.operatorKey)) return sendBody(res, 401, 'application/json', JSON.stringify({ code: 'UNAUTHORIZED', message: 'control needs the operator key' }));
    let c;
    try {
      c = decodeReplicaControl(Buffer.from(await readBody(req, 4096)).toString('utf8'));
    } catch (e) {
      return sendBody(res, 400, 'application/json', JSON.stringify({ code: (e as { code?: string }).code ?? 'BAD_REQUEST', message: (e as Error).message }));
    }
    if (c.t === 'token') Object.assign(control.plan, { failureRate: c.failureRate, latencyRate: c.latencyRate, latencyMs: c.latencyMs });
    else replica.setClock(c.rate, c.offsetMs);
    return sendBody(res, 200, 'application/json', JSON.stringify({ ok: true }));
  }
  // Status included: only the supervisor, which holds the relay key, talks to a replica process.
  if (refuseUnauthorizedRelay(req, res, relayKey)) return;
  if (req.url === REPLICA_STATUS_PATH && req.method === 'GET') {
    const s = replica.status();
    const body: ReplicaProcessStatus = {
      name: s.name, region: s.name, role: s.role, term: s.term, commitIndex: s.commitIndex, appliedIndex: s.appliedIndex,
      // The leader's commit index is the leader's to report; a lone follower cannot know its lag.
      lag: s.role === 'leader' ? 0 : -1,
      healthy: s.healthy, reason: s.reason, leader: s.leader, lastIndex: s.lastIndex, digest: s.digest, stats: s.stats, heardMsAgo: s.heardMsAgo, metrics: s.metrics, akePublicKeys: akeKeys,
    };
    return sendBody(res, 200, 'application/json', JSON.stringify(body));
  }
  if (req.url !== RELAY_PATH || req.method !== 'POST') return sendBody(res, 404, 'application/json', JSON.stringify({ code: 'NOT_FOUND' }));
  await serveRelay(req, res, 'vault replica', (user, body) => replica.handle(user, body));
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const code = await main(process.argv.slice(2));
  process.exitCode = code;
  // Everything was closed; should a library still hold a handle, do not hang a supervisor's SIGTERM.
  setTimeout(() => process.exit(code), 3_000).unref();
}
