// A seeded vault workload for VaultCluster: owners register and recover with the right password,
// attackers guess concurrently on the same users, all through client/password.ts (identity KSF,
// seeded randomness) against random replicas, while a seeded nemesis crashes, restarts, pauses,
// partitions, isolates the leader, drops, duplicates and reorders. Afterwards the fleet is healed and must
// converge, and the oracle's verdicts are collected. Everything is drawn from the seed.
import { identityKsf } from '../../protocol/opaque/index.ts';
import { PasswordError, enablePassword, recoverK, status, type PasswordOptions } from '../../client/password.ts';
import { VaultCluster, DeviceTimeout, type FirmwareLike } from '../../vault/sim/vault-cluster.ts';
import type { Mutation } from '../../vault/replica/core.ts';
import { FaultyToken, type FaultPlan } from '../../hsm-adapter/faulty-token.ts';
import type { SessionGate } from '../../vault/firmware/gate.ts';
import { SeededRng } from '../../vault/consensus/index.ts';

export interface VaultRunOptions {
  seed: number;
  durationMs?: number;
  users?: number;
  wrapFirmware?: (fw: SessionGate, id: string) => FirmwareLike;
  /** Also roll disks back to copies, blank them, tear writes, flip bits, and restart the whole fleet. */
  diskFaults?: boolean;
  /** Token calls fail now and then (device errors, lost sessions), through the fault-injecting token. */
  tokenFaults?: boolean;
  /** Host clocks jump forward and back. */
  clockFaults?: boolean;
  /** Membership changes under load: a voter removed, re-added as a learner, promoted (five replicas). */
  membership?: boolean;
  /** A seeded bug in the replica core (the mutation check). */
  mutation?: Mutation;
  /**
   * The nemesis favours one fault, as FoundationDB's buggify does: forks (a second instance of one
   * identity) or forged peer frames, each rare in the plain menu, about 1.5% of steps instead.
   */
  bias?: 'fork' | 'forge';
  /** Every trace line as it is written (debugging one seed). */
  onNote?: (line: string) => void;
  /**
   * Replay only the faults of these steps (virtual ms since the faulty phase began; `faults` of a
   * result lists them): what a shrunk schedule replays. Each step draws from its own stream, so
   * leaving one out changes no other step's choice.
   */
  onlySteps?: ReadonlySet<number>;
  /** Keep a history of the run (operations, roles, faults, attempts left) for a report. */
  record?: boolean;
}

/** One device operation, Jepsen style: invoked at `start`, completed at `end` (virtual ms) with `outcome`. */
export interface HistoryOp {
  id: number;
  user: string;
  /** A live run splits a recovery into its attempt (until the KE2) and its outcome, and also deletes. */
  op: 'register' | 'recover' | 'status' | 'attempt' | 'outcome' | 'delete';
  /** recover / outcome: whether the device knew the password (owner or attacker). */
  correct: boolean;
  start: number;
  end: number | null;
  /** 'ok', 'released', or the error class ('wrong_password', 'locked', 'unknown' for a timeout, ...). */
  outcome: string | null;
}

/** What a report draws: every operation, each replica's role over time, the nemesis' trace, attempts left. */
export interface RunHistory {
  ops: HistoryOp[];
  /** A replica's role and term from `at` on (down when its process is not running). */
  roles: { at: number; id: string; role: string; term: number }[];
  /** The cluster's trace lines, deliveries and applies left out: faults, starts, crashes. */
  notes: { at: number; line: string }[];
  /** Attempts left per user, as the leader's firmware has it, whenever it changed. */
  attempts: { at: number; user: string; left: number; state: string }[];
  /** When the faults stopped and healing began. */
  healedAt: number;
  end: number;
  limit: number;
}

/** What the seed drew before the run: the fleet and the network it ran on. */
export interface VaultRunSettings {
  replicas: number;
  snapshotEvery: number;
  net: { maxDelayMs: number; dropRate: number; dupRate: number };
  diskMaxMs: number;
  tokenFailureRate: number | null;
}

/** One step of the faulty phase at which the nemesis did something, and what (its trace lines). */
export interface FaultStep { t: number; what: string }

export interface VaultRunResult {
  cluster: VaultCluster;
  violations: string[];
  converged: boolean;
  traceHash: string;
  outcomes: Record<string, number>;
  settings: VaultRunSettings;
  /** The steps at which a fault was applied, in order. */
  faults: FaultStep[];
  history?: RunHistory;
}

/** The seed of one step's fault stream. */
function faultSeed(seed: number, t: number): number {
  return (Math.imul(seed >>> 0, 0x9e3779b1) ^ Math.imul(t + 0x27d4eb2f, 0x85ebca6b)) >>> 0;
}

const LIMIT = 3;

function bytesFrom(rng: SeededRng): (n: number) => Uint8Array {
  return (n) => { const b = new Uint8Array(n); for (let i = 0; i < n; i++) b[i] = rng.int(256); return b; };
}

export async function randomVaultRun(o: VaultRunOptions): Promise<VaultRunResult> {
  // The seed picks the fault model before the cluster exists.
  const pick = new SeededRng(o.seed ^ 0x9e3779b9);
  const choose = <T>(a: readonly T[]): T => a[pick.int(a.length)]!;
  // The fault plans stay ours: the token faults stop (failure rate 0) when the fleet is healed.
  const tokenPlans: FaultPlan[] = [];
  const tokenFailureRate = choose([0.0002, 0.001]);
  const replicas = choose([['r1', 'r2', 'r3'], ['r1', 'r2', 'r3'], ['r1', 'r2', 'r3', 'r4', 'r5']]);
  const snapshotEvery = choose([5, 20, 1000]);
  const net = { minDelayMs: 1, maxDelayMs: choose([5, 15, 40]), dropRate: choose([0, 0.02, 0.08]), dupRate: choose([0, 0.03, 0.1]) };
  const diskMaxMs = choose([1, 4]);
  const settings: VaultRunSettings = {
    replicas: replicas.length, snapshotEvery, net: { maxDelayMs: net.maxDelayMs, dropRate: net.dropRate, dupRate: net.dupRate }, diskMaxMs,
    tokenFailureRate: o.tokenFaults ? tokenFailureRate : null,
  };
  const history: RunHistory | undefined = o.record ? { ops: [], roles: [], notes: [], attempts: [], healedAt: 0, end: 0, limit: LIMIT } : undefined;
  /** Trace lines written while the nemesis acts (null: it is not acting). */
  let faultNotes: string[] | null = null;
  const applied: FaultStep[] = [];
  const c = await VaultCluster.create({
    seed: o.seed,
    replicas,
    mutation: o.mutation,
    onNote: (l) => {
      faultNotes?.push(l);
      o.onNote?.(l);
      if (history && !l.includes('|d|')) {
        const bar = l.indexOf('|');
        const line = l.slice(bar + 1);
        if (!/^(apply|req|rep|dev|health) /.test(line)) history.notes.push({ at: Number(l.slice(0, bar)), line });
      }
    },
    wrapToken: o.tokenFaults
      ? (t, id) => {
        const plan: FaultPlan = { seed: (o.seed * 31 + id.charCodeAt(1)) >>> 0, failureRate: tokenFailureRate, faults: ['CKR_DEVICE_ERROR', 'CKR_SESSION_HANDLE_INVALID'] };
        tokenPlans.push(plan);
        return new FaultyToken(t, plan);
      }
      : undefined,
    policy: { requestTtlMs: 2_000, sessionTtlMs: 5_000, snapshotEvery },
    net,
    diskMaxMs,
    deviceTimeoutMs: 3_000,
    wrapFirmware: o.wrapFirmware,
  });
  const rng = c.rng.fork();
  // The fleet's session key, as devices pin it (every token holds the same sealed seed).
  const { serverPublicKey, sessionKey } = c.pins();
  const ids = c.ids;
  const users = Array.from({ length: o.users ?? 2 }, (_, i) => `user${i}`);
  for (const u of users) c.knownUsers.add(u);
  const secrets = new Map(users.map((u) => [u, { password: `right horse ${u}`, k: bytesFrom(rng)(32) }]));
  const registered = new Set<string>();
  const outcomes: Record<string, number> = {};
  const count = (k: string) => { outcomes[k] = (outcomes[k] ?? 0) + 1; };
  const inflight = new Set<string>();
  let devN = 0;

  const device = (user: string, correct: boolean): { send: (b: Uint8Array) => Promise<Uint8Array>; opts: PasswordOptions } => {
    const dev = `dev${++devN}`;
    const drng = rng.fork();
    const send = c.deviceSend(dev, user, () => ids[drng.int(ids.length)]!, () => ({ correct }));
    return { send, opts: { user, serverPublicKey, sessionKey, ksf: identityKsf, rng: bytesFrom(drng) } };
  };

  const classify = (e: unknown): string => {
    if (e instanceof DeviceTimeout) return 'unknown';
    if (e instanceof PasswordError) return e.code === 'VAULT_ERROR' ? `error:${e.vaultCode}` : e.code.toLowerCase();
    throw e;
  };

  /** Records an operation's invocation; the returned function its completion. */
  const invoke = (user: string, op: HistoryOp['op'], correct: boolean): ((outcome: string) => void) => {
    if (!history) return () => undefined;
    const h: HistoryOp = { id: history.ops.length + 1, user, op, correct, start: c.now, end: null, outcome: null };
    history.ops.push(h);
    return (outcome) => { h.end = c.now; h.outcome = outcome; };
  };

  const register = (user: string): void => {
    if (inflight.has(`reg:${user}`)) return;
    inflight.add(`reg:${user}`);
    const d = device(user, true);
    const s = secrets.get(user)!;
    const done = invoke(user, 'register', true);
    void enablePassword(d.send, d.opts, s.password, s.k, LIMIT)
      .then(() => { registered.add(user); count('registered'); done('ok'); }, (e: unknown) => { const k = classify(e); count(`register-${k}`); done(k); })
      .finally(() => inflight.delete(`reg:${user}`));
  };

  const recover = (user: string, correct: boolean, tag: string): void => {
    if (inflight.has(tag)) return;
    inflight.add(tag);
    const d = device(user, correct);
    const s = secrets.get(user)!;
    const done = invoke(user, 'recover', correct);
    void recoverK(d.send, d.opts, correct ? s.password : `guess ${rng.int(1e9)}`)
      .then((k) => {
        count('released');
        done('released');
        if (!correct) c.oracle.fail(`t=${c.now}: ${user}: a wrong password recovered K`);
        else if (Buffer.compare(Buffer.from(k), Buffer.from(s.k)) !== 0) c.oracle.fail(`t=${c.now}: ${user}: recovered a K that is not the registered one`);
      }, (e: unknown) => { const k = classify(e); count(`${correct ? 'owner' : 'attacker'}-${k}`); done(k); })
      .finally(() => inflight.delete(tag));
  };

  // Registration first (a quiet start), then the faulty phase.
  await c.run(300);
  for (const u of users) register(u);
  for (let i = 0; i < 40 && registered.size < users.length; i++) {
    await c.run(200);
    for (const u of users) if (!registered.has(u)) register(u);
  }

  const duration = o.durationMs ?? 3_000;
  const step = 25;
  const maxDown = Math.floor((ids.length - 1) / 2);
  /** Replicas down or re-replicating: neither holds what it promised right now. */
  /** A staged rollback attack: the leader and a minority of victims commit alone, then the victims' disks go back. */
  let attack: { leader: string; victims: string[]; at: number } | null = null;
  // Its victims count as lacking from the start: at most a minority of disks may lose what they acked.
  /** Replicas an operator took out of the configuration and has not fully brought back. */
  const removed = new Set<string>();
  const lacking = () => ids.filter((id) => !c.isUp(id) || c.lacksData(id) || c.isForked(id) || !c.isHealthy(id) || removed.has(id) || attack?.victims.includes(id));
  /** One step of bringing a removed replica back: learner first, then voter. */
  const readd = (v: string) => {
    const conf = c.configuration();
    if (!conf) return;
    if (conf.voters.includes(v)) { removed.delete(v); return; }
    c.changeMembership(conf.learners.includes(v) ? { op: 'addVoter', node: v } : { op: 'addLearner', node: v });
  };
  /** Roles and attempts left, written to the history when they change. */
  const lastRole = new Map<string, string>();
  const lastLeft = new Map<string, string>();
  const sample = () => {
    if (!history) return;
    for (const id of ids) {
      const core = c.core(id);
      const st = core?.status();
      const role = !st ? 'down' : !st.healthy ? 'stopped' : core!.isRejoining ? 'rejoining' : st.role;
      const key = `${role}/${st?.term ?? 0}`;
      if (lastRole.get(id) !== key) { lastRole.set(id, key); history.roles.push({ at: c.now, id, role, term: st?.term ?? 0 }); }
    }
    const l = c.leader();
    const fw = l ? c.firmware(l) : undefined;
    for (const u of users) {
      const r = fw?.inspect(u);
      if (!r) continue;
      const key = `${r.limit - r.used}/${r.state}`;
      if (lastLeft.get(u) !== key) { lastLeft.set(u, key); history.attempts.push({ at: c.now, user: u, left: r.limit - r.used, state: r.state }); }
    }
  };
  sample();
  for (let t = 0; t < duration; t += step) {
    await c.run(step);
    sample();
    if (attack && t >= attack.at) {
      for (const v of attack.victims) { c.rollbackDisk(v); c.restart(v); }
      c.crash(attack.leader);
      c.heal();
      attack = null;
    }
    // This step's fault draws from its own stream (seed, step): a shrunk schedule that leaves
    // other steps out still makes this one's choice.
    const frng = new SeededRng(faultSeed(o.seed, t));
    if (!o.onlySteps || o.onlySteps.has(t)) {
      faultNotes = [];
      const down = ids.filter((id) => !c.isUp(id));
      const r = frng.int(1000);
      if (r < 20 && down.length < maxDown) {
        const up = c.upIds();
        // Often the leader: crash it at whatever step of a recovery it happens to be.
        const l = c.leader();
        c.crash(l !== null && frng.int(2) === 0 ? l : up[frng.int(up.length)]!);
      } else if (r < 60 && down.length > 0) {
        c.restart(down[frng.int(down.length)]!);
      } else if (r < 66) {
        const a: string[] = []; const b: string[] = [];
        for (const id of ids) (frng.int(2) === 0 ? a : b).push(id);
        c.partition(a, b);
      } else if (r < 69) {
        // A bridge: two sides that cannot see each other, and one replica (often the leader) that sees both.
        const l = c.leader();
        const via = l !== null && frng.int(2) === 0 ? l : ids[frng.int(ids.length)]!;
        const rest = ids.filter((x) => x !== via);
        const cutAt = 1 + frng.int(Math.max(1, rest.length - 1));
        c.bridge(rest.slice(0, cutAt), rest.slice(cutAt), via);
      } else if (r < 71) {
        // A ring: each replica reaches only its two neighbours (with three, nothing is cut).
        const order = [...ids];
        for (let i = order.length - 1; i > 0; i--) { const j = frng.int(i + 1); [order[i], order[j]] = [order[j]!, order[i]!]; }
        c.ring(order);
      } else if (r < 75) {
        // One-way links: often everything into the leader is lost while it still sends (it cannot hear its deposition).
        const l = c.leader();
        if (l !== null && frng.int(2) === 0) for (const x of ids) { if (x !== l) c.cutLink(x, l, true); }
        else { const a = ids[frng.int(ids.length)]!; const b = ids.filter((x) => x !== a)[frng.int(ids.length - 1)]!; c.cutLink(a, b, true); }
      } else if (r < 85) {
        const l = c.leader();
        if (l) c.isolate(l);
      } else if (r < 130) {
        c.heal();
      } else if (r < 140 && down.length < maxDown) {
        // A stopped process, often the leader: it resumes at the next heal, possibly stale.
        const l = c.leader();
        const up = c.upIds();
        c.pause(l !== null && frng.int(2) === 0 ? l : up[frng.int(up.length)]!);
      } else if (o.diskFaults && r < 160) {
        // The host copies a disk now, to roll it back later.
        const up = c.upIds();
        if (up.length) c.snapshotDisk(up[frng.int(up.length)]!);
      } else if (o.diskFaults && r < 175 && lacking().length < maxDown) {
        // A disk rolled back to its last copy, or blanked (amnesia), then the replica restarted on it:
        // it must re-replicate before it votes. At most a minority lacks what it promised at once.
        const up = c.upIds().filter((id) => !c.lacksData(id));
        const v = up[frng.int(up.length)];
        if (v) {
          if (frng.int(3) === 0) c.blankDisk(v); else c.rollbackDisk(v);
          c.restart(v);
        }
      } else if (o.diskFaults && r < 180 && lacking().length === 0) {
        // The whole fleet killed and started again (intact disks: every replica votes at once).
        c.wholeFleetRestart();
      } else if (o.diskFaults && r < 190 && lacking().length < maxDown) {
        // Killed mid-write (a torn write), or a bit flipped on a stopped replica's disk: refused at start.
        const up = c.upIds().filter((id) => !c.lacksData(id));
        const v = up[frng.int(up.length)];
        if (v) {
          if (frng.int(2) === 0) c.tornCrash(v); else { c.crash(v); c.flipBit(v); }
          c.restart(v);
        }
      } else if (o.diskFaults && r < 195 && !attack && lacking().length === 0) {
        // Snapshot a minority's disks, let the leader commit with them alone, then (later) roll them back
        // and kill the leader: only the anchor stops them from electing a replica that lacks those commits.
        const l = c.leader();
        if (l) {
          const others = ids.filter((x) => x !== l);
          const victims: string[] = [];
          while (victims.length < Math.floor(ids.length / 2)) {
            const v = others[frng.int(others.length)]!;
            if (!victims.includes(v)) victims.push(v);
          }
          for (const v of victims) c.snapshotDisk(v);
          c.partition([l, ...victims], others.filter((x) => !victims.includes(x)));
          attack = { leader: l, victims, at: t + 200 + frng.int(800) };
        }
      } else if (o.diskFaults && r >= 195 && r < 198 && lacking().length < maxDown) {
        // Two instances of one identity (a fork), or a replica started on another one's disk.
        const up = c.upIds().filter((id) => !c.lacksData(id));
        const v = up[frng.int(up.length)];
        if (v) {
          if (frng.int(2) === 0) c.fork(v);
          else { c.swapDisk(v, ids.filter((x) => x !== v)[frng.int(ids.length - 1)]!); c.restart(v); }
        }
      } else if (o.diskFaults && r >= 198 && r < 200) {
        c.endForks();
      } else if (o.membership && r >= 230 && r < 245) {
        // An operator replaces a replica while devices keep guessing: out, then back as a learner, then a voter.
        const conf = c.configuration();
        if (conf && removed.size === 0 && conf.voters.length > 3 && lacking().length < maxDown) {
          const l = c.leader();
          const victims = conf.voters.filter((v) => v !== l);
          const v = victims[frng.int(victims.length)]!;
          if (c.changeMembership({ op: 'remove', node: v }) === 'ok') removed.add(v);
        } else if (removed.size > 0) {
          readd([...removed][0]!);
        }
      } else if (r < 200) {
        // A vote or an ack in another replica's name, over a third one's authenticated link.
        c.forge();
      } else if (o.clockFaults && r < 205) {
        const up = c.upIds();
        if (up.length) c.clockJump(up[frng.int(up.length)]!, (frng.int(2) === 0 ? -1 : 1) * (50 + frng.int(4000)));
      } else if (o.clockFaults && r < 210) {
        // A host clock that runs fast or slow (its election and lease timers with it), for good.
        const up = c.upIds();
        if (up.length) c.clockDrift(up[frng.int(up.length)]!, [-0.3, -0.1, 0.05, 0.2, 0.5][frng.int(5)]!);
      } else if (o.tokenFaults && r < 214) {
        // A token that answers slowly (a busy HSM, a far network HSM): the replica blocks in each call.
        const up = c.upIds();
        if (up.length) c.slowToken(up[frng.int(up.length)]!, [5, 20, 60, 250][frng.int(4)]!);
      } else if (o.tokenFaults && r < 216) {
        const up = c.upIds();
        if (up.length) c.slowToken(up[frng.int(up.length)]!, 0);
      } else if (o.tokenFaults && r < 230) {
        // A replica that stopped itself on a token error is restarted by its supervisor.
        const sick = c.upIds().filter((id) => !c.isHealthy(id));
        if (sick.length) { const v = sick[frng.int(sick.length)]!; c.crash(v); c.restart(v); }
      } else if (o.bias === 'fork' && r >= 900 && r < 915 && lacking().length < maxDown) {
        const up = c.upIds().filter((id) => !c.lacksData(id));
        if (up.length) c.fork(up[frng.int(up.length)]!);
      } else if (o.bias === 'forge' && r >= 900 && r < 915) {
        c.forge();
      }
      // What the nemesis did, without the time prefix and what followed from it (entries applied at a restart).
      const what = faultNotes.map((l) => l.slice(l.indexOf('|') + 1)).filter((l) => !l.startsWith('apply ') && !l.startsWith('d|'));
      if (faultNotes.length > 0) applied.push({ t, what: what.join('; ') || 'nothing visible' });
      faultNotes = null;
    }
    for (const u of users) {
      if (!registered.has(u)) continue;
      const x = rng.int(100);
      if (x < 6) recover(u, true, `owner:${u}`);
      else if (x < 16) recover(u, false, `attacker${rng.int(3)}:${u}`);
    }
  }
  for (const p of tokenPlans) p.failureRate = 0;
  if (history) history.healedAt = c.now;
  let converged = await c.quiesce(30_000);
  sample();
  // Healed, the operator brings every replica back into the configuration (a removal it saw refused
  // may still have committed under another leader: it checks the leader's), then the fleet settles.
  const outside = () => { const conf = c.configuration(); return conf ? ids.filter((v) => !conf.voters.includes(v)) : ids; };
  for (let i = 0; i < 80 && o.membership && outside().length > 0; i++) {
    await c.run(150);
    for (const v of outside()) readd(v);
  }
  if (outside().length === 0) removed.clear();
  converged = converged && removed.size === 0;
  // Let any device flow still running finish or time out, then settle again.
  if (history) for (let i = 0; i < 16; i++) { await c.run(250); sample(); }
  else await c.run(4_000);
  const settled = await c.quiesce(30_000);
  sample();
  c.checkConverged();
  // Healed and quiet: a Status through any replica answers (liveness) with the committed state.
  for (const u of users) {
    const d = device(u, true);
    const box: { got: { state: string; attemptsLeft: number } | string | null } = { got: null };
    const done = invoke(u, 'status', true);
    void status(d.send, d.opts).then((x) => { box.got = x; done('ok'); }, (e: unknown) => { box.got = classify(e); done(box.got); });
    await c.runUntil(() => box.got !== null, 5_000);
    const got = box.got as { state: string; attemptsLeft: number } | string | null;
    if (got === null || typeof got === 'string') c.oracle.fail(`${u}: no Status answer after healing (${String(got)})`);
    // What it says is judged by the oracle where it left the replica (against the committed history
    // at that replica's applied index): a Lock may still commit after the read (an expired last session).
  }
  sample();
  if (history) history.end = c.now;
  return { cluster: c, violations: c.violations(), converged: converged && settled, traceHash: c.traceHash(), outcomes, settings, faults: applied, history };
}
