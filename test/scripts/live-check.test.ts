// The checks of a live chaos run (scripts/chaos/live-check.ts) on histories made to pass and made
// to break each one: the checker must not pass a bad history, nor fail a good one.
import { describe, expect, it } from 'vitest';
import { checkLiveRun, liveRunFromReport, liveRunHistory } from '../../scripts/chaos/live-check.ts';
import type { LiveOp, LiveRun } from '../../scripts/chaos/live.ts';

let nextId = 1;
type OpSpec = Omit<LiveOp, 'id' | 'process'> & { process?: string };
const op = (o: OpSpec): LiveOp => ({ id: nextId++, process: o.process ?? 'dev', ...o });

function run(ops: LiveOp[], over: Partial<LiveRun> = {}): LiveRun {
  return {
    settings: {
      seed: 1, transport: 'thread', wan: 'none', replicas: 3, users: 1, attackOnlyUsers: 1, attackersPerUser: 1, limit: 3, minutes: 1, healSeconds: 15,
      mutation: null, maliciousChatd: false, faults: ['crash'],
    },
    ops, notes: [{ at: 50, line: 'crash r1' }], roles: [{ at: 0, id: 'r1', role: 'leader', term: 2 }],
    users: [{ name: 'user1', attackOnly: false }, { name: 'user2', attackOnly: true }],
    healedAt: 500, convergedAt: 600, firstOkAfterHeal: 650, end: 1000, foreignK: [], leaks: 0, tampering: {}, finalStatus: null, durationMs: 1000, serviceLog: [],
    ...over,
  };
}

/** One wrong guess on `user`: its attempt (a KE2) and outcome, from t to t+20. */
function guess(user: string, t: number, session: string, result: LiveOp['output']): LiveOp[] {
  return [
    op({ user, input: { f: 'attempt', session }, type: 'ok', output: { r: 'ke2' }, call: t, ret: t + 10 }),
    op({ user, input: { f: 'outcome', session, pw: -1 }, type: 'ok', output: result, call: t + 10, ret: t + 20 }),
  ];
}

function honest(): LiveOp[] {
  return [
    op({ user: 'user1', input: { f: 'register', pw: 1, limit: 3 }, type: 'ok', output: { r: 'ok' }, call: 0, ret: 10 }),
    op({ user: 'user1', input: { f: 'attempt', session: 'a' }, type: 'ok', output: { r: 'ke2' }, call: 20, ret: 30 }),
    op({ user: 'user1', input: { f: 'outcome', session: 'a', pw: 1 }, type: 'ok', output: { r: 'released', k: 1 }, call: 30, ret: 40 }),
    op({ user: 'user2', input: { f: 'register', pw: 1, limit: 3 }, type: 'ok', output: { r: 'ok' }, call: 0, ret: 10 }),
    ...guess('user2', 100, 'b', { r: 'wrong', left: 2 }),
    ...guess('user2', 200, 'c', { r: 'wrong', left: 1 }),
    // Unknown outcome: the device gave up; it may have been charged.
    op({ user: 'user2', input: { f: 'attempt' }, type: 'info', error: 'VAULT_TIMEOUT', call: 300, ret: null, gaveUp: 340 }),
    op({ user: 'user2', input: { f: 'status' }, type: 'ok', output: { r: 'status', state: 'registered', left: 0, limit: 3 }, call: 700, ret: 710 }),
    op({ user: 'user1', input: { f: 'status' }, type: 'ok', output: { r: 'status', state: 'registered', left: 3, limit: 3 }, call: 700, ret: 710 }),
  ];
}

describe('live run checks', () => {
  it('a good history holds every check (an unknown attempt counted as used)', () => {
    const v = checkLiveRun(run(honest()));
    expect(v.violations).toEqual([]);
    expect(v.ok).toBe(true);
    expect(v.checks.map((c) => c.name)).toEqual(['linearizable', 'guess budget (KE2s counted at the devices)', 'counter never goes down', 'K only to its owner', 'heals and serves']);
    expect(v.checks.every((c) => c.ok)).toBe(true);
  });

  it('more KE2s than the limit on an attack-only user fails the budget and linearizability', () => {
    const ops = [
      op({ user: 'user2', input: { f: 'register', pw: 1, limit: 3 }, type: 'ok', output: { r: 'ok' }, call: 0, ret: 10 }),
      ...guess('user2', 100, 'b', { r: 'wrong', left: 2 }),
      ...guess('user2', 200, 'c', { r: 'wrong', left: 1 }),
      ...guess('user2', 300, 'd', { r: 'locked' }),
      ...guess('user2', 400, 'e', { r: 'locked' }),
    ];
    const v = checkLiveRun(run(ops));
    expect(v.ok).toBe(false);
    expect(v.checks.find((c) => c.name.startsWith('guess budget'))!.ok).toBe(false);
    expect(v.violations.join('\n')).toMatch(/user2 \(attack-only\) got 4 KE2s, more than its limit of 3/);
    expect(v.violations.join('\n')).toMatch(/^t=\d+: user2 is not linearizable/m);
    // A registration of unknown outcome may not exist: then the KE2s are fakes, and no budget applies.
    const unsure = checkLiveRun(run([op({ ...ops[0]!, type: 'info', output: undefined, ret: null }), ...ops.slice(1).filter((o) => o.output?.r !== 'locked' && o.output?.r !== 'wrong')]));
    expect(unsure.violations).toEqual([]);
  });

  it('attempts left rising on an attack-only user fails the counter check, a lock lifting too', () => {
    const up = [
      op({ user: 'user2', input: { f: 'register', pw: 1, limit: 3 }, type: 'ok', output: { r: 'ok' }, call: 0, ret: 10 }),
      ...guess('user2', 100, 'b', { r: 'wrong', left: 2 }),
      op({ user: 'user2', input: { f: 'status' }, type: 'ok', output: { r: 'status', state: 'registered', left: 3, limit: 3 }, call: 200, ret: 210 }),
    ];
    const v = checkLiveRun(run(up));
    expect(v.checks.find((c) => c.name === 'counter never goes down')!.ok).toBe(false);
    expect(v.violations.join('\n')).toContain('user2 attempts left went back up: 2 at');
    const unlock = [
      op({ user: 'user2', input: { f: 'status' }, type: 'ok', output: { r: 'status', state: 'locked', left: 0, limit: 3 }, call: 100, ret: 110 }),
      op({ user: 'user2', input: { f: 'status' }, type: 'ok', output: { r: 'status', state: 'registered', left: 0, limit: 3 }, call: 200, ret: 210 }),
    ];
    expect(checkLiveRun(run(unlock)).violations.join('\n')).toContain('went back up: locked');
    // Readings that overlap are not ordered: no violation from those alone.
    const overlap = [
      op({ user: 'user2', input: { f: 'register', pw: 1, limit: 3 }, type: 'ok', output: { r: 'ok' }, call: 0, ret: 10 }),
      op({ user: 'user2', input: { f: 'attempt', session: 'x' }, type: 'ok', output: { r: 'ke2' }, call: 100, ret: 110 }),
      op({ user: 'user2', input: { f: 'status' }, type: 'ok', output: { r: 'status', state: 'registered', left: 2, limit: 3 }, call: 105, ret: 130 }),
      op({ user: 'user2', input: { f: 'status' }, type: 'ok', output: { r: 'status', state: 'registered', left: 3, limit: 3 }, call: 101, ret: 140 }),
    ];
    expect(checkLiveRun(run(overlap)).checks.find((c) => c.name === 'counter never goes down')!.ok).toBe(true);
  });

  it('a K never registered for the user, a ChatD that saw a secret, no healing: each a violation', () => {
    expect(checkLiveRun(run(honest(), { foreignK: [{ user: 'user1', opId: 3 }] })).violations).toEqual(['user1 got a K that was never registered for it (#3)']);
    const evil = run(honest(), { leaks: 2, tampering: { 'flip-up': 4 } });
    evil.settings.maliciousChatd = true;
    const ve = checkLiveRun(evil);
    expect(ve.checks.find((c) => c.name === 'ChatD blind')).toMatchObject({ ok: false, detail: 'malicious ChatD: flip-up 4' });
    const stuck = checkLiveRun(run(honest(), { convergedAt: null, firstOkAfterHeal: null }));
    expect(stuck.violations).toEqual([
      't=500: the fleet did not converge (every replica healthy on one index and digest) after the faults stopped',
      't=500: no operation succeeded after the faults stopped',
    ]);
  });

  it('a lost acknowledged registration is not linearizable (the final read after healing)', () => {
    const ops = [
      op({ user: 'user1', input: { f: 'register', pw: 1, limit: 3 }, type: 'ok', output: { r: 'ok' }, call: 0, ret: 10 }),
      op({ user: 'user1', input: { f: 'status' }, type: 'ok', output: { r: 'status', state: 'none', left: 0, limit: 0 }, call: 700, ret: 710, process: 'checker' }),
    ];
    const v = checkLiveRun(run(ops));
    expect(v.violations).toHaveLength(1);
    expect(v.violations[0]).toMatch(/^t=710: user1 is not linearizable: .*#\d+ status -> none/);
  });

  it('the report history draws an unknown operation until the device gave up, recoveries as attempt and outcome', () => {
    const h = liveRunHistory(run(honest()));
    const info = h.ops.find((o) => o.outcome === null)!;
    expect(info).toMatchObject({ op: 'attempt', start: 300, end: 340 });
    expect(h.ops.filter((o) => o.op === 'outcome').map((o) => o.outcome)).toEqual(['released', 'wrong_password', 'wrong_password']);
    expect(h.ops.find((o) => o.outcome === 'released')!.correct).toBe(true);
    expect(h.attempts.filter((a) => a.user === 'user2').map((a) => a.left)).toEqual([2, 1, 0]);
  });

  it('a saved report reads back for --recheck; a file that is not one is refused with a typed error', () => {
    const r = run(honest());
    const summary = JSON.stringify({ settings: r.settings, run: { users: r.users, healedAt: r.healedAt, convergedAt: r.convergedAt, firstOkAfterHeal: r.firstOkAfterHeal, end: r.end } });
    const history = r.ops.map((o) => JSON.stringify({ type: o.type, id: o.id, process: o.process, user: o.user, f: o.input.f, input: o.input, output: o.output ?? null, error: o.error ?? null, invoke: o.call, complete: o.ret })).join('\n');
    const back = liveRunFromReport(summary, history + '\n' + JSON.stringify({ type: 'role', at: 0, id: 'r1', role: 'leader', term: 2 }));
    expect(back.ops).toHaveLength(r.ops.length);
    expect(checkLiveRun(back).violations).toEqual([]);
    expect(() => liveRunFromReport('{', history)).toThrow(expect.objectContaining({ code: 'BAD_REPORT' }));
    expect(() => liveRunFromReport(summary, '{"type":"ok","id":"x"}')).toThrow(/line 1 is not an operation/);
  });

  it('an attempt of unknown outcome may charge once, at any point after it was sent, never before', () => {
    const reg = op({ user: 'user1', input: { f: 'register', pw: 1, limit: 3 }, type: 'ok', output: { r: 'ok' }, call: 0, ret: 10 });
    const lost = (t: number) => op({ user: 'user1', input: { f: 'attempt' }, type: 'info', error: 'VAULT_TIMEOUT', call: t, ret: null, gaveUp: t + 30 });
    const status = (t: number, left: number) => op({ user: 'user1', input: { f: 'status' }, type: 'ok', output: { r: 'status', state: 'registered', left, limit: 3 }, call: t, ret: t + 5 });
    const lin = (ops: LiveOp[]) => checkLiveRun(run(ops)).checks.find((c) => c.name === 'linearizable')!.ok;
    expect(lin([reg, lost(20), status(100, 3), status(200, 2), status(300, 2)])).toBe(true);
    // Two lost attempts cannot account for three charges, nor one for a reading before it was sent.
    expect(lin([reg, lost(20), lost(30), status(100, 0)])).toBe(false);
    expect(lin([reg, status(15, 2), lost(20)])).toBe(false);
    // Nor can a charge once counted come back.
    expect(lin([reg, lost(20), status(100, 2), status(200, 3)])).toBe(false);
    // A record at its limit may read as locked (the firmware locks it when its last session lapses).
    const atLimit = [reg, ...guess('user1', 20, 'a', { r: 'wrong', left: 2 }), ...guess('user1', 60, 'b', { r: 'wrong', left: 1 }),
      op({ user: 'user1', input: { f: 'attempt', session: 'c' }, type: 'ok', output: { r: 'ke2' }, call: 100, ret: 110 })];
    expect(lin([...atLimit, op({ user: 'user1', input: { f: 'status' }, type: 'ok', output: { r: 'status', state: 'locked', left: 0, limit: 3 }, call: 200, ret: 210 })])).toBe(true);
    expect(lin([...atLimit.slice(0, 3), op({ user: 'user1', input: { f: 'status' }, type: 'ok', output: { r: 'status', state: 'locked', left: 0, limit: 3 }, call: 200, ret: 210 })])).toBe(false);
  });
});
