// `bkv chaos live`: the real fleet (real tokens, real LMDB, real ChatD, real sockets) under a seeded
// nemesis, with honest owners and attackers as devices, and a Jepsen-style history of what every
// device saw. The history is judged afterwards (live-check.ts): a recovery is two operations, the
// attempt (RecoverStart until its KE2) and the outcome (RecoverFinish until K, a wrong password or a
// lock), because the vault commits each separately; an operation whose outcome is unknown is `info`
// and may have taken effect (an attempt then counts as used).
//
// Nothing secret reaches the history: passwords are small numbers (their index), K a small id, a
// session a local counter. Passwords and K stay in this process's memory for the malicious-ChatD
// check (what ChatD saw must hold no window of them).
import { createHash } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { AccountStore } from '../../chatd/accounts.ts';
import { generateBackupKey } from '../../client/key64.ts';
import { PasswordError, disable, enablePassword, recoverK, status, type PasswordOptions, type Send } from '../../client/password.ts';
import { ChatdClient, ChatdRateLimitError, ChatdTimeoutError, VaultUnavailableError } from '../../client/transport.ts';
import { finalizeModule } from '../../hsm-adapter/module.ts';
import { hopSecret } from '../../protocol/hop-secret.ts';
import { identityKsf } from '../../protocol/opaque/index.ts';
import type { VaultReply } from '../../protocol/wire.ts';
import { provision } from '../../softhsm/provision.ts';
import { SeededRng } from '../../vault/consensus/index.ts';
import type { Mutation } from '../../vault/replica/core.ts';
import { DEFAULT_SUITE } from '../commands/backup-password.ts';
import { startChatdService, startFleetService, writeVaultKeys, type ChatdService, type FleetFault, type FleetService, type FleetStatus } from '../services.ts';
import { MaliciousChatd, containsWindow, flip, type Hooks } from './malicious-chatd.ts';
import type { RecordInput, RecordOutput } from './record-model.ts';

export type LiveTransport = 'thread' | 'process' | 'tcp';

export interface LiveOptions {
  /** Wall-clock length of the run, faults and healing included. */
  minutes: number;
  seed: number;
  /** thread: replicas are worker threads (MessagePorts, the WAN model); process / tcp: one OS process each over TCP on loopback. */
  transport: LiveTransport;
  wan: 'default' | 'none' | string;
  replicas: number;
  /** Users an owner recovers (and attackers guess); plus as many attack-only users, whom only attackers touch. */
  users: number;
  attackersPerUser: number;
  limit: number;
  /** A seeded bug for the mutation check (BKV_TEST_MUTATION in the replicas): the run should then fail. */
  mutation?: Mutation;
  /** Devices talk through a malicious ChatD (it flips, replays, duplicates, swaps users and drops). */
  maliciousChatd: boolean;
  /** Seconds at the end with no faults, for the fleet to heal; default 15 s or a fifth of the run. */
  healSeconds?: number;
  /** Convergence bound after the faults stop. */
  convergeSeconds?: number;
  onProgress?(p: LiveProgress): void;
  /** Lines for --verbose (faults as they happen). */
  log?(line: string): void;
}

export interface LiveProgress { elapsedMs: number; totalMs: number; ops: number; faults: number; phase: 'faults' | 'healing' | 'checking' }

/** One operation as a device saw it (Jepsen: invoke, then ok / fail / info). */
export interface LiveOp {
  id: number;
  /** user1..userN, as in the report (the ChatD account is a phone number). */
  user: string;
  /** The device: owner-3, attacker-3.1 */
  process: string;
  input: RecordInput;
  /** ok: the output is what the vault said; fail: certainly no effect; info: unknown (may have taken effect). */
  type: 'ok' | 'fail' | 'info';
  output?: RecordOutput;
  /** Error code for fail / info. */
  error?: string;
  call: number;
  ret: number | null;
  /** When the device stopped waiting on an info operation (for the picture; the check treats it as never completed). */
  gaveUp?: number;
}

export interface LiveSettings {
  seed: number;
  transport: LiveTransport;
  wan: string;
  replicas: number;
  users: number;
  attackOnlyUsers: number;
  attackersPerUser: number;
  limit: number;
  minutes: number;
  healSeconds: number;
  mutation: string | null;
  maliciousChatd: boolean;
  /** The nemesis menu this transport allows. */
  faults: string[];
}

export interface LiveRun {
  settings: LiveSettings;
  ops: LiveOp[];
  /** Fault lines (`crash r2`, `partition r1 r2 | r3 r4 r5`, `heal`, ...) at ms since the start. */
  notes: { at: number; line: string }[];
  roles: { at: number; id: string; role: string; term: number }[];
  users: { name: string; attackOnly: boolean }[];
  healedAt: number;
  /** When, after healedAt, every replica was healthy on one applied index and digest (null: never). */
  convergedAt: number | null;
  /** The first operation after healedAt that completed ok. */
  firstOkAfterHeal: number | null;
  end: number;
  /** Released K per user that was never registered for that user (a K from elsewhere). */
  foreignK: { user: string; opId: number }[];
  /** Malicious ChatD only: frames ChatD saw holding a 16-byte window of a password or K. */
  leaks: number;
  /** What the malicious ChatD did. */
  tampering: Record<string, number>;
  finalStatus: FleetStatus | null;
  durationMs: number;
  /** The fleet process's and ChatD's stderr lines, each prefixed with ms since the start. */
  serviceLog: string[];
}

const THREAD_FAULTS = ['crash', 'crash-leader', 'kill-fleet', 'restart', 'rollback', 'blank', 'partition', 'bridge', 'ring', 'isolate', 'one-way', 'slow', 'lossy', 'token', 'clock'];
const PROCESS_FAULTS = ['crash', 'crash-leader', 'kill-fleet', 'restart', 'rollback', 'blank', 'token', 'clock'];

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Runs one live campaign; resolves with its history (judge it with checkLiveRun). */
export async function runLive(o: LiveOptions): Promise<LiveRun> {
  const began = Date.now();
  // The run's clock starts once the fleet serves and the accounts exist (setup is not fault time).
  let started = Date.now();
  const totalMs = Math.round(o.minutes * 60_000);
  const healMs = Math.round((o.healSeconds ?? Math.min(60, Math.max(15, o.minutes * 12))) * 1000);
  const faultUntil = Math.max(5_000, totalMs - healMs);
  const rng = new SeededRng(o.seed);
  const nemesisRng = rng.fork();
  const workRng = rng.fork();
  const chatdRng = rng.fork();
  const transport = o.transport === 'thread' ? 'ports' : 'tcp';
  const menu = o.transport === 'thread' ? THREAD_FAULTS : PROCESS_FAULTS;
  const wan = o.transport === 'thread' ? o.wan : 'none';
  const settings: LiveSettings = {
    seed: o.seed, transport: o.transport, wan, replicas: o.replicas, users: o.users, attackOnlyUsers: o.users, attackersPerUser: o.attackersPerUser,
    limit: o.limit, minutes: o.minutes, healSeconds: healMs / 1000, mutation: o.mutation ?? null, maliciousChatd: o.maliciousChatd, faults: menu,
  };
  const say = o.log ?? (() => undefined);
  const now = () => Date.now() - started;
  const dir = mkdtempSync(join(tmpdir(), 'bkv-chaos-live-'));
  const stateDir = join(dir, 'state');
  const notes: LiveRun['notes'] = [];
  const note = (line: string) => { notes.push({ at: now(), line }); say(`${(now() / 1000).toFixed(1)} s: ${line}`); };
  const ops: LiveOp[] = [];
  const roles: LiveRun['roles'] = [];
  // What the fleet process and ChatD wrote to stderr (they log no secrets); DIR/services.log.
  const serviceLog: string[] = [];
  let fleet: FleetService | undefined;
  let chatd: ChatdService | undefined;
  let evil: MaliciousChatd | undefined;
  const clients: ChatdClient[] = [];
  const prevMutation = process.env.BKV_TEST_MUTATION;
  let expectExit = false;
  try {
    await provision({ stateDir, replicas: o.replicas });
    finalizeModule(); // the fleet process opens the tokens; this one lets go of the module
    if (o.mutation) process.env.BKV_TEST_MUTATION = o.mutation;
    const startFleet = async (port?: number) => {
      const f = await startFleetService({ stateDir, wan, transport, faults: true, port, onLine: (who, line) => serviceLog.push(`${now()} ${who} | ${line}`) });
      // A fleet that dies on its own is a finding, not a fault of the nemesis: say so where it happened.
      void f.exited.then((e) => { if (!expectExit && fleet === f) note(`fleet process died (${e.signal ?? `exit ${e.code}`}): see its log`); });
      return f;
    };
    fleet = await startFleet();
    const fleetPort = fleet.port;
    writeVaultKeys(stateDir, fleet.keys);
    chatd = await startChatdService({ stateDir, vaultUrl: fleet.url, extraArgs: ['--account-burst', '1000000', '--account-rate', '1000000'], onLine: (who, line) => serviceLog.push(`${now()} ${who} | ${line}`) });
    const names = (await waitFleet(fleet, 60_000, (s) => !!s.leader)).replicas.map((r) => r.name);
    const keys = fleet.keys;
    started = Date.now();
    if (o.maliciousChatd) evil = new MaliciousChatd(fleet.url, hopSecret(stateDir, 'relay'));

    // ---- the devices
    const store = new AccountStore(stateDir);
    const users: { name: string; phone: string; token: string; attackOnly: boolean }[] = [];
    for (let i = 1; i <= o.users * 2; i++) {
      const phone = `+1555${String(7000000 + i)}`;
      users.push({ name: `user${i}`, phone, token: (await store.create(phone)).token, attackOnly: i > o.users });
    }
    const secrets: Uint8Array[] = [];
    const kIds = new Map<string, number>();
    const registeredK = new Map<string, Set<string>>();
    const foreignK: LiveRun['foreignK'] = [];
    const fp = (k: Uint8Array) => createHash('sha256').update(k).digest('hex');
    const tampering: Record<string, number> = {};
    // Each device request draws what the malicious ChatD does to it.
    const evilHooks = (user: string, onDuplicate: () => void) => (): Hooks => {
      const roll = chatdRng.float();
      const act = roll < 0.06 ? 'flip-up' : roll < 0.1 ? 'flip-down' : roll < 0.16 ? 'duplicate' : roll < 0.19 ? 'swap-user' : roll < 0.21 ? 'drop' : roll < 0.27 ? 'delay' : 'honest';
      tampering[act] = (tampering[act] ?? 0) + 1;
      const other = users[chatdRng.int(users.length)]!.phone;
      const at = chatdRng.int(1 << 20);
      const wait = chatdRng.int(800);
      return {
        up: async (b) => {
          if (act === 'flip-up') return { forward: flip(b, 7 + (at % Math.max(1, b.length - 8))) };
          if (act === 'swap-user') return { forward: b, as: other };
          if (act === 'drop') return { drop: true };
          if (act === 'delay') await sleep(wait);
          if (act === 'duplicate') { onDuplicate(); void evil!.forward(user, b).catch(() => undefined); }
          return { forward: b };
        },
        down: (b) => (act === 'flip-down' ? flip(b, at % b.length) : b),
      };
    };
    const sends = new Map<string, Send>();
    /** Each device's operation in flight. */
    const current = new Map<string, LiveOp>();
    // A copy of a request is a request of its own whose answer nobody reads: Jepsen's info. Only an
    // attempt's copy could change the record (a second charge, were copies not free); the others are
    // refused or answered as the original.
    const duplicated = (u: (typeof users)[number], proc: string, why: 'COPY_UNREAD' | 'RESENT' = 'COPY_UNREAD') => {
      const cur = current.get(proc);
      if (cur?.input.f === 'attempt' && cur.ret === null && cur.gaveUp === undefined) {
        const copy = begin(u, proc, { f: 'attempt' });
        current.set(proc, cur);
        end(copy, 'info', undefined, why);
      }
    };
    /** One device: its own ChatD connection (or the malicious ChatD's hop), kept for its operations. */
    const sendOf = (u: (typeof users)[number], proc: string): Send => {
      let send = sends.get(proc);
      if (send) return send;
      if (o.maliciousChatd) {
        const pick = evilHooks(u.phone, () => duplicated(u, proc));
        send = (b) => evil!.deviceSend(u.phone, pick)(b);
      } else {
        // Devices in every data center: each enters the fleet at its own region's replica.
        const c = new ChatdClient({ url: chatd!.url, token: u.token, timeoutMs: 20_000, region: names[(users.indexOf(u) + sends.size) % names.length] });
        clients.push(c);
        const plain: Send = (b) => c.request(b);
        // A device that resends: sometimes the same frame twice at once (a copy that may be charged).
        send = async (b) => {
          if (workRng.float() < 0.05) { duplicated(u, proc); void plain(b).catch(() => undefined); }
          return plain(b);
        };
      }
      // A device that retries (PasswordOptions.retry) sends the very same frame again. While the
      // session lives at one leader that copy is free, but a copy that reaches a new leader is a KE1
      // it never saw and is charged again (docs/session.md): each resend of an attempt is an info
      // copy, a charge that may have landed.
      const inner = send;
      let last: Uint8Array | undefined;
      send = (b) => {
        if (last && Buffer.compare(last, b) === 0) duplicated(u, proc, 'RESENT');
        last = b;
        return inner(b);
      };
      sends.set(proc, send);
      return send;
    };
    const device = (u: (typeof users)[number], proc: string, onReply?: (r: VaultReply) => void): { send: Send; opts: PasswordOptions } => ({
      send: sendOf(u, proc),
      opts: {
        user: u.phone, serverPublicKey: new Uint8Array(Buffer.from(keys[DEFAULT_SUITE], 'hex')), sessionKey: new Uint8Array(Buffer.from(keys.session, 'hex')),
        suite: DEFAULT_SUITE, ksf: identityKsf, onReply,
        // An election or a partition elsewhere: the same frame again, as PasswordDevice does.
        retry: { attempts: 3, delayMs: 200, retryable: (e) => e instanceof VaultUnavailableError || e instanceof ChatdRateLimitError || (e instanceof ChatdTimeoutError && e.status === 504) },
      },
    });
    let nextOp = 1;
    let nextSession = 1;
    let stopWork = false;
    const begin = (u: (typeof users)[number], proc: string, input: RecordInput): LiveOp => {
      const op: LiveOp = { id: nextOp++, user: u.name, process: proc, input, type: 'info', call: now(), ret: null };
      ops.push(op);
      current.set(proc, op);
      return op;
    };
    const end = (op: LiveOp, type: LiveOp['type'], output?: RecordOutput, error?: string) => {
      op.type = type;
      op.ret = type === 'info' ? null : now();
      if (type === 'info') op.gaveUp = now();
      if (output) op.output = output;
      if (error) op.error = error;
    };
    const codeOf = (e: unknown): string => {
      if (e instanceof PasswordError) return e.code === 'VAULT_ERROR' ? `VAULT_${(e as { vaultCode?: string }).vaultCode ?? 'ERROR'}` : e.code;
      return ((e as { code?: string })?.code ?? 'ERROR').slice(0, 40);
    };
    const passwordOf = (u: string, pw: number) => `${u} password ${pw} of run ${o.seed}`;
    const pwNow = new Map<string, number>();
    const register = async (u: (typeof users)[number], proc: string, pw: number): Promise<boolean> => {
      const k = generateBackupKey();
      const password = passwordOf(u.name, pw);
      if (evil) { secrets.push(k.slice(), new TextEncoder().encode(password)); }
      let set = registeredK.get(u.name);
      if (!set) registeredK.set(u.name, (set = new Set()));
      set.add(fp(k));
      const d = device(u, proc);
      const op = begin(u, proc, { f: 'register', pw, limit: o.limit });
      try {
        await enablePassword(d.send, d.opts, password, k, o.limit);
        end(op, 'ok', { r: 'ok' });
        pwNow.set(u.name, pw);
        return true;
      } catch (e) {
        const code = codeOf(e);
        // Refused before anything was proposed (the registration's first step): certainly no effect.
        end(op, code === 'KSF_MISMATCH' ? 'fail' : 'info', undefined, code);
        return false;
      } finally {
        k.fill(0);
      }
    };
    const recover = async (u: (typeof users)[number], proc: string, pw: number, password: string): Promise<void> => {
      const session = `s${nextSession++}`;
      let attempt: LiveOp | undefined = undefined;
      let outcome: LiveOp | undefined;
      const d = device(u, proc, (r) => {
        if (r.t !== 'KE2' || !attempt || outcome) return;
        end(attempt, 'ok', { r: 'ke2' });
        attempt.input = { f: 'attempt', session };
        outcome = begin(u, proc, { f: 'outcome', session, pw });
      });
      attempt = begin(u, proc, { f: 'attempt' });
      try {
        const k = await recoverK(d.send, d.opts, password);
        const f = fp(k);
        k.fill(0);
        if (!registeredK.get(u.name)?.has(f)) foreignK.push({ user: u.name, opId: outcome?.id ?? attempt.id });
        if (!kIds.has(f)) kIds.set(f, kIds.size + 1);
        if (outcome) end(outcome, 'ok', { r: 'released', k: kIds.get(f)! });
      } catch (e) {
        const code = codeOf(e);
        const target = outcome ?? attempt;
        if (code === 'WRONG_PASSWORD') end(target, 'ok', { r: 'wrong', left: (e as PasswordError).attemptsLeft ?? -1 });
        else if (code === 'LOCKED') end(target, 'ok', { r: 'locked' });
        else if (code === 'VAULT_RECORD_CHANGED' && outcome) end(outcome, 'ok', { r: 'changed' });
        else if (code === 'KSF_MISMATCH' && !outcome) end(attempt, 'fail', undefined, code);
        else end(target, 'info', undefined, code);
      }
    };
    const readStatus = async (u: (typeof users)[number], proc: string): Promise<void> => {
      const d = device(u, proc);
      const op = begin(u, proc, { f: 'status' });
      try {
        const s = await status(d.send, d.opts);
        end(op, 'ok', { r: 'status', state: s.state === 'registered' ? 'registered' : s.state === 'locked' ? 'locked' : 'none', left: s.attemptsLeft, limit: s.limit });
      } catch (e) {
        end(op, 'info', undefined, codeOf(e));
      }
    };
    const owner = async (u: (typeof users)[number]): Promise<void> => {
      let pw = 1;
      while (!(await register(u, `owner-${u.name}`, pw)) && !stopWork) await sleep(500);
      while (!stopWork) {
        await sleep(100 + workRng.int(600));
        if (stopWork) break;
        const roll = workRng.float();
        const cur = pwNow.get(u.name) ?? pw;
        if (roll < 0.45) await recover(u, `owner-${u.name}`, cur, passwordOf(u.name, cur));
        else if (roll < 0.85) await readStatus(u, `owner-${u.name}`);
        else if (roll < 0.9) {
          const d = device(u, `owner-${u.name}`);
          const op = begin(u, `owner-${u.name}`, { f: 'delete' });
          try { await disable(d.send, d.opts); end(op, 'ok', { r: 'ok' }); } catch (e) { end(op, 'info', undefined, codeOf(e)); }
          pw++;
          await register(u, `owner-${u.name}`, pw);
        } else {
          // Locked by the attackers (or unsure): start over with a fresh K, as a user would.
          const last = [...ops].reverse().find((x) => x.user === u.name && x.type === 'ok' && x.output?.r === 'status');
          if (last?.output?.r === 'status' && last.output.state !== 'registered') { pw++; await register(u, `owner-${u.name}`, pw); }
          else await readStatus(u, `owner-${u.name}`);
        }
      }
    };
    const attacker = async (u: (typeof users)[number], n: number): Promise<void> => {
      if (u.attackOnly) {
        // The victim registered once; from now on only attackers touch this record.
        if (n === 1) await register(u, `victim-${u.name}`, 1);
        else await sleep(2000);
      }
      let g = 0;
      while (!stopWork) {
        await sleep(150 + workRng.int(900));
        if (stopWork) break;
        await recover(u, `attacker-${u.name}.${n}`, -1, `${u.name} guess ${n}.${++g} of run ${o.seed}`);
      }
    };

    // ---- the nemesis
    let faults = 0;
    const down = new Set<string>();
    let haveCopy = new Set<string>();
    const leaderName = async () => (await fleet!.status().catch(() => undefined))?.leader ?? undefined;
    const pick = <T>(xs: readonly T[]): T => xs[nemesisRng.int(xs.length)]!;
    const shuffled = () => [...names].sort(() => nemesisRng.float() - 0.5);
    const fault = async (f: FleetFault, line: string) => {
      try {
        await fleet!.fault(f);
        note(line);
        faults++;
      } catch (e) {
        note(`refused ${line}: ${(e as { code?: string }).code ?? 'ERROR'}`);
      }
    };
    const killFleet = async () => {
      if (transport === 'tcp') {
        // Replica processes outlive a killed supervisor; kill -9 each of them instead.
        for (const n of names) if (!down.has(n)) await fault({ op: 'crash', replica: n }, `crash ${n}`);
        note('whole fleet killed (kill -9 of every replica process)');
        await sleep(500 + nemesisRng.int(2000));
        for (const n of names) await fault({ op: 'restart', replica: n }, `restart ${n}`);
        down.clear();
        return;
      }
      note('whole fleet killed (kill -9 of the fleet process)');
      faults++;
      expectExit = true;
      fleet!.kill('SIGKILL');
      await fleet!.exited;
      expectExit = false;
      down.clear();
      haveCopy = new Set();
      await sleep(500 + nemesisRng.int(2000));
      fleet = await startFleet(fleetPort);
      if (evil) { evil.close(); evil = new MaliciousChatd(fleet.url, hopSecret(stateDir, 'relay')); }
      note('whole fleet restarted');
    };
    const nemesis = async (): Promise<void> => {
      while (now() < faultUntil) {
        await sleep(1000 + nemesisRng.int(2500));
        if (now() >= faultUntil) break;
        const what = pick(menu);
        const up = names.filter((n) => !down.has(n));
        // Bring crashed replicas back often, so faults pile up but the fleet keeps coming back.
        if (down.size > 0 && nemesisRng.float() < 0.5) {
          const n = pick([...down]);
          const disk = haveCopy.has(n) && nemesisRng.float() < 0.4 ? 'rollback' : nemesisRng.float() < 0.15 ? 'blank' : 'keep';
          await fault({ op: 'restart', replica: n, disk }, `${disk === 'keep' ? 'restart' : disk === 'rollback' ? 'rollback-restart' : 'blank-restart'} ${n}`);
          down.delete(n);
          if (disk === 'rollback') haveCopy.delete(n);
          continue;
        }
        switch (what) {
          case 'crash': case 'crash-leader': case 'rollback': case 'blank': {
            const n = what === 'crash-leader' ? (await leaderName()) : pick(up);
            if (!n || down.has(n)) break;
            if (what === 'rollback' && !haveCopy.has(n)) { await fault({ op: 'snapshotDisk', replica: n }, `snapshot ${n} (a disk copy to roll back to)`); haveCopy.add(n); break; }
            await fault({ op: 'crash', replica: n }, `crash ${n}`);
            down.add(n);
            if (what === 'blank') { await fault({ op: 'restart', replica: n, disk: 'blank' }, `blank-restart ${n}`); down.delete(n); }
            break;
          }
          case 'restart': {
            const n = down.size ? pick([...down]) : undefined;
            if (n) { await fault({ op: 'restart', replica: n }, `restart ${n}`); down.delete(n); }
            break;
          }
          case 'kill-fleet':
            if (nemesisRng.float() < 0.3) await killFleet();
            break;
          case 'partition': {
            const s = shuffled();
            const cut = 1 + nemesisRng.int(s.length - 1);
            await fault({ op: 'heal' }, 'heal');
            await fault({ op: 'partition', groups: [s.slice(0, cut), s.slice(cut)] }, `partition ${s.slice(0, cut).join(' ')} | ${s.slice(cut).join(' ')}`);
            break;
          }
          case 'bridge': {
            const s = shuffled();
            const half = Math.floor((s.length - 1) / 2);
            await fault({ op: 'heal' }, 'heal');
            await fault({ op: 'partition', groups: [s.slice(1, 1 + half), s.slice(1 + half)] }, `bridge ${s[0]} between ${s.slice(1, 1 + half).join(' ')} | ${s.slice(1 + half).join(' ')}`);
            break;
          }
          case 'ring': {
            const s = shuffled();
            await fault({ op: 'heal' }, 'heal');
            for (let i = 0; i < s.length; i++) for (let j = 0; j < s.length; j++) {
              const d = Math.abs(i - j);
              if (i !== j && d !== 1 && d !== s.length - 1) await fleet!.fault({ op: 'block', from: s[i]!, to: s[j]! }).catch(() => undefined);
            }
            note(`ring ${s.join(' ')} (each replica sees only its neighbours)`);
            faults++;
            break;
          }
          case 'isolate': await fault({ op: 'isolate', replica: pick(names) }, `isolate ${pick(names)}`); break;
          case 'one-way': {
            const l = (await leaderName()) ?? pick(names);
            for (const n of names) if (n !== l) await fleet!.fault({ op: 'block', from: n, to: l }).catch(() => undefined);
            note(`cut one-way everything -> ${l} (the leader still sends)`);
            faults++;
            break;
          }
          case 'slow': { const n = pick(names); await fault({ op: 'degrade', replica: n, extraDelayMs: 50 + nemesisRng.int(400) }, `slow ${n}`); break; }
          case 'lossy': { const n = pick(names); await fault({ op: 'degrade', replica: n, lossRate: 0.1 + nemesisRng.float() * 0.4 }, `lossy ${n}`); break; }
          case 'token': {
            const n = pick(up);
            if (n) await fault({ op: 'token', replica: n, failureRate: nemesisRng.float() * 0.05, latencyRate: nemesisRng.float() * 0.5, latencyMs: [1, 20 + nemesisRng.int(200)] }, `token-faults ${n}`);
            break;
          }
          case 'clock': {
            const n = pick(up);
            if (n) await fault({ op: 'clock', replica: n, rate: 0.5 + nemesisRng.float() * 1.5, offsetMs: nemesisRng.int(60_000) - 30_000 }, `clock-skew ${n}`);
            break;
          }
        }
        if (nemesisRng.float() < 0.25 && menu.includes('partition')) await fault({ op: 'heal' }, 'heal');
      }
    };
    const poll = async (): Promise<void> => {
      const last = new Map<string, string>();
      while (!stopWork) {
        const s = await fleet!.status().catch(() => undefined);
        const at = now();
        for (const n of names) {
          const r = s?.replicas.find((x) => x.name === n);
          const role = r ? (r.role === 'down' ? 'down' : r.reason === 'REJOINING' ? 'rejoining' : r.role) : 'down';
          const term = r?.term ?? 0;
          const key = `${role}/${term}`;
          if (last.get(n) !== key) { last.set(n, key); roles.push({ at, id: n, role, term }); }
        }
        o.onProgress?.({ elapsedMs: at, totalMs, ops: ops.length, faults, phase: at < faultUntil ? 'faults' : 'healing' });
        await sleep(500);
      }
    };

    const workers = [
      ...users.filter((u) => !u.attackOnly).map((u) => owner(u)),
      ...users.flatMap((u) => Array.from({ length: o.attackersPerUser }, (_, i) => attacker(u, i + 1))),
    ];
    const polling = poll();
    await nemesis();

    // ---- heal: every fault off, every replica back, then the fleet must converge and serve
    const healedAt = now();
    note('heal (faults stop)');
    if (menu.includes('partition')) await fleet.fault({ op: 'heal' }).catch(() => undefined);
    for (const n of names) {
      if (menu.includes('token')) await fleet.fault({ op: 'token', replica: n, failureRate: 0, latencyRate: 0 }).catch(() => undefined);
      if (menu.includes('clock')) await fleet.fault({ op: 'clock', replica: n, rate: 1, offsetMs: 0 }).catch(() => undefined);
    }
    for (const n of [...down]) { await fleet.fault({ op: 'restart', replica: n }).catch(() => undefined); down.delete(n); }
    // A replica that died on its own (a refused disk), or stopped itself on a token error (the core
    // fails stop: it cannot know what a failed seal or anchor left behind), is restarted as an
    // operator would.
    const st = await fleet.status().catch(() => undefined);
    for (const r of st?.replicas ?? []) {
      if (r.role === 'down') await fleet.fault({ op: 'restart', replica: r.name }).catch(() => undefined);
      else if (!r.healthy && r.reason !== 'REJOINING') {
        note(`operator restart ${r.name} (stopped itself: ${r.reason.split(':')[0]})`);
        await fleet.fault({ op: 'crash', replica: r.name }).catch(() => undefined);
        await fleet.fault({ op: 'restart', replica: r.name }).catch(() => undefined);
      }
    }
    const convergeMs = (o.convergeSeconds ?? 60) * 1000;
    let convergedAt: number | null = null;
    let finalStatus: FleetStatus | null = null;
    const until = Math.max(now() + convergeMs, totalMs);
    while (now() < until) {
      const s = await fleet.status().catch(() => undefined);
      if (s) finalStatus = s;
      if (convergedAt === null && s && converged(s)) { convergedAt = now(); note('converged'); }
      if (convergedAt !== null && now() >= totalMs) break;
      o.onProgress?.({ elapsedMs: now(), totalMs, ops: ops.length, faults, phase: 'healing' });
      await sleep(250);
    }
    stopWork = true;
    o.onProgress?.({ elapsedMs: now(), totalMs, ops: ops.length, faults, phase: 'checking' });
    // Devices finish what they are doing (a request times out after 20 s at worst).
    let giveUp: NodeJS.Timeout | undefined;
    await Promise.race([Promise.all(workers), new Promise((r) => { giveUp = setTimeout(r, 45_000); })]);
    clearTimeout(giveUp);
    await polling;
    // The last word on every record, once the fleet is quiet: what a durability check reads.
    if (convergedAt !== null) for (const u of users) await readStatus(u, 'checker');
    const firstOk = ops.filter((x) => x.type === 'ok' && x.ret !== null && x.call >= healedAt).map((x) => x.ret!).sort((a, b) => a - b)[0] ?? null;
    let leaks = 0;
    if (evil) {
      for (const r of evil.recorded) if (secrets.some((s) => containsWindow(r.bytes, s))) leaks++;
    }
    for (const s of secrets) s.fill(0);
    return {
      settings, ops, notes, roles, users: users.map((u) => ({ name: u.name, attackOnly: u.attackOnly })), healedAt, convergedAt, firstOkAfterHeal: firstOk,
      end: now(), foreignK, leaks, tampering, finalStatus, durationMs: Date.now() - began, serviceLog,
    };
  } finally {
    if (prevMutation === undefined) delete process.env.BKV_TEST_MUTATION;
    else process.env.BKV_TEST_MUTATION = prevMutation;
    expectExit = true;
    for (const c of clients) c.close();
    evil?.close();
    await chatd?.stop().catch(() => undefined);
    await fleet?.stop().catch(() => undefined);
    rmSync(dir, { recursive: true, force: true });
  }
}

function converged(s: FleetStatus): boolean {
  if (!s.leader) return false;
  const rs = s.replicas;
  if (!rs.every((r) => r.healthy && r.role !== 'down' && r.reason !== 'REJOINING')) return false;
  const a = rs[0]!;
  return rs.every((r) => r.appliedIndex === a.appliedIndex && r.digest === a.digest && r.commitIndex === a.commitIndex);
}

async function waitFleet(f: FleetService, ms: number, ok: (s: FleetStatus) => boolean): Promise<FleetStatus> {
  const end = Date.now() + ms;
  for (;;) {
    const s = await f.status().catch(() => undefined);
    if (s && ok(s)) return s;
    if (Date.now() > end) throw Object.assign(new Error('the fleet did not elect a leader in time'), { code: 'NO_LEADER' });
    await sleep(100);
  }
}
