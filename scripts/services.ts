// The vault and ChatD as child processes, the way `bkv serve`, the walkthrough and the end-to-end tests
// run them: each is spawned through bin/run.js, reports readiness on stdout, and is stopped with
// SIGTERM (SIGKILL only if it does not stop in time). The vault's start-up is one function
// (`startVault`) so that swapping the single replica for the Raft fleet touches one place.
//
// Children run in their own process group, so a Ctrl-C in the terminal reaches only the supervisor,
// which then stops ChatD before the vault (no request is cut between the two).
import { spawn, type ChildProcess } from 'node:child_process';
import { chmodSync, existsSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { BkvError } from '../protocol/errors.ts';
import { PINNED_KEYS, type PinnedKeyName } from '../protocol/wire.ts';
import { bearer, hopSecret } from '../protocol/hop-secret.ts';
import { userInfo } from 'node:os';
import { ACTOR_HEADER, FLEET_FAULT_PATH, FLEET_MEMBER_PATH, FLEET_STATUS_PATH, type ActiveFault, type FleetFault, type MemberChangeInProgress, type MemberRequest, type MemberResult, type ReplicaStatus } from '../vault/fleet/fleet-types.ts';

export class ServiceError extends BkvError {}

export interface ExitInfo {
  code: number | null;
  signal: NodeJS.Signals | null;
}

export type LineSink = (who: 'vault' | 'chatd', line: string) => void;

export interface ChildService {
  readonly who: 'vault' | 'chatd';
  readonly pid: number;
  /** Resolves when the process has exited, however that happened. */
  readonly exited: Promise<ExitInfo>;
  readonly running: boolean;
  /** SIGTERM, then SIGKILL after `graceMs` (default 10 s). Idempotent. */
  stop(graceMs?: number): Promise<ExitInfo>;
  /** Sends a signal without waiting (tests: SIGKILL to simulate a crash). */
  kill(signal: NodeJS.Signals): void;
}

export interface VaultService extends ChildService {
  url: string;
  port: number;
  /** The AKE public keys the vault computed from its token: what devices pin. */
  keys: VaultKeys;
}

export interface ChatdService extends ChildService {
  url: string;
  port: number;
}

/** The keys devices pin, hex: each suite's AKE key and the session key (protocol/wire.ts PINNED_KEYS). */
export type VaultKeys = Record<PinnedKeyName, string>;

const RUN_JS = fileURLToPath(new URL('../bin/run.js', import.meta.url));
const VAULT_MAIN = fileURLToPath(new URL('../vault/main.ts', import.meta.url));
const FLEET_MAIN = fileURLToPath(new URL('../vault/fleet/main.ts', import.meta.url));
const CHATD_MAIN = fileURLToPath(new URL('../chatd/main.ts', import.meta.url));

// Every child still running when this process exits is killed: a crashed supervisor or test must not
// leave a vault holding the LMDB directory.
const live = new Set<ChildProcess>();
let exitHookInstalled = false;
function track(child: ChildProcess): void {
  if (!exitHookInstalled) {
    exitHookInstalled = true;
    process.on('exit', () => {
      for (const c of live) {
        try {
          c.kill('SIGKILL');
        } catch {
          // already gone
        }
      }
    });
  }
  live.add(child);
  child.once('exit', () => live.delete(child));
}

interface SpawnSpec<R> {
  who: 'vault' | 'chatd';
  entry: string;
  args: string[];
  env?: NodeJS.ProcessEnv;
  onLine?: LineSink;
  timeoutMs: number;
  /** Aborted (Ctrl-C while starting): the child is stopped and the start rejects with INTERRUPTED. */
  signal?: AbortSignal;
  /** Fed each stdout line until it returns a value: the service is then ready. */
  ready(line: string): R | undefined;
}

async function spawnService<R>(spec: SpawnSpec<R>): Promise<{ service: ChildService; ready: R }> {
  const child = spawn(process.execPath, [RUN_JS, spec.entry, ...spec.args], {
    stdio: ['ignore', 'pipe', 'pipe'],
    detached: true,
    env: { ...process.env, ...spec.env },
  });
  track(child);
  const exited = new Promise<ExitInfo>((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
  const stderrTail: string[] = [];
  createInterface({ input: child.stderr! }).on('line', (line) => {
    stderrTail.push(line);
    if (stderrTail.length > 8) stderrTail.shift();
    spec.onLine?.(spec.who, line);
  });
  let stopping: Promise<ExitInfo> | undefined;
  let done = false;
  void exited.then(() => (done = true));
  const service: ChildService = {
    who: spec.who,
    pid: child.pid ?? -1,
    exited,
    get running() {
      return !done;
    },
    kill(signal) {
      if (!done) child.kill(signal);
    },
    stop(graceMs = 10_000) {
      if (done) return exited;
      stopping ??= (async () => {
        child.kill('SIGTERM');
        const timer = setTimeout(() => child.kill('SIGKILL'), graceMs);
        const info = await exited;
        clearTimeout(timer);
        return info;
      })();
      return stopping;
    },
  };
  const ready = await new Promise<R>((resolve, reject) => {
    let settled = false;
    const fail = (why: string) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      void service.stop(2000);
      // The children's stderr names codes and paths only (they never log secrets): worth showing.
      const tail = stderrTail.filter((l) => l.trim()).slice(-4).join(' | ');
      reject(new ServiceError(`${spec.who.toUpperCase()}_START_FAILED`, `${spec.who === 'vault' ? 'the vault' : 'ChatD'} ${why}${tail ? `: ${tail}` : ''}`));
    };
    const timer = setTimeout(() => fail(`was not ready within ${spec.timeoutMs} ms`), spec.timeoutMs);
    const interrupted = () => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      void service.stop(5000).then(() => reject(new ServiceError('INTERRUPTED', `${spec.who === 'vault' ? 'the vault' : 'ChatD'} was stopped while starting`)));
    };
    if (spec.signal?.aborted) interrupted();
    spec.signal?.addEventListener('abort', interrupted, { once: true });
    void exited.then(() => spec.signal?.removeEventListener('abort', interrupted));
    const out = createInterface({ input: child.stdout! });
    out.on('line', (line) => {
      if (settled) {
        spec.onLine?.(spec.who, line);
        return;
      }
      const r = spec.ready(line);
      if (r !== undefined) {
        settled = true;
        clearTimeout(timer);
        resolve(r);
      }
    });
    void exited.then((e) => fail(`exited (${e.signal ?? `code ${e.code}`}) before it was ready`));
    child.once('error', (e) => fail(`could not be started (${(e as NodeJS.ErrnoException).code ?? 'error'})`));
  });
  return { service, ready };
}

export interface StartVaultOptions {
  stateDir: string;
  /** 0 (default): any free port. A restart passes the old port so ChatD finds it again. */
  port?: number;
  /** Default: the fleet's first replica. */
  replica?: string;
  /** LMDB directory (default: the replica's own under the state directory). */
  db?: string;
  onLine?: LineSink;
  timeoutMs?: number;
  signal?: AbortSignal;
}

/**
 * Starts the vault (today one replica on a solo log: vault/main.ts) and resolves once it listens,
 * with its URL and the AKE public keys it computed from its token. This is the one place to change
 * when the vault becomes a fleet.
 */
export async function startVault(o: StartVaultOptions): Promise<VaultService> {
  const args = ['--state', resolve(o.stateDir), '--port', String(o.port ?? 0)];
  if (o.replica) args.push('--replica', o.replica);
  if (o.db) args.push('--db', resolve(o.db));
  const { service, ready } = await spawnService({
    who: 'vault', entry: VAULT_MAIN, args, onLine: o.onLine, timeoutMs: o.timeoutMs ?? 60_000, signal: o.signal, ready: readyLines(['VAULT_URL']),
  });
  const url = ready.values.VAULT_URL!;
  return Object.assign(service, { url, port: Number(new URL(url).port), keys: ready.keys }) as VaultService;
}

// ---- the fleet: five replicas (worker threads, Raft) in one process -------------------------------

export type WanChoice = 'default' | 'none' | string;

export interface FleetServiceOptions {
  stateDir: string;
  /** Replicas to run, the first N of the provisioned fleet (default: all of them). */
  replicas?: number;
  /** WAN model between data centers: 'default', 'none' or a JSON file (docs/fleet-network.md). */
  wan?: WanChoice;
  /** 'tcp': every replica its own process over TcpTransport (vault/fleet/replica-process.ts); default worker threads. */
  transport?: 'ports' | 'tcp';
  /** The fleet's front port (what ChatD talks to); 0 (default): any free port. */
  port?: number;
  /** Enable fault injection on the operator listener (`bkv fleet up --faults`; the walkthrough). */
  faults?: boolean;
  onLine?: LineSink;
  timeoutMs?: number;
  signal?: AbortSignal;
}

export type { ActiveFault, FleetFault, MemberRequest, MemberResult, ReplicaStatus };

/** Where the fleet's operator listener is and the key it wants (<state>/operator.key). */
export interface OperatorEndpoint {
  url: string;
  key: string;
}

export interface FleetStatus {
  replicas: ReplicaStatus[];
  /** The leader serving the fleet (in contact with a quorum), or null (election, no quorum). */
  leader: string | null;
  /** The operator's faults still in force (partitions, isolation, one-way blocks, slow links, crashes...). */
  faults: ActiveFault[];
  /** The fleet process's CPU time so far (user + system, all threads), ms; null where /proc is absent. */
  cpuMs: number | null;
  pid: number | null;
  /** The leader's configuration (null: no leader; absent: an older fleet that does not report it). */
  members?: { voters: string[]; learners: string[]; committed: boolean } | null;
  /** The membership change in flight (`bkv fleet member`), or null. */
  change?: MemberChangeInProgress | null;
  /** Tokens standing by: spares from the key ceremony, removed replicas (token and disk kept). */
  standby?: { name: string; standby: 'spare' | 'removed' }[];
}

export interface FleetService extends VaultService {
  readonly kind: 'fleet';
  readonly operator: OperatorEndpoint;
  status(): Promise<FleetStatus>;
  fault(f: FleetFault): Promise<unknown>;
}


/**
 * Starts the fleet process (vault/fleet/main.ts: every replica a worker thread on its own token,
 * agreeing by Raft) and resolves once its front listens, with that URL (ChatD's vault URL) and the
 * fleet's AKE public keys, computed from the tokens: the same keys the single vault prints.
 */
export async function startFleetService(o: FleetServiceOptions): Promise<FleetService> {
  const args = ['--state', resolve(o.stateDir), '--port', String(o.port ?? 0)];
  if (o.replicas !== undefined) args.push('--replicas', String(o.replicas));
  if (o.wan !== undefined) args.push('--wan', o.wan === 'default' || o.wan === 'none' ? o.wan : resolve(o.wan));
  if (o.transport !== undefined) args.push('--transport', o.transport);
  if (o.faults) args.push('--faults');
  const { service, ready } = await spawnService({
    who: 'vault', entry: FLEET_MAIN, args, onLine: o.onLine, timeoutMs: o.timeoutMs ?? 120_000, signal: o.signal, ready: readyLines(['FLEET_URL', 'OPERATOR_URL']),
  });
  const pid = service.pid;
  const fleetUrl = ready.values.FLEET_URL!;
  const operator: OperatorEndpoint = { url: ready.values.OPERATOR_URL!, key: hopSecret(resolve(o.stateDir), 'operator') };
  return Object.assign(service, {
    kind: 'fleet' as const,
    url: fleetUrl,
    operator,
    port: Number(new URL(fleetUrl).port),
    keys: ready.keys,
    status: () => fetchFleetStatus(operator, pid),
    fault: (f: FleetFault) => postFleetFault(operator, f),
  }) as FleetService;
}

const akeEnvName = (s: string) => `VAULT_AKE_PUBLIC_KEY_${s.replace(/[^A-Za-z0-9]/g, '_')}`;

/**
 * The ready lines of the vault and the fleet process (KEY=VALUE on stdout): done once every name in
 * `need` and every pinned key (VAULT_AKE_PUBLIC_KEY_<suite>, hex) was seen.
 */
function readyLines(need: readonly string[]): (line: string) => { values: Record<string, string>; keys: VaultKeys } | undefined {
  const values: Record<string, string> = {};
  const keys: Partial<VaultKeys> = {};
  return (line) => {
    const eq = line.indexOf('=');
    if (eq < 0) return undefined;
    const name = line.slice(0, eq);
    const value = line.slice(eq + 1).trim();
    if (need.includes(name)) values[name] = value;
    for (const s of PINNED_KEYS) if (name === akeEnvName(s) && /^[0-9a-f]+$/.test(value)) keys[s] = value;
    if (need.every((n) => values[n]) && PINNED_KEYS.every((s) => keys[s])) return { values, keys: keys as VaultKeys };
    return undefined;
  };
}

/** No fleet answers at that URL (not running, or something else listens there). */
export class FleetUnreachableError extends ServiceError {
  constructor(message: string) {
    super('FLEET_UNREACHABLE', message);
  }
}

async function fleetRequest(op: OperatorEndpoint, path: string, init: { method: 'GET' | 'POST'; body?: unknown }, timeoutMs = 5000): Promise<unknown> {
  const base = op.url;
  let res: Response;
  try {
    res = await fetch(new URL(path, base), {
      method: init.method,
      headers: { authorization: bearer(op.key), [ACTOR_HEADER]: actorName(), ...(init.body === undefined ? {} : { 'content-type': 'application/json' }) },
      body: init.body === undefined ? undefined : JSON.stringify(init.body),
      signal: AbortSignal.timeout(timeoutMs),
    });
  } catch (e) {
    const cause = ((e as { cause?: { code?: unknown } }).cause?.code as string | undefined) ?? '';
    const why = (e as Error).name === 'TimeoutError' ? `did not answer within ${timeoutMs} ms` : `cannot be reached${/^[A-Z_]+$/.test(cause) ? ` (${cause})` : ''}`;
    throw new FleetUnreachableError(`the fleet at ${base} ${why}`);
  }
  const text = await res.text();
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    throw new ServiceError('FLEET_BAD_REPLY', `the fleet at ${base} answered ${path} with HTTP ${res.status} and no JSON (is it a bkv fleet?)`);
  }
  if (!res.ok) {
    const j = json as { code?: unknown; message?: unknown; error?: unknown };
    const code = typeof j.code === 'string' ? j.code : `HTTP_${res.status}`;
    const msg = typeof j.message === 'string' ? j.message : typeof j.error === 'string' ? j.error : `HTTP ${res.status}`;
    throw new ServiceError(code, `the fleet refused ${init.method} ${path}: ${msg}`);
  }
  return json;
}


/** How this process names itself to the fleet's audit trail: the OS user, the pid, the bkv command. */
export function actorName(): string {
  let user = 'unknown';
  try {
    user = userInfo().username;
  } catch {
    // no passwd entry (a container's uid): the pid still tells
  }
  const cmd = process.argv.slice(2).filter((a) => /^[a-z][a-z-]*$/.test(a)).slice(0, 3).join(' ');
  return `${user} pid ${process.pid}${cmd ? ` (bkv ${cmd})` : ''}`;
}

/** Reads the fleet's status; `pid` (the fleet process) adds its CPU time from /proc. */
export async function fetchFleetStatus(op: OperatorEndpoint, pid?: number): Promise<FleetStatus> {
  const raw = await fleetRequest(op, FLEET_STATUS_PATH, { method: 'GET' });
  return parseFleetStatus(raw, pid);
}

const ROLES = new Set(['leader', 'follower', 'candidate', 'preCandidate', 'rejoining', 'down']);

/** Validates the fleet's status reply (a list of replicas, or `{ replicas }`): a typed error, never a guess. */
/** A replica's counters, numbers and flags only (anything else in them is dropped). */
function statsOf(v: unknown): Record<string, number | boolean> | undefined {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) return undefined;
  const out: Record<string, number | boolean> = {};
  for (const [k, x] of Object.entries(v)) if (typeof x === 'number' || typeof x === 'boolean') out[k] = x;
  return out;
}

export function parseFleetStatus(raw: unknown, pid?: number): FleetStatus {
  const obj = (Array.isArray(raw) ? { replicas: raw } : raw) as Record<string, unknown> | null;
  const list = obj?.replicas;
  const bad = (why: string) => new ServiceError('FLEET_BAD_REPLY', `the fleet status is malformed: ${why}`);
  if (!Array.isArray(list)) throw bad('no replica list');
  const replicas = list.map((r: Record<string, unknown>, i): ReplicaStatus => {
    if (typeof r !== 'object' || r === null || typeof r.name !== 'string') throw bad(`replica ${i} has no name`);
    if (typeof r.role !== 'string' || !ROLES.has(r.role)) throw bad(`replica ${r.name} has an unknown role`);
    for (const k of ['term', 'commitIndex', 'appliedIndex', 'lag'] as const) if (typeof r[k] !== 'number') throw bad(`replica ${r.name} has no ${k}`);
    return {
      name: r.name,
      region: typeof r.region === 'string' ? r.region : r.name,
      role: r.role as ReplicaStatus['role'],
      term: r.term as number,
      commitIndex: r.commitIndex as number,
      appliedIndex: r.appliedIndex as number,
      lag: r.lag as number,
      healthy: r.healthy === true,
      reason: typeof r.reason === 'string' ? r.reason : '',
      leader: typeof r.leader === 'string' && r.leader ? r.leader : null,
      ...(statsOf(r.stats) ? { stats: statsOf(r.stats) } : {}),
      ...(statsOf(r.heardMsAgo) ? { heardMsAgo: statsOf(r.heardMsAgo) as Record<string, number> } : {}),
      ...(typeof r.serves === 'boolean' ? { serves: r.serves, servesNot: typeof r.servesNot === 'string' ? r.servesNot : '' } : {}),
      ...(r.reachesLeader === null || typeof r.reachesLeader === 'boolean' ? { reachesLeader: r.reachesLeader } : {}),
      ...(r.reachable === null || typeof r.reachable === 'number' ? { reachable: r.reachable } : {}),
      ...(r.member === 'voter' || r.member === 'learner' ? { member: r.member } : {}),
    };
  });
  const faults = Array.isArray(obj?.faults) ? (obj.faults as unknown[]).map((f, i): ActiveFault => {
    const x = f as Record<string, unknown> | null;
    if (typeof x !== 'object' || x === null || typeof x.op !== 'string' || typeof x.what !== 'string') throw bad(`fault ${i} has no op or description`);
    return {
      op: x.op as ActiveFault['op'], what: x.what, since: typeof x.since === 'string' ? x.since : '', by: typeof x.by === 'string' ? x.by : '',
      replicas: Array.isArray(x.replicas) ? x.replicas.filter((n): n is string => typeof n === 'string') : [],
    };
  }) : [];
  let leader: string | null;
  if (obj && 'leader' in obj && !Array.isArray(raw)) {
    if (obj.leader !== null && !(typeof obj.leader === 'string' && replicas.some((r) => r.name === obj.leader))) throw bad('the leader is not one of the replicas');
    leader = obj.leader as string | null;
  } else {
    // An older fleet's bare list: two replicas may both say they lead (an old one not yet stepped down), the higher term wins.
    leader = replicas.filter((r) => r.role === 'leader' && r.healthy).sort((a, b) => b.term - a.term)[0]?.name ?? null;
  }
  const fleetPid = typeof obj?.pid === 'number' ? obj.pid : pid ?? null;
  const names = (v: unknown): string[] => (Array.isArray(v) ? v.filter((n): n is string => typeof n === 'string') : []);
  const m = obj?.members as Record<string, unknown> | null | undefined;
  const c = obj?.change as Record<string, unknown> | null | undefined;
  const membership = {
    ...(m === null ? { members: null } : typeof m === 'object' ? { members: { voters: names(m.voters), learners: names(m.learners), committed: m.committed !== false } } : {}),
    ...(c === null ? { change: null } : typeof c === 'object' && typeof c.op === 'string' ? {
      change: { op: c.op as MemberChangeInProgress['op'], replicas: names(c.replicas), step: typeof c.step === 'string' ? c.step : '', since: typeof c.since === 'string' ? c.since : '', by: typeof c.by === 'string' ? c.by : '' },
    } : {}),
    ...(Array.isArray(obj?.standby) ? {
      standby: (obj.standby as Record<string, unknown>[]).filter((x) => typeof x?.name === 'string' && (x.standby === 'spare' || x.standby === 'removed'))
        .map((x) => ({ name: x.name as string, standby: x.standby as 'spare' | 'removed' })),
    } : {}),
  };
  return { replicas, leader, faults, cpuMs: fleetPid === null ? null : processCpuMs(fleetPid), pid: fleetPid, ...membership };
}

/**
 * POST /v1/fleet/member: the change's steps come as NDJSON lines while it runs (each handed to
 * `progress`); resolves with the result, or throws the fleet's typed refusal or failure.
 */
export async function postFleetMember(op: OperatorEndpoint, req: MemberRequest, progress: (line: string) => void, timeoutMs = 15 * 60_000): Promise<MemberResult> {
  let res: Response;
  try {
    res = await fetch(new URL(FLEET_MEMBER_PATH, op.url), {
      method: 'POST',
      headers: { authorization: bearer(op.key), [ACTOR_HEADER]: actorName(), 'content-type': 'application/json' },
      body: JSON.stringify(req),
      signal: AbortSignal.timeout(timeoutMs),
    });
  } catch (e) {
    const cause = ((e as { cause?: { code?: unknown } }).cause?.code as string | undefined) ?? '';
    throw new FleetUnreachableError(`the fleet at ${op.url} ${/^[A-Z_]+$/.test(cause) ? `cannot be reached (${cause})` : 'cannot be reached'}`);
  }
  if (!res.ok) {
    let j: { code?: unknown; message?: unknown } = {};
    try { j = JSON.parse(await res.text()) as typeof j; } catch { /* the status alone then */ }
    throw new ServiceError(typeof j.code === 'string' ? j.code : `HTTP_${res.status}`, typeof j.message === 'string' ? j.message : `the fleet refused the membership change (HTTP ${res.status})`);
  }
  const bad = () => new ServiceError('FLEET_BAD_REPLY', `the fleet at ${op.url} answered ${FLEET_MEMBER_PATH} with lines that are not its NDJSON`);
  let buf = '';
  const dec = new TextDecoder();
  for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
    buf += dec.decode(chunk, { stream: true });
    let nl: number;
    while ((nl = buf.indexOf('\n')) >= 0) {
      const text = buf.slice(0, nl);
      buf = buf.slice(nl + 1);
      let o: Record<string, unknown>;
      try { o = JSON.parse(text) as Record<string, unknown>; } catch { throw bad(); }
      if (typeof o.progress === 'string') progress(o.progress);
      else if (o.ok === true) {
        const { ok: _ok, ...rest } = o;
        return rest as unknown as MemberResult;
      } else if (typeof o.error === 'object' && o.error !== null) {
        const er = o.error as { code?: unknown; message?: unknown };
        throw new ServiceError(typeof er.code === 'string' ? er.code : 'MEMBER_FAILED', typeof er.message === 'string' ? er.message : 'the membership change failed');
      } else throw bad();
    }
  }
  throw new ServiceError('MEMBER_OUTCOME_UNKNOWN', `the fleet at ${op.url} closed the connection before the membership change ended; \`bkv fleet status\` shows where it stands`);
}

export async function postFleetFault(op: OperatorEndpoint, f: FleetFault): Promise<unknown> {
  return fleetRequest(op, FLEET_FAULT_PATH, { method: 'POST', body: f }, 30_000);
}

/**
 * CPU time (user + system, all threads, ms) a process has used so far, from /proc/PID/stat; null
 * where there is no /proc (not Linux) or the process is gone. Resolution is one clock tick (10 ms).
 */
export function processCpuMs(pid: number): number | null {
  let text: string;
  try {
    text = readFileSync(`/proc/${pid}/stat`, 'utf8');
  } catch {
    return null;
  }
  // The command name (field 2) may hold spaces and parentheses: split after its closing one.
  const rest = text.slice(text.lastIndexOf(')') + 2).split(' ');
  const utime = Number(rest[11]);
  const stime = Number(rest[12]);
  if (!Number.isFinite(utime) || !Number.isFinite(stime)) return null;
  return ((utime + stime) * 1000) / CLOCK_TICKS;
}

// sysconf(_SC_CLK_TCK): 100 on every Linux this runs on (USER_HZ is fixed at 100 in the kernel ABI).
const CLOCK_TICKS = 100;

export interface StartChatdOptions {
  stateDir: string;
  vaultUrl: string;
  /** 0 (default): any free port. */
  port?: number;
  /** Extra chatd/main.ts flags (e.g. --account-burst 1000 for load tests). */
  extraArgs?: string[];
  onLine?: LineSink;
  timeoutMs?: number;
  signal?: AbortSignal;
}

export async function startChatdService(o: StartChatdOptions): Promise<ChatdService> {
  const args = ['--vault-url', o.vaultUrl, '--state', resolve(o.stateDir), '--port', String(o.port ?? 0), ...(o.extraArgs ?? [])];
  const { service, ready } = await spawnService({
    who: 'chatd',
    entry: CHATD_MAIN,
    args,
    onLine: o.onLine,
    timeoutMs: o.timeoutMs ?? 60_000,
    signal: o.signal,
    ready: (line) => (/^http:\/\/[^\s]+$/.test(line.trim()) ? line.trim() : undefined),
  });
  return Object.assign(service, { url: ready, port: Number(new URL(ready).port) }) as ChatdService;
}

export interface Services {
  /** The single vault, or the fleet (then `fleet` is set too). */
  vault: VaultService;
  fleet?: FleetService;
  chatd: ChatdService;
  /** Resolves with whichever child exits first (expectedly or not). */
  firstExit: Promise<{ who: 'vault' | 'chatd' } & ExitInfo>;
  /** ChatD first (it drains requests already at the vault), then the vault. */
  stop(): Promise<{ vault: ExitInfo; chatd: ExitInfo }>;
}

export interface StartServicesOptions {
  stateDir: string;
  /** Run the Raft fleet (vault/fleet/main.ts) instead of the single vault. */
  fleet?: { replicas?: number; wan?: WanChoice; transport?: 'ports' | 'tcp'; faults?: boolean };
  chatdPort?: number;
  vaultPort?: number;
  chatdArgs?: string[];
  onLine?: LineSink;
  /** Ctrl-C while starting: whatever started is stopped and the start rejects with INTERRUPTED. */
  signal?: AbortSignal;
}

/** The vault (or the fleet), then ChatD pointed at it. If ChatD fails to start, the vault is stopped again. */
export async function startServices(o: StartServicesOptions): Promise<Services> {
  const fleet = o.fleet ? await startFleetService({ stateDir: o.stateDir, port: o.vaultPort, onLine: o.onLine, replicas: o.fleet.replicas, wan: o.fleet.wan, transport: o.fleet.transport, faults: o.fleet.faults, signal: o.signal }) : undefined;
  const vault: VaultService = fleet ?? (await startVault({ stateDir: o.stateDir, port: o.vaultPort, onLine: o.onLine, signal: o.signal }));
  let chatd: ChatdService;
  try {
    chatd = await startChatdService({ stateDir: o.stateDir, vaultUrl: vault.url, port: o.chatdPort, extraArgs: o.chatdArgs, onLine: o.onLine, signal: o.signal });
  } catch (e) {
    await vault.stop();
    throw e;
  }
  return {
    vault,
    ...(fleet ? { fleet } : {}),
    chatd,
    firstExit: Promise.race([vault.exited.then((e) => ({ who: 'vault' as const, ...e })), chatd.exited.then((e) => ({ who: 'chatd' as const, ...e }))]),
    async stop() {
      const c = await chatd.stop();
      const v = await vault.stop();
      return { vault: v, chatd: c };
    },
  };
}

// ---- what a running `bkv serve` leaves in the state directory for devices ----------------------

export interface ServeRecord {
  version: 1;
  pid: number;
  chatdUrl: string;
  vaultUrl: string;
  /** The fleet's operator listener (status, faults), when mode is 'fleet'. */
  operatorUrl?: string;
  /** 'fleet' when `bkv fleet up` runs the Raft fleet behind ChatD (vaultUrl is then the fleet's front). */
  mode?: 'vault' | 'fleet';
  /** Fleet mode: replicas, WAN model. */
  replicas?: string[];
  wan?: string;
  /** The children, so a later serve can tell when a crashed supervisor left them running. */
  vaultPid?: number;
  chatdPid?: number;
  startedAt: string;
}

export interface VaultKeysFile {
  version: 1;
  /** How the keys were obtained: computed by the vault from its token at `bkv serve` time. */
  source: string;
  writtenAt: string;
  keys: VaultKeys;
}

export const servePaths = (stateDir: string) => ({
  serve: join(resolve(stateDir), 'serve.json'),
  vaultKeys: join(resolve(stateDir), 'vault-keys.json'),
});

function writeJsonAtomic(path: string, value: unknown, mode: number): void {
  const tmp = `${path}.tmp-${process.pid}`;
  writeFileSync(tmp, JSON.stringify(value, null, 2) + '\n', { mode });
  // The mode of a new file is cut by the umask; set it exactly.
  chmodSync(tmp, mode);
  renameSync(tmp, path);
}

function readJson(path: string, what: string): unknown {
  try {
    return JSON.parse(readFileSync(path, 'utf8'));
  } catch {
    throw new ServiceError('STATE_CORRUPT', `${what} ${path} is not valid JSON`);
  }
}

export function writeServeRecord(stateDir: string, r: ServeRecord): void {
  writeJsonAtomic(servePaths(stateDir).serve, r, 0o600);
}

/** The record of a running `bkv serve`, or undefined when none was written (or its process is gone). */
export function readServeRecord(stateDir: string): ServeRecord | undefined {
  const path = servePaths(stateDir).serve;
  if (!existsSync(path)) return undefined;
  const r = readJson(path, 'serve record') as ServeRecord;
  if (r?.version !== 1 || typeof r.chatdUrl !== 'string' || !Number.isInteger(r.pid)) {
    throw new ServiceError('STATE_CORRUPT', `serve record ${path} has an unknown format`);
  }
  return pidAlive(r.pid) ? r : undefined;
}

/**
 * A vault a crashed supervisor left running on this state directory (its children are detached), or
 * undefined. Two vaults on one disk would fork its log, so `bkv serve` refuses to start beside one.
 */
export function orphanedVault(stateDir: string): number | undefined {
  const path = servePaths(stateDir).serve;
  if (!existsSync(path)) return undefined;
  const r = readJson(path, 'serve record') as ServeRecord;
  if (pidAlive(r.pid)) return undefined;
  return r.vaultPid !== undefined && Number.isInteger(r.vaultPid) && pidAlive(r.vaultPid) ? r.vaultPid : undefined;
}

/** Removes serve.json if it is ours (a newer serve may have replaced it). */
export function clearServeRecord(stateDir: string, pid = process.pid): void {
  const path = servePaths(stateDir).serve;
  try {
    const r = JSON.parse(readFileSync(path, 'utf8')) as ServeRecord;
    if (r.pid === pid) rmSync(path, { force: true });
  } catch {
    // nothing (readable) there
  }
}

export function writeVaultKeys(stateDir: string, keys: VaultKeys): void {
  const f: VaultKeysFile = { version: 1, source: 'computed by the vault from its token (bkv serve)', writtenAt: new Date().toISOString(), keys };
  writeJsonAtomic(servePaths(stateDir).vaultKeys, f, 0o600);
}

/**
 * Records the keys devices pin; returns true when they differ from the ones pinned before (a new
 * fleet: records registered with the old one are gone), so the caller can say so loudly.
 */
export function pinVaultKeys(stateDir: string, keys: VaultKeys): boolean {
  let before: VaultKeys | undefined;
  if (existsSync(servePaths(stateDir).vaultKeys)) {
    try {
      before = readVaultKeys(stateDir);
    } catch {
      before = undefined;
    }
  }
  writeVaultKeys(stateDir, keys);
  return before !== undefined && JSON.stringify(before) !== JSON.stringify(keys);
}

/** The pinned vault AKE keys devices use; a clear error when `bkv serve` never ran on this state. */
export function readVaultKeys(stateDir: string): VaultKeys {
  const path = servePaths(stateDir).vaultKeys;
  if (!existsSync(path)) {
    throw new ServiceError('VAULT_KEY_UNKNOWN', `no pinned vault key in ${path}: run \`bkv fleet up --state ${stateDir}\` (or \`bkv serve\`: one replica) once; it records the vault's public keys there`);
  }
  const f = readJson(path, 'vault key file') as VaultKeysFile;
  const ok = f?.version === 1 && PINNED_KEYS.every((s) => typeof f.keys?.[s] === 'string' && /^[0-9a-f]{64,}$/.test(f.keys[s]));
  if (!ok) throw new ServiceError('STATE_CORRUPT', `vault key file ${path} has an unknown format`);
  return f.keys;
}

export function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}
