// The one fleet runner (main thread or supervisor process): whatever hosts the replicas (worker
// threads, or OS processes over TCP), this is the fleet's front: the HTTP relay endpoint and its
// routing, statuses, fault dispatch, disk copies for rollback, the operator listener, close. A
// ReplicaHosts implementation only starts, stops, asks and copies replicas (fleet.ts for threads,
// process-fleet.ts for processes). Types: fleet-types.ts. Design: docs/fleet.md.
import { cpSync, rmSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { BkvError, InputError } from '../../protocol/errors.ts';
import { REGION_HEADER, RELAY_PATH } from '../../protocol/relay.ts';
import type { FleetState } from '../../softhsm/state.ts';
import { createFront, listenFront, refuseUnauthorizedRelay, relayRefusal, sendBody, serveRelay } from '../agent/http.ts';
import { replicaDbDir } from '../agent/replica.ts';
import type { MemberChange, Outcome } from '../replica/core.ts';
import { writeManifest } from '../../softhsm/state.ts';
import { MembershipDriver, MemberError } from './membership.ts';
import { startOperatorListener } from './admin-routes.ts';
import { type ActiveFault, type Fleet, type FleetEvent, type FleetFault, type FleetStatusReport, type MemberRequest, type ReplicaControl, type ReplicaStatus, type StartFleetOptions } from './fleet-types.ts';
import { fleetView } from './fleet-view.ts';
import { VaultMetrics } from '../agent/metrics.ts';
import { HEALTH_PATH } from '../agent/server.ts';
import type { LocalStatus } from './replica.ts';
import { EntryRouter } from './router.ts';

export class FleetError extends BkvError {}

/** What hosts the replicas: the runner asks, the host does the process or thread work. */
export interface ReplicaHosts {
  /** Starts one replica (a restart, too); resolves with the keys it serves once it serves. */
  start(name: string): Promise<Record<string, string>>;
  isRunning(name: string): boolean;
  request(name: string, user: string, body: Uint8Array): Promise<Outcome>;
  status(name: string): Promise<LocalStatus | undefined>;
  /** Kills it at once (no flush beyond what it already flushed). */
  kill(name: string): Promise<void>;
  /** A consistent copy of a running replica's disk into `dir` (throws where the host cannot). */
  copyRunningDisk(name: string, dir: string): Promise<void>;
  /** Stops every replica cleanly, then releases what the host holds (the PKCS#11 module). */
  close(): Promise<void>;
  /** The link table, where this host enforces network faults itself (threads); else they are refused. */
  links?: {
    partition(groups: string[][]): void; heal(): void; isolate(name: string): void; block(from: string, to: string): void;
    degrade(name: string, opts: { lossRate?: number; extraDelayMs?: number }): void;
    blocked(from: string, to: string): boolean;
    degradation(name: string): { lossRate: number; extraDelayMs: number };
  };
  /** Token and clock faults inside a running replica, where the host can reach in (threads); else refused. */
  control?(name: string, c: ReplicaControl): Promise<void>;
  /** A membership change or leadership transfer on one replica's core, where the host can start standby replicas (threads); else refused. */
  member?(name: string, change: MemberChange): Promise<{ ok: true; index: number } | { ok: false; code: string }>;
  /** Stops one replica cleanly (a removed member). */
  stop?(name: string): Promise<void>;
  /** Replicas the host can start although they are no members (in the mesh, pinned): fleet.json's standby. */
  standby?: string[];
}

/** The replica names a start asks for, checked against the state. */
export function fleetNames(state: FleetState, opts: StartFleetOptions): string[] {
  const names = opts.replicas ?? state.replicas.map((r) => r.name);
  if (names.length === 0) throw new FleetError('FLEET_EMPTY', 'no replicas to run');
  for (const n of names) {
    if (!state.replicas.some((r) => r.name === n)) throw new FleetError('UNKNOWN_REPLICA', `no replica named ${JSON.stringify(n)} in ${state.stateDir}`);
  }
  if (new Set(names).size !== names.length) throw new FleetError('DUPLICATE_REPLICA', 'a replica is named twice');
  return names;
}

/** The event sink hosts and the runner share: the caller's onEvent, and the runner's own observers. */
export type Emit = ((e: FleetEvent) => void) & { also(f: (e: FleetEvent) => void): void };

export function emitter(opts: StartFleetOptions): Emit {
  const observers: ((e: FleetEvent) => void)[] = [];
  const emit = ((e: FleetEvent) => {
    for (const f of [opts.onEvent, ...observers]) {
      try { f?.(e); } catch { /* an observer must not break the fleet */ }
    }
  }) as Emit;
  emit.also = (f) => { observers.push(f); };
  return emit;
}

/** Starts every replica on `hosts`, then the front; on a failed start, stops what started. */
export async function startRunner(state: FleetState, names: string[], hosts: ReplicaHosts, opts: StartFleetOptions, emit: Emit): Promise<Fleet> {
  const metrics = new VaultMetrics();
  emit.also((e) => { if (e.kind === 'leader') metrics.leaderChange(e.replica); });
  let akeKeys: Record<string, string> = {};
  try {
    for (const keys of await Promise.all(names.map((n) => hosts.start(n)))) akeKeys = keys;
  } catch (e) {
    await hosts.close().catch(() => undefined);
    throw e;
  }
  const diskCopies = new Map<string, string>();
  let operator: { url: string; close(): Promise<void> } | undefined;
  let closed = false;
  const known = (n: string) => { if (!names.includes(n)) throw new FleetError('UNKNOWN_REPLICA', `no replica ${n}`); };
  const links = () => {
    if (!hosts.links) throw new FleetError('FAULT_UNSUPPORTED', 'network faults over TCP belong to the real network (namespaces, firewall rules); this fleet cannot partition itself');
    return hosts.links;
  };
  const statuses = async (): Promise<Map<string, LocalStatus>> => {
    const out = new Map<string, LocalStatus>();
    await Promise.all(names.filter((n) => hosts.isRunning(n)).map(async (n) => {
      const s = await hosts.status(n);
      if (s) out.set(n, s);
    }));
    return out;
  };
  const router = new EntryRouter(names, (n) => hosts.isRunning(n), async () => [...(await statuses()).values()]);
  emit.also((e) => {
    if (e.kind === 'role') router.note(e.replica, { role: e.role, leader: e.leader });
    else if (e.kind === 'health') router.note(e.replica, { healthy: e.healthy });
    else if (e.kind === 'crashed') router.note(e.replica, { role: 'down', leader: null, healthy: false });
  });
  const electionMs = opts.electionTimeoutMs ?? 1000;
  // Membership: the standby tokens this host can start, and the driver of one change at a time.
  const standby = new Map<string, 'spare' | 'removed'>(state.standby.filter((r) => hosts.standby?.includes(r.name)).map((r) => [r.name, r.standby] as const));
  // What entry 1 of every log holds: recorded at the first change (before it, the replicas run now).
  const founders = state.manifest.founders ?? [...names];
  const recordMembers = (): void => {
    // fleet.json follows the committed configuration: members in order, the rest standing by.
    const m = state.manifest;
    const all = [...m.replicas, ...(m.standby ?? [])];
    const entry = (n: string) => {
      const e = all.find((r) => r.name === n)!;
      const { standby: _drop, ...rest } = e as typeof e & { standby?: string };
      return rest;
    };
    const rest = all.filter((r) => !names.includes(r.name)).map((r) => ({ ...entry(r.name), standby: standby.get(r.name) ?? 'removed' as const }));
    // Keys in provision's order and an empty standby list left out, so a later provision finds the same text.
    const { standby: _s, founders: _f, ...base } = m;
    const next = { ...base, replicas: names.map(entry), ...(rest.length ? { standby: rest } : {}), founders };
    writeManifest(state.stateDir, next);
    state.manifest.replicas = next.replicas;
    state.manifest.standby = rest.length ? rest : undefined;
    state.manifest.founders = founders;
  };
  const driver = new MembershipDriver({
    members: names, standby, statuses: () => statuses(), electionMs,
    start: async (n) => { akeKeys = await hosts.start(n); },
    stop: async (n) => { if (hosts.stop) await hosts.stop(n); else await hosts.kill(n); },
    propose: (n, c) => hosts.member!(n, c),
    record: recordMembers,
  });
  const leaderOf = (st: Map<string, LocalStatus>) => [...st.values()].filter((s) => s.role === 'leader').sort((a, b) => b.term - a.term)[0];
  // The operator's faults still in force, in the order asked: what `fleet status` lists.
  let active: ActiveFault[] = [];
  const report = async (): Promise<FleetStatusReport> => {
    const st = await statuses();
    const l = hosts.links;
    const lead = leaderOf(st);
    const conf = lead?.healthy ? lead.members : undefined;
    const view = fleetView({
      names, reports: st, running: (n) => hosts.isRunning(n), electionMs, ...(conf ? { voters: conf.voters } : {}),
      links: l ? { blocked: (a, b) => l.blocked(a, b), lossRate: (n) => l.degradation(n).lossRate } : undefined,
    });
    const leaderCommit = lead?.commitIndex;
    const replicas = names.map((n): ReplicaStatus => {
      const s = st.get(n);
      const v = view.verdicts.get(n)!;
      const member = conf?.voters.includes(n) ? 'voter' as const : conf?.learners.includes(n) ? 'learner' as const : undefined;
      const verdict = { serves: v.serves, servesNot: v.servesNot, reachesLeader: v.reachesLeader, reachable: v.reachable, ...(member ? { member } : {}) };
      if (!s) return { name: n, region: n, role: 'down', term: 0, commitIndex: 0, appliedIndex: 0, lag: -1, healthy: false, reason: hosts.isRunning(n) ? 'NOT_RESPONDING' : 'CRASHED', leader: null, ...verdict };
      return {
        name: n, region: n, role: s.role, term: s.term, commitIndex: s.commitIndex, appliedIndex: s.appliedIndex,
        lag: leaderCommit === undefined ? -1 : Math.max(0, leaderCommit - s.appliedIndex), healthy: s.healthy, reason: s.reason, leader: s.leader,
        lastIndex: s.lastIndex, digest: s.digest, stats: s.stats, heardMsAgo: s.heardMsAgo, ...verdict,
      };
    });
    return {
      replicas, faults: active.map((f) => ({ ...f, replicas: [...f.replicas] })), leader: view.leader, electionMs,
      members: conf ? { voters: [...conf.voters], learners: [...conf.learners], committed: conf.committed } : null,
      change: driver.inProgress(),
      standby: [...standby].map(([name, why]) => ({ name, standby: why })),
    };
  };
  const noteFault = (f: FleetFault, by: string): void => {
    const since = new Date().toISOString();
    const add = (replicas: string[], what: string) => active.push({ op: f.op, replicas, what, since, by });
    const drop = (op: FleetFault['op'], replica: string) => { active = active.filter((a) => !(a.op === op && a.replicas[0] === replica)); };
    switch (f.op) {
      case 'partition': add(f.groups.flat(), f.groups.map((g) => `{${g.join(', ')}}`).join(' | ')); break;
      case 'isolate': add([f.replica], `${f.replica} cut off from every replica`); break;
      case 'block': add([f.from, f.to], `${f.from} -> ${f.to} cut (one way)`); break;
      case 'heal': active = active.filter((a) => !['partition', 'isolate', 'block', 'degrade'].includes(a.op)); break;
      case 'crash': drop('crash', f.replica); add([f.replica], `${f.replica} crashed`); break;
      case 'restart': drop('crash', f.replica); break;
      case 'degrade': {
        drop('degrade', f.replica);
        const loss = f.lossRate ?? 0, delay = f.extraDelayMs ?? 0;
        if (loss > 0 || delay > 0) add([f.replica], `${f.replica} slow or lossy: ${Math.round(loss * 100)} % loss, +${delay} ms`);
        break;
      }
      case 'token': {
        drop('token', f.replica);
        const fail = f.failureRate ?? 0, slow = f.latencyRate ?? 0;
        if (fail > 0 || slow > 0) add([f.replica], `${f.replica}'s token fails ${Math.round(fail * 100)} % of calls, stalls ${Math.round(slow * 100)} %`);
        break;
      }
      case 'clock': {
        drop('clock', f.replica);
        const rate = f.rate ?? 1, off = f.offsetMs ?? 0;
        if (rate !== 1 || off !== 0) add([f.replica], `${f.replica}'s clock runs at ${rate}x${off ? `, jumped ${off} ms` : ''}`);
        break;
      }
      case 'snapshotDisk': break;
    }
  };

  const fleet: Fleet = {
    url: '',
    get replicas() { return [...names]; },
    akePublicKeys: () => ({ ...akeKeys }),
    async status(): Promise<ReplicaStatus[]> { return (await report()).replicas; },
    faults: () => active.map((f) => ({ ...f, replicas: [...f.replicas] })),
    async leader() { return leaderOf(await statuses())?.name; },
    partition(groups) {
      for (const g of groups) for (const n of g) known(n);
      links().partition(groups);
    },
    heal() { links().heal(); },
    isolate(name) { known(name); links().isolate(name); },
    blockLink(from, to) { known(from); known(to); links().block(from, to); },
    async crash(name) {
      known(name);
      if (!hosts.isRunning(name)) return;
      await hosts.kill(name);
      emit({ kind: 'crashed', replica: name });
    },
    async restart(name, o = {}) {
      known(name);
      if (hosts.isRunning(name)) throw new FleetError('REPLICA_RUNNING', `replica ${name} is running; crash it first`);
      if (o.disk === 'blank') rmSync(replicaDbDir(state.stateDir, name), { recursive: true, force: true });
      if (o.disk === 'rollback') {
        const copy = diskCopies.get(name);
        if (!copy) throw new FleetError('NO_DISK_COPY', `no snapshotDisk() copy of ${name} to roll back to`);
        const dir = replicaDbDir(state.stateDir, name);
        rmSync(dir, { recursive: true, force: true });
        cpSync(copy, dir, { recursive: true });
      }
      akeKeys = await hosts.start(name);
    },
    async snapshotDisk(name) {
      known(name);
      const dir = join(state.stateDir, 'replicas', name, `disk-copy-${Date.now()}`);
      if (hosts.isRunning(name)) await hosts.copyRunningDisk(name, dir);
      else cpSync(replicaDbDir(state.stateDir, name), dir, { recursive: true });
      // One copy per replica: a newer one replaces (and removes) the older, and close() removes the rest.
      const old = diskCopies.get(name);
      if (old && old !== dir) rmSync(old, { recursive: true, force: true });
      diskCopies.set(name, dir);
      return dir;
    },
    async member(req, by, progress) {
      try {
        if (!hosts.member || !hosts.standby) throw new MemberError('MEMBER_UNSUPPORTED', 'membership changes need the threaded fleet (`bkv fleet up`, transport ports); replica processes cannot be added yet');
        if (closed) throw new MemberError('FLEET_CLOSED', 'the fleet is stopping');
        const r = await driver.run(req, by, (line) => {
          emit({ kind: 'member', by, request: req, step: line });
          progress?.(line);
        });
        emit({ kind: 'member', by, request: req, ok: true });
        return r;
      } catch (e) {
        emit({ kind: 'member', by, request: req, ok: false, code: e instanceof BkvError ? e.code : 'MEMBER_FAILED' });
        throw e;
      }
    },
    async close() {
      if (closed) return;
      closed = true;
      await new Promise<void>((res) => { server.close(() => res()); server.closeAllConnections(); });
      await operator?.close();
      router.close();
      await hosts.close();
      for (const c of diskCopies.values()) rmSync(c, { recursive: true, force: true });
    },
  };

  // Every fault request is logged (FleetEvent 'fault': who, what, done or refused) and, once done,
  // kept in the list of faults in force.
  const handleFault = async (f: FleetFault, by: string): Promise<unknown> => {
    try {
      const answer = await applyFault(f);
      noteFault(f, by);
      emit({ kind: 'fault', by, fault: f, ok: true });
      return answer;
    } catch (e) {
      emit({ kind: 'fault', by, fault: f, ok: false, code: e instanceof BkvError ? e.code : 'FAULT_FAILED' });
      throw e;
    }
  };
  const applyFault = async (f: FleetFault): Promise<unknown> => {
    const str = (v: unknown, what: string): string => {
      if (typeof v !== 'string') throw new InputError(`${what} must be a replica name`, 'BAD_FAULT');
      return v;
    };
    if (f.op === 'partition' && !(Array.isArray(f.groups) && f.groups.every((g) => Array.isArray(g) && g.every((n) => typeof n === 'string')))) {
      throw new InputError('groups must be an array of arrays of replica names', 'BAD_FAULT');
    }
    if (f.op === 'isolate' || f.op === 'crash' || f.op === 'restart' || f.op === 'snapshotDisk') str(f.replica, 'replica');
    if (f.op === 'block') { str(f.from, 'from'); str(f.to, 'to'); }
    if (f.op === 'restart' && f.disk !== undefined && f.disk !== 'keep' && f.disk !== 'rollback' && f.disk !== 'blank') throw new InputError('disk must be keep, rollback or blank', 'BAD_FAULT');
    if (f.op === 'degrade' || f.op === 'token' || f.op === 'clock') known(str(f.replica, 'replica'));
    const rate = (v: unknown, what: string, hi = 1): number => {
      if (v === undefined) return 0;
      if (typeof v !== 'number' || !(v >= 0 && v <= hi)) throw new InputError(`${what} must be a number in [0, ${hi}]`, 'BAD_FAULT');
      return v;
    };
    const control = async (name: string, c: ReplicaControl): Promise<void> => {
      if (!hosts.control) throw new FleetError('FAULT_UNSUPPORTED', 'token and clock faults need replicas this host can reach into (worker threads, or replica processes with faults on)');
      if (!hosts.isRunning(name)) throw new FleetError('REPLICA_DOWN', `replica ${name} is not running`);
      await hosts.control(name, c);
    };
    switch (f.op) {
      case 'partition': fleet.partition(f.groups); return {};
      case 'heal': fleet.heal(); return {};
      case 'isolate': fleet.isolate(f.replica); return {};
      case 'block': fleet.blockLink(f.from, f.to); return {};
      case 'crash': {
        // crash() of a replica that is down is a no-op; the operator is told, not shown a crash.
        const wasRunning = hosts.isRunning(f.replica);
        await fleet.crash(f.replica);
        return wasRunning ? {} : { alreadyDown: true };
      }
      case 'restart': await fleet.restart(f.replica, { disk: f.disk }); return {};
      case 'snapshotDisk': return { path: await fleet.snapshotDisk(f.replica) };
      case 'degrade': links().degrade(f.replica, { lossRate: rate(f.lossRate, 'lossRate'), extraDelayMs: rate(f.extraDelayMs, 'extraDelayMs', 600_000) }); return {};
      case 'token': {
        const ms = f.latencyMs ?? [1, 20];
        if (!Array.isArray(ms) || ms.length !== 2 || !ms.every((x) => typeof x === 'number' && x >= 0 && x <= 10_000) || ms[0]! > ms[1]!) throw new InputError('latencyMs must be [min, max] ms within 0..10000', 'BAD_FAULT');
        await control(f.replica, { t: 'token', failureRate: rate(f.failureRate, 'failureRate'), latencyRate: rate(f.latencyRate, 'latencyRate'), latencyMs: [ms[0]!, ms[1]!] });
        return {};
      }
      case 'clock': {
        const r = f.rate ?? 1;
        if (typeof r !== 'number' || !(r >= 0.1 && r <= 10)) throw new InputError('rate must be a number in [0.1, 10]', 'BAD_FAULT');
        const off = f.offsetMs ?? 0;
        if (typeof off !== 'number' || !Number.isFinite(off) || Math.abs(off) > 86_400_000) throw new InputError('offsetMs must be within a day', 'BAD_FAULT');
        await control(f.replica, { t: 'clock', rate: r, offsetMs: off });
        return {};
      }
      default: throw new InputError('unknown fault op', 'BAD_FAULT');
    }
  };

  const server = createFront((req, res) => {
    void (async () => {
      // As the single vault's: whether the fleet serves (a leader in contact with a quorum), no key needed.
      if (req.url === HEALTH_PATH && req.method === 'GET') {
        const r = await report();
        const serving = r.replicas.filter((x) => x.serves).length;
        return sendBody(res, r.leader ? 200 : 503, 'application/json', JSON.stringify({ healthy: r.leader !== null, leader: r.leader, serving, replicas: r.replicas.length, quorum: Math.floor((r.members?.voters.length || r.replicas.length) / 2) + 1 }));
      }
      if (refuseUnauthorizedRelay(req, res, opts.relayKey)) return;
      if (req.url !== RELAY_PATH || req.method !== 'POST') return sendBody(res, 404, 'application/json', JSON.stringify({ code: 'NOT_FOUND' }));
      const hint = req.headers[REGION_HEADER];
      await serveRelay(req, res, 'vault fleet', async (user, body) => {
        const t0 = performance.now();
        const name = router.pick(body, typeof hint === 'string' ? hint : undefined);
        const o: Outcome = name ? await hosts.request(name, user, body) : { ok: false, code: 'NO_REPLICA' };
        metrics.request(body, o.ok, o.ok ? undefined : o.code, (performance.now() - t0) / 1000);
        return o;
      });
    })().catch(() => sendBody(res, 500, 'application/json', JSON.stringify({ code: 'INTERNAL' })));
  }, relayRefusal, opts.frontLimits);
  try {
    await listenFront(server, opts.port ?? 0);
  } catch (e) {
    router.close();
    await hosts.close();
    throw e;
  }
  fleet.url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  if (opts.operatorKey !== undefined) {
    const scrape = async (): Promise<{ type: string; text: string }> => {
      const st = await statuses();
      for (const [n, s] of st) if (s.metrics) metrics.absorb(n, s.metrics);
      return { type: metrics.contentType, text: await metrics.text() };
    };
    const op = await startOperatorListener({ status: report, metrics: scrape, member: (req: MemberRequest, by: string, progress: (l: string) => void) => fleet.member(req, by, progress), fault: opts.faultEndpoint ? handleFault : undefined, refused: (f, by, code) => emit({ kind: 'fault', by, fault: f, ok: false, code }) }, opts.operatorKey, 0, opts.metricsKey);
    fleet.operatorUrl = op.url;
    operator = op;
  }
  return fleet;
}
