// Worker-thread entry of one replica (loaded by bin/ts-worker.js). Opens its own token by label (the
// main thread set SOFTHSM2_CONF and initialised the module), its LMDB directory, the MessagePort
// transport through the WAN model wrapped in the secure channel, and a FleetReplica.
// What crosses the thread boundary: device requests and replies (opaque bodies), status, control
// messages, new ports after a peer restarts. Never K, a password or a key.
import { parentPort, workerData, type MessagePort } from 'node:worker_threads';
import { FaultyToken, type FaultPlan } from '../../hsm-adapter/faulty-token.ts';
import { MeteredToken } from '../agent/metered-token.ts';
import { openToken, type OpenTokenOptions } from '../../hsm-adapter/pkcs11-token.ts';
import type { Token } from '../../hsm-adapter/token.ts';
import type { ReplicaControl } from './fleet-types.ts';
import { pinnedKeys } from '../firmware/gate.ts';
import type { Policy } from '../firmware/firmware.ts';
import type { MemberChange } from '../replica/core.ts';
import { FleetReplica } from './replica.ts';
import { SecureTransport } from './secure-transport.ts';
import { PortTransport, type PortEndpointInit } from './transport-port.ts';

export interface ReplicaWorkerData {
  name: string;
  voters: string[];
  /** How to open this replica's token (FleetState.tokenOptions: module and its arguments, PIN, seal scheme, data store). */
  token: OpenTokenOptions;
  dbDir: string;
  fleetId: string;
  /** Replica -> hex identity public key (pins). */
  pins: Record<string, string>;
  endpoint: PortEndpointInit;
  policy?: Partial<Policy>;
  tickMs: number;
  /** Fault injection is on: the token goes through the fault-injecting wrapper (rates 0 until told). */
  faults?: boolean;
}

export type ToWorker =
  | { t: 'request'; id: number; user: string; body: Uint8Array }
  | { t: 'status'; id: number }
  | { t: 'port'; peer: string; port: MessagePort }
  | { t: 'backup'; id: number; path: string }
  | { t: 'control'; id: number; c: ReplicaControl }
  | { t: 'member'; id: number; change: MemberChange }
  /** Die at once, no flush (the crash fault); see crashWorker in fleet.ts for why it is a message. */
  | { t: 'crash' }
  | { t: 'close' };

export type FromWorker =
  | { t: 'ready'; akeKeys: Record<string, string> }
  | { t: 'failed'; code: string; message: string }
  | { t: 'reply'; id: number; ok: true; body: Uint8Array }
  | { t: 'reply'; id: number; ok: false; code: string }
  | { t: 'status'; id: number; status: import('./replica.ts').LocalStatus }
  | { t: 'backup'; id: number; ok: boolean; code?: string }
  | { t: 'control'; id: number; ok: boolean }
  | { t: 'member'; id: number; ok: boolean; index?: number; code?: string }
  | { t: 'event'; e: import('./replica.ts').ReplicaEvent | { kind: 'log'; line: string } }
  | { t: 'closed' };

const d = workerData as ReplicaWorkerData & { __entry: string };
const port = parentPort!;
const post = (m: FromWorker, transfer?: ArrayBuffer[]) => port.postMessage(m, transfer ?? []);

async function main(): Promise<void> {
  const real = openToken(d.token);
  // Read at every call, so a control message changes the rates of the running wrapper. A pulled
  // token is left out: it would stay pulled for the rest of the run (a restart is the crash fault).
  const plan: FaultPlan = { seed: process.pid ^ d.name.length, failureRate: 0, latencyRate: 0, faults: ['CKR_DEVICE_ERROR', 'CKR_SESSION_HANDLE_INVALID'], stickyRemoval: false };
  // Metered outermost, so the failures the fault-injecting token injects count as token errors too.
  const token = new MeteredToken(d.faults ? new FaultyToken(real, plan) : real);
  const ports = new PortTransport(d.endpoint);
  const transport = new SecureTransport(ports, {
    fleetId: d.fleetId, token, pins: new Map(Object.entries(d.pins).map(([k, v]) => [k, new Uint8Array(Buffer.from(v, 'hex'))])),
  });
  const replica = await FleetReplica.open({
    name: d.name, voters: d.voters, token, dbDir: d.dbDir, transport, policy: d.policy, tickMs: d.tickMs,
    log: (line) => post({ t: 'event', e: { kind: 'log', line } }),
    onEvent: (e) => post({ t: 'event', e }),
    tokenReport: () => token.report(),
  });
  transport.dialAll();
  const akeKeys: Record<string, string> = {};
  for (const [s, k] of Object.entries(pinnedKeys(replica.firmware))) akeKeys[s] = k;
  post({ t: 'ready', akeKeys });

  port.on('message', (m: ToWorker) => {
    switch (m.t) {
      case 'crash':
        process.exit(70);
      case 'request':
        void replica.handle(m.user, m.body).then((o) => post(o.ok ? { t: 'reply', id: m.id, ok: true, body: o.body } : { t: 'reply', id: m.id, ok: false, code: o.code }));
        return;
      case 'status':
        post({ t: 'status', id: m.id, status: replica.status() });
        return;
      case 'port':
        ports.replacePort(m.peer, m.port);
        return;
      case 'backup':
        replica.backup(m.path).then(() => post({ t: 'backup', id: m.id, ok: true }), (e: unknown) => post({ t: 'backup', id: m.id, ok: false, code: (e as { code?: string }).code ?? 'BACKUP_FAILED' }));
        return;
      case 'member':
        void replica.member(m.change).then((a) => post(a.ok ? { t: 'member', id: m.id, ok: true, index: a.index } : { t: 'member', id: m.id, ok: false, code: a.code }));
        return;
      case 'control':
        if (m.c.t === 'token') Object.assign(plan, { failureRate: m.c.failureRate, latencyRate: m.c.latencyRate, latencyMs: m.c.latencyMs });
        else replica.setClock(m.c.rate, m.c.offsetMs);
        post({ t: 'control', id: m.id, ok: d.faults === true || m.c.t === 'clock' });
        return;
      case 'close':
        void replica.close().then(() => {
          real.close();
          post({ t: 'closed' });
          port.close();
        });
        return;
    }
  });
}

main().catch((e: unknown) => {
  const code = (e as { code?: string })?.code ?? 'START_FAILED';
  post({ t: 'failed', code, message: (e as Error)?.message ?? 'replica failed to start' });
});
