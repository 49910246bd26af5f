// The linearizability checker on histories whose verdict is known: a one-value register for the
// search itself (real-time order, ties, unknown outcomes, partitions, the budget), the vault record
// model on the firmware's stories and on the bugs it must catch, and random concurrent executions of
// an independent reference vault that must pass as recorded and fail once one answer is made impossible.
import { withPendingCharges } from '../../scripts/chaos/live-check.ts';
import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { checkLinearizable, type Model, type Operation } from '../../scripts/chaos/linearizability.ts';
import { recordModel, type RecordInput, type RecordOutput } from '../../scripts/chaos/record-model.ts';

type RegIn = { f: 'w'; v: number } | { f: 'r' };
type RegOut = 'ok' | number;

const register: Model<number, RegIn, RegOut> = {
  init: () => 0,
  step: (s, i, o) => (i.f === 'w' ? (o === undefined || o === 'ok' ? i.v : null) : o === undefined || o === s ? s : null),
  key: (s) => String(s),
};

/** Ops with ids in the order they are added; `ret: null` leaves the output out, as a recorder would. */
function history<I, O>() {
  const ops: Operation<I, O>[] = [];
  const add = (input: I, output: O | undefined, call: number, ret: number | null, partition = 'u'): number => {
    const id = ops.length;
    ops.push(ret === null ? { id, partition, input, call, ret } : { id, partition, input, output, call, ret });
    return id;
  };
  return { ops, add };
}

const w = (v: number): RegIn => ({ f: 'w', v });
const r: RegIn = { f: 'r' };

describe('checkLinearizable on a register', () => {
  it('accepts a sequential history and an empty one', () => {
    const h = history<RegIn, RegOut>();
    h.add(w(1), 'ok', 0, 1);
    h.add(r, 1, 2, 3);
    h.add(w(2), 'ok', 4, 5);
    h.add(r, 2, 6, 7);
    const v = checkLinearizable(register, h.ops);
    expect(v.ok).toBe(true);
    expect(v.partitions).toEqual([{ partition: 'u', ok: true, ops: 4, explored: 4 }]);
    expect(checkLinearizable(register, []).ok).toBe(true);
  });

  it('lets overlapping writes land in either order, but only one order once both completed', () => {
    for (const seen of [0, 1, 2]) {
      const h = history<RegIn, RegOut>();
      h.add(w(1), 'ok', 0, 10);
      h.add(w(2), 'ok', 5, 15);
      h.add(r, seen, 6, 7);
      expect(checkLinearizable(register, h.ops).ok).toBe(true);
    }
    for (const last of [1, 2]) {
      const h = history<RegIn, RegOut>();
      h.add(w(1), 'ok', 0, 10);
      h.add(w(2), 'ok', 5, 15);
      h.add(r, last, 20, 21);
      h.add(r, last, 22, 23);
      expect(checkLinearizable(register, h.ops).ok).toBe(true);
    }
    const h = history<RegIn, RegOut>();
    h.add(w(1), 'ok', 0, 10);
    h.add(w(2), 'ok', 5, 15);
    h.add(r, 1, 20, 21);
    h.add(r, 2, 22, 23);
    expect(checkLinearizable(register, h.ops).ok).toBe(false);
  });

  it('rejects a stale read after a completed write and names it', () => {
    const h = history<RegIn, RegOut>();
    const w1 = h.add(w(1), 'ok', 0, 1);
    const w2 = h.add(w(2), 'ok', 2, 3);
    const read = h.add(r, 1, 4, 5);
    const v = checkLinearizable(register, h.ops);
    expect(v.ok).toBe(false);
    expect(v.partitions[0]).toMatchObject({ ok: false, linearized: [w1, w2], stuckAt: [read] });
  });

  it('orders a return before a call at the same instant, and keeps instantaneous ops concurrent', () => {
    const before = history<RegIn, RegOut>();
    before.add(w(1), 'ok', 0, 5);
    before.add(r, 0, 5, 6);
    expect(checkLinearizable(register, before.ops).ok).toBe(false);
    for (const seen of [0, 1]) {
      const h = history<RegIn, RegOut>();
      h.add(w(1), 'ok', 3, 3);
      h.add(r, seen, 3, 3);
      h.add(r, 1, 3, 4);
      expect(checkLinearizable(register, h.ops).ok).toBe(true);
    }
  });

  it('lets an unknown write take effect or not, but not un-happen once seen', () => {
    for (const seen of [1, 2]) {
      const h = history<RegIn, RegOut>();
      h.add(w(1), 'ok', 0, 1);
      h.add(w(2), undefined, 2, null);
      h.add(r, seen, 3, 4);
      h.add(r, seen, 5, 6);
      expect(checkLinearizable(register, h.ops).ok).toBe(true);
    }
    const h = history<RegIn, RegOut>();
    h.add(w(1), 'ok', 0, 1);
    h.add(w(2), undefined, 2, null);
    h.add(r, 2, 3, 4);
    h.add(r, 1, 5, 6);
    expect(checkLinearizable(register, h.ops).ok).toBe(false);
  });

  it('checks partitions independently and names the one that fails', () => {
    const h = history<RegIn, RegOut>();
    h.add(w(1), 'ok', 0, 1, 'alice');
    h.add(w(5), 'ok', 0, 1, 'bob');
    h.add(r, 1, 2, 3, 'alice');
    const stale = h.add(r, 0, 2, 3, 'bob');
    const v = checkLinearizable(register, h.ops);
    expect(v.ok).toBe(false);
    expect(v.partitions.map((p) => [p.partition, p.ok])).toEqual([['alice', true], ['bob', false]]);
    expect(v.partitions[1]!.stuckAt).toEqual([stale]);
  });

  it('gives up as unknown when the search outgrows its budget', () => {
    const h = history<RegIn, RegOut>();
    for (let v = 1; v <= 12; v++) h.add(w(v), 'ok', 0, 100);
    h.add(r, 99, 200, 201);
    const full = checkLinearizable(register, h.ops);
    expect(full.ok).toBe(false);
    expect(full.partitions[0]!.explored).toBeGreaterThan(10);
    const capped = checkLinearizable(register, h.ops, { maxStatesPerPartition: 10 });
    expect(capped.ok).toBe('unknown');
    expect(capped.partitions[0]!.ok).toBe('unknown');
  });

  it('refuses a malformed history', () => {
    expect(() => checkLinearizable(register, [{ id: 1, partition: 'u', input: r, output: 0, call: 5, ret: 4 }])).toThrow(RangeError);
    expect(() => checkLinearizable(register, [
      { id: 1, partition: 'u', input: r, output: 0, call: 0, ret: 1 },
      { id: 1, partition: 'v', input: r, output: 0, call: 0, ret: 1 },
    ])).toThrow(/twice/);
  });
});

type Step = [RecordInput, RecordOutput | undefined];

/** One client's steps back to back; an undefined output makes the step's outcome unknown (it never returns). */
function sequential(steps: Step[]): Operation<RecordInput, RecordOutput>[] {
  const h = history<RecordInput, RecordOutput>();
  steps.forEach(([input, output], i) => h.add(input, output, 10 * i, output === undefined ? null : 10 * i + 5));
  return h.ops;
}

const model = recordModel();
const ok = (ops: Operation<RecordInput, RecordOutput>[]) => checkLinearizable(model, ops).ok;

const reg = (pw: number, limit: number): RecordInput => ({ f: 'register', pw, limit });
const attempt = (session?: string): RecordInput => (session === undefined ? { f: 'attempt' } : { f: 'attempt', session });
const guess = (session: string, pw: number): RecordInput => ({ f: 'outcome', session, pw });
const status: RecordInput = { f: 'status' };
const DONE: RecordOutput = { r: 'ok' };
const KE2: RecordOutput = { r: 'ke2' };
const LOCKED: RecordOutput = { r: 'locked' };
const wrong = (left: number): RecordOutput => ({ r: 'wrong', left });
const released = (k: number): RecordOutput => ({ r: 'released', k });
const registered = (left: number, limit: number): RecordOutput => ({ r: 'status', state: 'registered', left, limit });

describe('the record model on histories that must pass', () => {
  it('counts wrong guesses down to a lock', () => {
    expect(ok(sequential([
      [reg(1, 3), DONE], [status, registered(3, 3)],
      [attempt('a'), KE2], [guess('a', 2), wrong(2)],
      [attempt('b'), KE2], [guess('b', 2), wrong(1)],
      [attempt('c'), KE2], [guess('c', 2), LOCKED],
      [status, { r: 'status', state: 'locked', left: 0, limit: 3 }],
      [attempt('d'), LOCKED],
    ]))).toBe(true);
  });

  it('interleaves the owner and an attacker: the release resets the attempts charged before it', () => {
    // The attacker was charged before the owner's release: it resets both charges.
    const h1 = history<RecordInput, RecordOutput>();
    h1.add(reg(1, 10), DONE, 0, 5);
    h1.add(attempt('owner'), KE2, 10, 20);
    h1.add(attempt('thief'), KE2, 15, 25);
    h1.add(guess('owner', 1), released(7), 30, 40);
    h1.add(guess('thief', 2), wrong(10), 45, 50);
    expect(ok(h1.ops)).toBe(true);

    // The attacker's attempt overlaps the release: charged after it, so it shows.
    const h2 = history<RecordInput, RecordOutput>();
    h2.add(reg(1, 10), DONE, 0, 5);
    h2.add(attempt('owner'), KE2, 10, 20);
    h2.add(guess('owner', 1), released(7), 30, 40);
    h2.add(attempt('thief'), KE2, 35, 45);
    h2.add(guess('thief', 2), wrong(9), 50, 55);
    expect(ok(h2.ops)).toBe(true);

    // Once the attacker's attempt starts after the release completed, the charge cannot be undone.
    const h3 = history<RecordInput, RecordOutput>();
    h3.add(reg(1, 10), DONE, 0, 5);
    h3.add(attempt('owner'), KE2, 10, 20);
    h3.add(guess('owner', 1), released(7), 30, 40);
    h3.add(attempt('thief'), KE2, 41, 45);
    h3.add(guess('thief', 2), wrong(10), 50, 55);
    expect(ok(h3.ops)).toBe(false);
  });

  it('lets an attempt of unknown outcome have charged or not', () => {
    for (const left of [9, 10]) {
      expect(ok(sequential([[reg(1, 10), DONE], [attempt(), undefined], [status, registered(left, 10)]]))).toBe(true);
    }
    expect(ok(sequential([[reg(1, 10), DONE], [attempt(), undefined], [status, registered(8, 10)]]))).toBe(false);
  });

  it('answers a user that does not exist with a fake KE2 and a wrong guess', () => {
    expect(ok(sequential([
      [status, { r: 'status', state: 'none', left: 0, limit: 0 }],
      [attempt('x'), KE2], [guess('x', 1), wrong(0)],
      [reg(1, 3), DONE], [{ f: 'delete' }, DONE],
      [attempt('y'), KE2], [guess('y', 1), wrong(0)],
    ]))).toBe(true);
  });

  it('tells a session from before a re-registration that the record changed', () => {
    expect(ok(sequential([
      [reg(1, 3), DONE], [attempt('a'), KE2], [reg(2, 3), DONE], [guess('a', 1), { r: 'changed' }],
      [status, registered(3, 3)], [reg(3, 3), { r: 'stale' }], [attempt('b'), KE2], [guess('b', 2), released(4)],
    ]))).toBe(true);
  });

  it('keeps the count after a release when the firmware does not reset on success', () => {
    const steps: Step[] = [[reg(1, 3), DONE], [attempt('a'), KE2], [guess('a', 1), released(1)], [status, registered(2, 3)]];
    expect(checkLinearizable(recordModel({ resetOnSuccess: false }), sequential(steps)).ok).toBe(true);
    expect(ok(sequential(steps))).toBe(false);
  });
});

describe('the record model on histories that must fail', () => {
  it('the counter going up with no release or registration', () => {
    expect(ok(sequential([
      [reg(1, 10), DONE], [attempt('a'), KE2], [attempt('b'), KE2], [status, registered(8, 10)], [status, registered(9, 10)],
    ]))).toBe(false);
  });

  it('more KE2s than the limit without a lock', () => {
    expect(ok(sequential([[reg(1, 2), DONE], [attempt('a'), KE2], [attempt('b'), KE2], [attempt('c'), KE2]]))).toBe(false);
    expect(ok(sequential([[reg(1, 2), DONE], [attempt('a'), KE2], [attempt('b'), KE2], [attempt('c'), LOCKED]]))).toBe(true);
  });

  it('a release after a completed lock', () => {
    const base: Step[] = [[reg(1, 2), DONE], [attempt('a'), KE2], [attempt('b'), KE2], [guess('a', 2), LOCKED]];
    expect(ok(sequential([...base, [guess('b', 1), released(1)]]))).toBe(false);
    expect(ok(sequential([...base, [guess('b', 1), LOCKED]]))).toBe(true);
  });

  it('two releases of one registration with different K', () => {
    const base: Step[] = [[reg(1, 5), DONE], [attempt('a'), KE2], [guess('a', 1), released(1)], [attempt('b'), KE2]];
    expect(ok(sequential([...base, [guess('b', 1), released(2)]]))).toBe(false);
    expect(ok(sequential([...base, [guess('b', 1), released(1)]]))).toBe(true);
    // A new registration has a new K.
    expect(ok(sequential([...base.slice(0, 3), [reg(1, 5), DONE], [attempt('b'), KE2], [guess('b', 1), released(2)]]))).toBe(true);
  });

  it('an acknowledged registration lost', () => {
    expect(ok(sequential([[reg(1, 3), DONE], [status, { r: 'status', state: 'none', left: 0, limit: 0 }]]))).toBe(false);
  });

  it('a wrong guess with more attempts left than possible', () => {
    expect(ok(sequential([[reg(1, 3), DONE], [attempt('a'), KE2], [guess('a', 2), wrong(3)]]))).toBe(false);
  });

  it('a stale attempts-left after a completed wrong guess', () => {
    expect(ok(sequential([[reg(1, 5), DONE], [attempt('a'), KE2], [guess('a', 2), wrong(4)], [status, registered(5, 5)]]))).toBe(false);
  });

  it('an outcome for a session that never had a KE2', () => {
    expect(ok(sequential([[reg(1, 5), DONE], [guess('a', 1), released(1)]]))).toBe(false);
  });
});

/** mulberry32: the generator below draws from a seed so the big history is the same every run. */
function rngOf(seed: number): (n: number) => number {
  let a = seed >>> 0;
  return (n) => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return Math.floor((((t ^ (t >>> 14)) >>> 0) / 4294967296) * n);
  };
}

/**
 * The vault record written the plain imperative way, apart from the model, so the random histories
 * check the model against a second reading of the firmware as well as the search.
 */
class ReferenceRecord {
  exists = false;
  locked = false;
  used = 0;
  limit = 0;
  pw = -1;
  ver = 0;
  private readonly ks = new Map<number, number>();
  private nextK = 100;
  readonly sessions = new Map<string, { ver: number; pw: number }>();

  apply(i: RecordInput): RecordOutput {
    switch (i.f) {
      case 'register':
        Object.assign(this, { exists: true, locked: false, used: 0, limit: i.limit, pw: i.pw });
        this.ver++;
        return { r: 'ok' };
      case 'delete':
        this.exists = false;
        return { r: 'ok' };
      case 'status':
        if (!this.exists) return { r: 'status', state: 'none', left: 0, limit: 0 };
        return { r: 'status', state: this.locked ? 'locked' : 'registered', left: this.limit - this.used, limit: this.limit };
      case 'attempt':
        if (this.exists && (this.locked || this.used >= this.limit)) {
          this.locked = true;
          return { r: 'locked' };
        }
        if (this.exists) this.used++;
        if (i.session !== undefined) this.sessions.set(i.session, this.exists ? { ver: this.ver, pw: this.pw } : { ver: -1, pw: -1 });
        return { r: 'ke2' };
      case 'outcome': {
        const s = this.sessions.get(i.session)!;
        this.sessions.delete(i.session);
        if (!this.exists || s.ver < 0) return { r: 'wrong', left: 0 };
        if (this.locked) return { r: 'locked' };
        if (s.ver !== this.ver) return { r: 'changed' };
        if (i.pw === s.pw) {
          this.used = 0;
          if (!this.ks.has(this.ver)) this.ks.set(this.ver, this.nextK++);
          return { r: 'released', k: this.ks.get(this.ver)! };
        }
        if (this.used >= this.limit) {
          this.locked = true;
          return { r: 'locked' };
        }
        return { r: 'wrong', left: this.limit - this.used };
      }
    }
  }
}

interface Generated {
  ops: Operation<RecordInput, RecordOutput>[];
  /** For each outcome op, its attempt's op id. */
  attemptOf: Map<number, number>;
}

/**
 * Clients issuing ops back to back against the reference record; each op takes effect at a point
 * strictly inside its own [call, ret], so the history is linearizable by construction. Integer times
 * make ties between one op's return and another's call common. Now and then an op's answer is lost
 * (ret null): it took effect or never did, and the client moves on without knowing.
 */
function generate(seed: number, clients: number, total: number): Generated {
  const rnd = rngOf(seed);
  const rec = new ReferenceRecord();
  const ops: Operation<RecordInput, RecordOutput>[] = [];
  const attemptOf = new Map<number, number>();
  const pending: ({ session: string; op: number } | undefined)[] = Array.from({ length: clients }, () => undefined);
  type Ev = { at: number; kind: 'call'; client: number } | { at: number; kind: 'effect' | 'return'; op: number; client: number; lost: boolean };
  const queue: Ev[] = Array.from({ length: clients }, (_, client) => ({ at: rnd(5), kind: 'call' as const, client }));
  let issued = 0;
  let sessions = 0;
  while (queue.length > 0) {
    let m = 0;
    for (let j = 1; j < queue.length; j++) if (queue[j]!.at < queue[m]!.at) m = j;
    const ev = queue.splice(m, 1)[0]!;
    if (ev.kind === 'call') {
      if (issued++ >= total) continue;
      const c = ev.client;
      const roll = rnd(100);
      let input: RecordInput;
      const mine = pending[c];
      if (roll < 3) input = reg(rnd(3), 1 + rnd(5));
      else if (roll < 4) input = { f: 'delete' };
      else if (roll < 30) input = status;
      else if (mine && roll < 99) input = guess(mine.session, rnd(3));
      else input = attempt(`c${c}s${sessions++}`);
      // A client holds one session at a time: a new attempt or a guess gives the old one up.
      if (input.f === 'attempt' || input.f === 'outcome') pending[c] = undefined;
      const lost = rnd(40) === 0;
      if (lost && input.f === 'attempt') input = attempt();
      const id = ops.length;
      ops.push({ id, partition: 'user', input, call: ev.at, ret: null });
      if (input.f === 'outcome') attemptOf.set(id, mine!.op);
      if (!lost || rnd(2) === 0) queue.push({ at: ev.at + 1 + rnd(lost ? 200 : 20), kind: 'effect', op: id, client: c, lost });
      if (lost) queue.push({ at: ev.at + 30 + rnd(10), kind: 'call', client: c });
    } else if (ev.kind === 'effect') {
      const op = ops[ev.op]!;
      const out = rec.apply(op.input);
      if (!ev.lost) {
        op.output = out;
        queue.push({ at: ev.at + 1 + rnd(20), kind: 'return', op: ev.op, client: ev.client, lost: false });
      }
    } else {
      const op = ops[ev.op]!;
      op.ret = ev.at;
      if (op.input.f === 'attempt' && op.input.session !== undefined && op.output?.r === 'ke2') pending[ev.client] = { session: op.input.session, op: op.id };
      queue.push({ at: ev.at + rnd(4), kind: 'call', client: ev.client });
    }
  }
  return { ops, attemptOf };
}

/**
 * Answers that no linearization can give: left out of 0..limit for a status, a wrong guess with
 * nothing left, or a second K for one registration where no registration can fall between the two
 * releases (so both sessions certainly saw the same one).
 */
function impossibleAnswers(g: Generated): { op: number; output: RecordOutput }[] {
  const out: { op: number; output: RecordOutput }[] = [];
  const done = g.ops.filter((o) => o.ret !== null);
  const registers = g.ops.filter((o) => o.input.f === 'register');
  for (const o of done) {
    if (o.input.f === 'status') {
      const limit = o.output?.r === 'status' && o.output.state !== 'none' ? o.output.limit : 1;
      out.push({ op: o.id, output: registered(limit + 1, limit) });
    }
    if (o.input.f === 'outcome') out.push({ op: o.id, output: wrong(-1) });
    if (o.output?.r !== 'released') continue;
    for (const first of done) {
      if (first.output?.r !== 'released' || first.ret! >= o.call) continue;
      const from = Math.min(g.ops[g.attemptOf.get(first.id)!]!.call, g.ops[g.attemptOf.get(o.id)!]!.call);
      const clear = registers.every((x) => x.call >= o.ret! || (x.ret !== null && x.ret <= from));
      if (clear) {
        out.push({ op: o.id, output: released(first.output.k + 1000) });
        break;
      }
    }
  }
  return out;
}

function corrupt(g: Generated, bad: { op: number; output: RecordOutput }): Operation<RecordInput, RecordOutput>[] {
  return g.ops.map((o) => (o.id === bad.op ? { ...o, output: bad.output } : o));
}

describe('the record model on random concurrent executions', () => {
  it('accepts them as recorded and rejects them with one impossible answer', () => {
    const kinds = { status: 0, outcome: 0, k: 0 };
    fc.assert(fc.property(
      fc.integer(), fc.integer({ min: 2, max: 4 }), fc.integer({ min: 5, max: 60 }), fc.nat(),
      (seed, clients, total, pick) => {
        const g = generate(seed, clients, total);
        expect(checkLinearizable(model, g.ops).ok).toBe(true);
        const bad = impossibleAnswers(g);
        if (bad.length === 0) return;
        const b = bad[pick % bad.length]!;
        kinds[b.output.r === 'status' ? 'status' : b.output.r === 'wrong' ? 'outcome' : 'k']++;
        const v = checkLinearizable(model, corrupt(g, b));
        expect(v.ok).toBe(false);
        // A second K is the rarest candidate; check it whenever there is one.
        const k = bad.find((x) => x.output.r === 'released');
        if (k && k !== b) expect(checkLinearizable(model, corrupt(g, k)).ok).toBe(false);
      },
    ), { numRuns: 100 });
    expect(kinds.status + kinds.outcome).toBeGreaterThan(0);
  });

  it('checks a 3,000-op history of 8 concurrent clients, unknown attempts as pending charges (as the live check does)', () => {
    const g = generate(20240607, 8, 3000);
    expect(g.ops.length).toBe(3000);
    expect(g.ops.some((o) => o.ret === null)).toBe(true);
    // As recorded: the lost ops are operations of unknown outcome the search may place or leave out.
    expect(checkLinearizable(model, g.ops).ok).toBe(true);
    // As the live check has it: a lost attempt is a charge that may land later (live-check.ts).
    const asLive = (ops: typeof g.ops) => ops.map((o) => (o.ret === null && o.input.f === 'attempt' && o.input.session === undefined ? { ...o, output: { r: 'maybe' as const }, ret: o.call } : o));
    const live = withPendingCharges(model);
    expect(checkLinearizable(live, asLive(g.ops)).ok).toBe(true);
    // A reading of more attempts left than the limit: impossible however the charges landed. (Early
    // in the history: refuting means exhausting every order before it, which a budget bounds.)
    const read = g.ops.find((o, i) => i > 300 && o.output?.r === 'status' && o.output.state === 'registered')!;
    const broken = g.ops.map((o) => (o === read && o.output?.r === 'status' ? { ...o, output: { ...o.output, left: o.output.limit + 1 } } : o));
    const v = checkLinearizable(live, asLive(broken));
    expect(v.ok).toBe(false);
    expect(v.partitions[0]!.stuckAt).toContain(read.id);
  });
});
