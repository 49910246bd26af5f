// The verdict on a live run's history (live.ts), afterwards and from outside the fleet: only what
// the devices saw. Pure: a history in, checks and violations out, so each check is tested on
// histories made to break it (test/scripts/live-check.test.ts).
//
// - linearizable: every user's operations against the sequential model of one record
//   (record-model.ts); this covers the counter, lockout, K consistency and durability of every
//   acknowledged change (the final reads after healing are in the history).
// - guess budget, counted outside: an attack-only user (no owner ever recovers it) whose victim's
//   registration was acknowledged gets at most `limit` KE2s in all, across every device, retry,
//   duplicate, crash and restart.
// - counter never goes down: on attack-only users, an attempts-left reading never rises after an
//   earlier one completed, and a lock never lifts.
// - K: every K a device got was registered for that user.
// - ChatD blind (malicious-ChatD mode): nothing ChatD saw holds a window of a password or K.
// - healing: after the faults stop, every replica converges and operations succeed again.
import { InputError } from '../../protocol/errors.ts';
import { checkLinearizable, type Model, type Operation } from './linearizability.ts';
import type { LiveOp, LiveRun } from './live.ts';
import { recordModel, type RecordInput, type RecordOutput, type RecordState } from './record-model.ts';
import type { HistoryOp, RunHistory } from './workload.ts';

export interface LiveCheck { name: string; ok: boolean; detail: string }

/** What the record model is told, plus `maybe`: an attempt whose outcome is unknown. */
export type LiveOutput = RecordOutput | { r: 'maybe' };

/**
 * The record model with charges of unknown outcome kept as a count instead of as operations the
 * search must place: an attempt whose KE2 never came may be charged at any point after it was sent,
 * or never, and thousands of them (a long run with crashes) would make the search exponential. A
 * reading that shows fewer attempts left than the known charges explain uses just as many pending
 * charges as it needs, at that point: using them later is always at least as good (they commute with
 * everything but a reset, and a reset wipes charges made before it). The same rule lets a record at
 * its limit read as locked: the firmware locks it by itself once its last session lapses.
 */
export function withPendingCharges(inner: Model<RecordState, RecordInput, RecordOutput>): Model<{ r: RecordState; pending: number }, RecordInput, LiveOutput> {
  return {
    init: () => ({ r: inner.init(), pending: 0 }),
    key: (s) => `${inner.key(s.r)}|${s.pending}`,
    step(s, input, out) {
      if (out?.r === 'maybe') return { r: s.r, pending: s.pending + 1 };
      const plain = out as RecordOutput | undefined;
      const direct = inner.step(s.r, input, plain);
      if (direct) return { r: direct, pending: s.pending };
      const r = s.r;
      if (!plain || !r.exists || r.locked) return null;
      // How many pending charges the answer needs to have landed first.
      let need: number;
      let lock = false;
      if (plain.r === 'locked' || (plain.r === 'status' && plain.state === 'locked')) { need = Math.max(0, r.limit - r.used); lock = true; }
      else if (plain.r === 'wrong' || (plain.r === 'status' && plain.state === 'registered')) need = r.limit - plain.left - r.used;
      else return null;
      if (need < 0 || need > s.pending || (need === 0 && !lock)) return null;
      const next = inner.step({ ...r, used: r.used + need, locked: lock }, input, plain);
      return next ? { r: next, pending: s.pending - need } : null;
    },
  };
}
export interface LiveVerdict { ok: boolean; checks: LiveCheck[]; violations: string[] }

const left = (op: LiveOp): { left: number; locked: boolean } | undefined => {
  if (op.type !== 'ok' || !op.output) return undefined;
  const o = op.output;
  if (o.r === 'status') return o.state === 'none' ? undefined : { left: o.state === 'locked' ? 0 : o.left, locked: o.state === 'locked' };
  if (o.r === 'wrong') return { left: o.left, locked: false };
  if (o.r === 'locked') return { left: 0, locked: true };
  return undefined;
};

export function checkLiveRun(run: LiveRun, opts: { maxStatesPerUser?: number } = {}): LiveVerdict {
  const checks: LiveCheck[] = [];
  const violations: string[] = [];
  const limit = run.settings.limit;

  // Linearizability, per user. A fail had no effect and is left out, and so is a read whose answer
  // never came (it cannot have changed anything); any other info op may have taken effect.
  // An attempt of unknown outcome (no KE2 came) becomes a charge that may land at any later point,
  // or never (withPendingCharges): an operation at its call, not one the search must place.
  const ops: Operation<RecordInput, LiveOutput>[] = run.ops.filter((o) => o.type !== 'fail' && !(o.type === 'info' && o.input.f === 'status')).map((o) => {
    if (o.type === 'info' && o.input.f === 'attempt') return { id: o.id, partition: o.user, input: o.input, output: { r: 'maybe' }, call: o.call, ret: o.call };
    return { id: o.id, partition: o.user, input: o.input, ...(o.type === 'ok' && o.output ? { output: o.output } : {}), call: o.call, ret: o.type === 'ok' ? o.ret : null };
  });
  const lin = checkLinearizable(withPendingCharges(recordModel()), ops, { maxStatesPerPartition: opts.maxStatesPerUser });
  const byId = new Map(run.ops.map((o) => [o.id, o]));
  for (const p of lin.partitions) {
    if (p.ok === true) continue;
    const stuck = (p.stuckAt ?? []).map((id) => byId.get(id)).filter((o): o is LiveOp => !!o);
    const at = Math.min(...stuck.map((o) => o.ret ?? o.call), Infinity);
    const what = stuck.slice(0, 4).map((o) => `#${o.id} ${o.input.f}${o.output ? ` -> ${describe(o.output)}` : ''}`).join(', ');
    violations.push(p.ok === 'unknown'
      ? `${p.partition}: linearizability undecided (search budget spent after ${p.explored} states)`
      : `t=${Number.isFinite(at) ? at : 0}: ${p.partition} is not linearizable: no order of its ${p.ops} operations explains ${what || 'the history'}`);
  }
  const users = new Set(run.ops.map((o) => o.user));
  checks.push({ name: 'linearizable', ok: lin.ok === true, detail: `${users.size} users, ${ops.length} operations against the record model${lin.ok === 'unknown' ? ' (undecided for some users)' : ''}` });

  // The guess budget, counted where the KE2s arrive.
  const attackOnly = run.users.filter((u) => u.attackOnly).map((u) => u.name);
  let worst = 0;
  for (const u of attackOnly) {
    // A victim's registration of unknown outcome may never have happened: then every KE2 is a fake.
    if (!run.ops.some((o) => o.user === u && o.input.f === 'register' && o.type === 'ok')) continue;
    const ke2 = run.ops.filter((o) => o.user === u && o.input.f === 'attempt' && o.type === 'ok' && o.output?.r === 'ke2');
    worst = Math.max(worst, ke2.length);
    if (ke2.length > limit) violations.push(`t=${ke2[limit]!.ret}: ${u} (attack-only) got ${ke2.length} KE2s, more than its limit of ${limit}`);
  }
  checks.push({ name: 'guess budget (KE2s counted at the devices)', ok: worst <= limit, detail: `at most ${worst} KE2s per attack-only user (limit ${limit}), ${attackOnly.length} such users` });

  // The counter never goes down where nothing may reset it.
  let backwards = 0;
  for (const u of attackOnly) {
    const seen = run.ops.filter((o) => o.user === u && left(o)).sort((a, b) => a.ret! - b.ret!);
    let floor: { left: number; locked: boolean; op: LiveOp } | undefined;
    for (const o of seen) {
      const v = left(o)!;
      // Only readings invoked after the lowest one completed are ordered after it in real time.
      if (floor && o.call > floor.op.ret! && (v.left > floor.left || (floor.locked && !v.locked))) {
        backwards++;
        violations.push(`t=${o.ret}: ${u} attempts left went back up: ${floor.locked ? 'locked' : floor.left} at #${floor.op.id}, then ${v.locked ? 'locked' : v.left} at #${o.id}`);
      }
      if (!floor || v.left < floor.left || (v.locked && !floor.locked)) floor = { ...v, op: o };
    }
  }
  checks.push({ name: 'counter never goes down', ok: backwards === 0, detail: `${backwards} readings above an earlier one on attack-only users` });

  for (const f of run.foreignK) violations.push(`${f.user} got a K that was never registered for it (#${f.opId})`);
  checks.push({ name: 'K only to its owner', ok: run.foreignK.length === 0, detail: `${run.ops.filter((o) => o.output?.r === 'released').length} K releases` });

  if (run.settings.maliciousChatd) {
    if (run.leaks > 0) violations.push(`ChatD saw a window of a password or K in ${run.leaks} frames`);
    checks.push({ name: 'ChatD blind', ok: run.leaks === 0, detail: `malicious ChatD: ${Object.entries(run.tampering).map(([k, v]) => `${k} ${v}`).join(', ')}` });
  }

  const healed = run.convergedAt !== null;
  if (!healed) violations.push(`t=${run.healedAt}: the fleet did not converge (every replica healthy on one index and digest) after the faults stopped`);
  const serving = run.firstOkAfterHeal !== null;
  if (!serving) violations.push(`t=${run.healedAt}: no operation succeeded after the faults stopped`);
  checks.push({
    name: 'heals and serves', ok: healed && serving,
    detail: `converged ${healed ? `${((run.convergedAt! - run.healedAt) / 1000).toFixed(1)} s` : 'never'} and first success ${serving ? `${((run.firstOkAfterHeal! - run.healedAt) / 1000).toFixed(1)} s` : 'never'} after the faults stopped`,
  });
  return { ok: violations.length === 0, checks, violations };
}

function describe(o: RecordOutput): string {
  switch (o.r) {
    case 'status': return o.state === 'registered' ? `${o.left} left` : o.state;
    case 'wrong': return `wrong, ${o.left} left`;
    case 'released': return `released K${o.k}`;
    default: return o.r;
  }
}

/** The history as the report draws it (one bar per operation; attempts left from what devices read). */
export function liveRunHistory(run: LiveRun): RunHistory {
  const outcome = (o: LiveOp): string | null => {
    if (o.type === 'info') return null;
    if (o.type === 'fail') return 'failed';
    const r = o.output!;
    return r.r === 'wrong' ? 'wrong_password' : r.r === 'status' ? 'ok' : r.r;
  };
  const ops: HistoryOp[] = run.ops.map((o) => ({
    id: o.id, user: o.user, op: o.input.f, correct: o.input.f === 'outcome' && o.input.pw !== -1, start: o.call, end: o.ret ?? o.gaveUp ?? null, outcome: outcome(o),
  }));
  const attempts = run.ops.filter((o) => left(o)).sort((a, b) => a.ret! - b.ret!).map((o) => {
    const v = left(o)!;
    return { at: o.ret!, user: o.user, left: v.left, state: v.locked ? 'locked' : 'registered' };
  });
  return { ops, roles: run.roles, notes: run.notes, attempts, healedAt: run.healedAt, end: run.end, limit: run.settings.limit };
}

/** A saved run (`--report DIR`: summary.json, history.jsonl) back as a LiveRun, for --recheck; a typed error on a bad file. */
export function liveRunFromReport(summaryText: string, historyText: string): LiveRun {
  const bad = (why: string) => new InputError(`not a bkv chaos live report: ${why}`, 'BAD_REPORT');
  let s: { settings?: LiveRun['settings']; run?: Partial<LiveRun> };
  try { s = JSON.parse(summaryText) as typeof s; } catch { throw bad('summary.json is not JSON'); }
  const r = s.run;
  if (!s.settings || typeof s.settings.limit !== 'number' || !r || !Array.isArray(r.users) || typeof r.healedAt !== 'number') throw bad('summary.json has no settings or run');
  const ops: LiveOp[] = [];
  const roles: LiveRun['roles'] = [];
  const notes: LiveRun['notes'] = [];
  for (const [i, line] of historyText.split('\n').entries()) {
    if (!line.trim()) continue;
    let h: Record<string, unknown>;
    try { h = JSON.parse(line) as Record<string, unknown>; } catch { throw bad(`history.jsonl line ${i + 1} is not JSON`); }
    if (h.type === 'role') roles.push(h as unknown as LiveRun['roles'][number]);
    else if (h.type === 'fault') notes.push({ at: Number(h.at), line: String(h.line) });
    else if (h.type === 'ok' || h.type === 'fail' || h.type === 'info') {
      if (typeof h.id !== 'number' || typeof h.user !== 'string' || typeof h.invoke !== 'number' || !h.input || typeof (h.input as { f?: unknown }).f !== 'string') throw bad(`history.jsonl line ${i + 1} is not an operation`);
      ops.push({
        id: h.id, user: h.user, process: String(h.process), input: h.input as LiveOp['input'], type: h.type, call: h.invoke,
        ret: typeof h.complete === 'number' ? h.complete : null, ...(h.output ? { output: h.output as LiveOp['output'] } : {}), ...(typeof h.error === 'string' ? { error: h.error } : {}),
        ...(h.type === 'info' ? { gaveUp: typeof h.gaveUp === 'number' ? h.gaveUp : h.invoke } : {}),
      });
    }
  }
  return {
    settings: s.settings, ops, notes, roles, users: r.users, healedAt: r.healedAt, convergedAt: r.convergedAt ?? null, firstOkAfterHeal: r.firstOkAfterHeal ?? null,
    end: r.end ?? 0, foreignK: r.foreignK ?? [], leaks: r.leaks ?? 0, tampering: r.tampering ?? {}, finalStatus: null, durationMs: 0, serviceLog: [],
  };
}
