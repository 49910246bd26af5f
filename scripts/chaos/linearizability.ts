// A linearizability checker for histories recorded against the live fleet: Wing & Gong's search with
// Lowe's memoisation, the shape Porcupine uses. The simulator's oracle sees the replicas' state; a
// live run only sees what clients were told and when, so this is the check that needs no inside view.
// Pure: the caller records the history, this only judges it.
//
// Ops whose outcome is unknown (a timeout, a crash) are what make such searches blow up, as each
// may take effect at any later point or never. Three things keep them in check here, each exact:
// they are tried only after every completed candidate; of several with equal inputs only the
// earliest-called open one is; and a configuration is dropped when one that differs only in having
// linearized fewer of them already failed.

export interface Model<S, I, O> {
  init(): S;
  /** Next state if `input` producing `output` is legal in `state`, else null. output === undefined means the
   *  operation's outcome is unknown (it may have taken effect, with any output): return the state after it took effect.
   *  Returning `state` itself for a step that changes nothing spares the search a key() call. */
  step(state: S, input: I, output: O | undefined): S | null;
  /** Canonical string of a state, for the memo cache (equal states -> equal strings). States that no
   *  sequence of ops can tell apart may share a string; states that some can must not. */
  key(state: S): string;
}

export interface Operation<I, O> {
  id: number;
  partition: string;
  input: I;
  output?: O;
  call: number;
  ret: number | null;
}

export interface PartitionVerdict {
  partition: string;
  ok: boolean | 'unknown';
  ops: number;
  explored: number;
  /** when not ok: ids of the longest linearizable prefix found (in linearization order) and the ops of the
   *  first return that could not be linearized, so a report can point at them */
  linearized?: number[];
  stuckAt?: number[];
}

export interface CheckResult {
  ok: boolean | 'unknown';
  partitions: PartitionVerdict[];
}

const DEFAULT_BUDGET = 2_000_000;

/**
 * Checks each partition on its own: linearizability is compositional (Herlihy & Wing), so a history is
 * linearizable exactly when every per-object sub-history is, and small searches beat one big one.
 */
export function checkLinearizable<S, I, O>(model: Model<S, I, O>, ops: Operation<I, O>[], opts: { maxStatesPerPartition?: number } = {}): CheckResult {
  const budget = opts.maxStatesPerPartition ?? DEFAULT_BUDGET;
  const ids = new Set<number>();
  const byPartition = new Map<string, Operation<I, O>[]>();
  for (const op of ops) {
    if (ids.has(op.id)) throw new Error(`operation id ${op.id} appears twice`);
    ids.add(op.id);
    if (!Number.isFinite(op.call)) throw new RangeError(`operation ${op.id}: call time ${op.call} is not finite`);
    if (op.ret !== null && !(op.ret >= op.call)) throw new RangeError(`operation ${op.id}: returns (${op.ret}) before its call (${op.call})`);
    let list = byPartition.get(op.partition);
    if (!list) byPartition.set(op.partition, (list = []));
    list.push(op);
  }
  const partitions = [...byPartition.keys()].sort().map((p) => checkPartition(model, p, byPartition.get(p)!, budget));
  const ok = partitions.some((v) => v.ok === false) ? false : partitions.some((v) => v.ok === 'unknown') ? 'unknown' : true;
  return { ok, partitions };
}

/**
 * Where an event sorts among events at the same instant. A return at t precedes a call at t (the ops
 * are real-time ordered), but an op that took no time must still call before it returns; zero-length
 * ops at one instant call together and then return together, so they stay concurrent with each other
 * rather than being given an order nobody observed.
 */
function rank(call: boolean, zeroLength: boolean): number {
  if (!call && !zeroLength) return 0;
  if (call && zeroLength) return 1;
  if (!call) return 2;
  return 3;
}

/**
 * A canonical string for plain data (primitives, arrays, plain objects), or undefined for anything
 * else: two inputs are only treated as interchangeable when this proves them equal.
 */
function plainKey(v: unknown): string | undefined {
  if (v === null || typeof v === 'boolean' || typeof v === 'string') return JSON.stringify(v);
  if (typeof v === 'number') return Number.isFinite(v) ? String(v) : undefined;
  if (Array.isArray(v)) {
    const parts: string[] = [];
    for (const x of v) {
      const k = plainKey(x);
      if (k === undefined) return undefined;
      parts.push(k);
    }
    return `[${parts.join(',')}]`;
  }
  if (typeof v === 'object' && Object.getPrototypeOf(v) === Object.prototype) {
    const parts: string[] = [];
    for (const name of Object.keys(v as object).sort()) {
      const x = (v as Record<string, unknown>)[name];
      if (x === undefined) continue;
      const k = plainKey(x);
      if (k === undefined) return undefined;
      parts.push(`${JSON.stringify(name)}:${k}`);
    }
    return `{${parts.join(',')}}`;
  }
  return undefined;
}

/** A configuration the search has entered: which unknown ops it had linearized, and whether it is done. */
interface Visited {
  unknown: bigint;
  /** Fully explored without success: then nothing it dominates can succeed either. */
  closed: boolean;
}

function checkPartition<S, I, O>(model: Model<S, I, O>, partition: string, unsorted: Operation<I, O>[], budget: number): PartitionVerdict {
  const ops = [...unsorted].sort((a, b) => a.call - b.call || a.id - b.id);
  const n = ops.length;

  // Completed ops and unknown ones are kept apart. Completed ops must all be linearized, in the list
  // of calls and returns Porcupine walks; unknown ones may be linearized any time after their call, or
  // never, so they sit in a list of their own that is only tried once the completed candidates are.
  const events: { time: number; rank: number; op: number; call: boolean }[] = [];
  for (let i = 0; i < n; i++) {
    const op = ops[i]!;
    const zero = op.ret === op.call;
    events.push({ time: op.call, rank: rank(true, zero), op: i, call: true });
    events.push({ time: op.ret ?? Infinity, rank: rank(false, zero), op: i, call: false });
  }
  events.sort((a, b) => (a.time === b.time ? 0 : a.time < b.time ? -1 : 1) || a.rank - b.rank || a.op - b.op);

  // Entries are numbered by their place in time, so "called before that return" is a comparison.
  const E = 2 * n;
  const HEAD = E;
  const TAIL = E + 1;
  const opOf = new Int32Array(E);
  const isCall = new Uint8Array(E);
  const callAt = new Int32Array(n);
  const retAt = new Int32Array(n);
  // Completed ops are numbered in the order of their calls, so the first call still in the list is
  // the lowest one not linearized: every lower bit is set, and the memo key can start there.
  const slot = new Int32Array(n);
  const unknownOps: number[] = [];
  let knownCount = 0;
  events.forEach((ev, p) => {
    opOf[p] = ev.op;
    isCall[p] = ev.call ? 1 : 0;
    if (ev.call) {
      callAt[ev.op] = p;
      if (ops[ev.op]!.ret === null) slot[ev.op] = unknownOps.push(ev.op) - 1;
      else slot[ev.op] = knownCount++;
    } else retAt[ev.op] = p;
  });
  const next = new Int32Array(E + 2);
  const prev = new Int32Array(E + 2);
  let last = HEAD;
  for (let p = 0; p < E; p++) {
    if (ops[opOf[p]!]!.ret === null) continue;
    next[last] = p;
    prev[p] = last;
    last = p;
  }
  next[last] = TAIL;
  prev[TAIL] = last;

  const m = unknownOps.length;
  const UHEAD = m;
  const UTAIL = m + 1;
  const unext = new Int32Array(m + 2);
  const uprev = new Int32Array(m + 2);
  last = UHEAD;
  for (let u = 0; u < m; u++) {
    unext[last] = u;
    uprev[u] = last;
    last = u;
  }
  unext[last] = UTAIL;
  uprev[UTAIL] = last;

  // Unlinked entries keep their own links, so undoing in reverse order restores a list exactly.
  const unlink = (nx: Int32Array, pv: Int32Array, x: number) => {
    nx[pv[x]!] = nx[x]!;
    pv[nx[x]!] = pv[x]!;
  };
  const relink = (nx: Int32Array, pv: Int32Array, x: number) => {
    nx[pv[x]!] = x;
    pv[nx[x]!] = x;
  };

  // Unknown ops with equal inputs are interchangeable, and the earlier-called of two can stand in
  // wherever the later one was linearized. So one may only be linearized after every earlier one of
  // its kind is: without this, k pending timeouts of one kind (say, attempts) are 2^k subsets to try
  // where only the k + 1 counts differ.
  const waitsFor = new Int32Array(m).fill(-1);
  const lastOfKind = new Map<string, number>();
  for (let u = 0; u < m; u++) {
    const kind = plainKey(ops[unknownOps[u]!]!.input);
    if (kind === undefined) continue;
    const before = lastOfKind.get(kind);
    if (before !== undefined) waitsFor[u] = before;
    lastOfKind.set(kind, u);
  }

  const known = new Uint32Array((knownCount + 31) >>> 5);
  /** The highest completed op linearized, or -1: no bit above it is set. */
  let highest = -1;
  /**
   * The linearized completed ops as a string: the first one not linearized (all below it are), then
   * the words from there to `upTo`, the highest one linearized. Within the window of concurrent ops
   * that is a word or two, where the whole bitset would be n/32.
   */
  const knownKey = (upTo: number): string => {
    const first = next[HEAD] === TAIL ? knownCount : slot[opOf[next[HEAD]!]!]!;
    let k = `${first}`;
    for (let w = first >>> 5; w <= upTo >>> 5 && upTo > first; w++) k += `,${known[w]!.toString(36)}`;
    return k;
  };
  // The same set twice: words for the per-candidate test, a bigint for the memo's inclusion test.
  const unknownWords = new Uint32Array((m + 31) >>> 5);
  let unknown = 0n;
  const flip = (k: number) => { known[k >>> 5] ^= 1 << (k & 31); };
  const flipUnknown = (u: number) => { unknownWords[u >>> 5] ^= 1 << (u & 31); };

  // Keyed by the completed ops linearized and the model state. Which unknown ops were linearized is
  // compared by inclusion: with all else equal, having linearized fewer of them only leaves more
  // choices, so a configuration is pruned when one with a subset of its unknown ops already failed.
  // That is what keeps a timed-out op whose effect was later overwritten (a register, say) from
  // doubling the rest of the search.
  const seen = new Map<string, Visited[]>();
  const stack: { op: number; at: number; bound: number; highest: number; state: S; key: string; visit: Visited }[] = [];
  let state = model.init();
  let stateKey = model.key(state);
  let explored = 0;
  let outOfBudget = false;
  // The deepest dead end, for the report. Its path is copied only from the lowest depth the stack
  // has been popped to since the last copy: the part below did not change, and copying whole paths
  // of a long history at every new record would be quadratic.
  let best = -1;
  const bestPath = new Int32Array(n);
  let unchangedBelow = 0;
  let bestStuck: number[] = [];

  const verdict = (ok: boolean | 'unknown'): PartitionVerdict => {
    const v: PartitionVerdict = { partition, ok, ops: n, explored };
    if (ok !== true) {
      v.linearized = [...bestPath.subarray(0, Math.max(best, 0))].map((i) => ops[i]!.id);
      v.stuckAt = bestStuck;
    }
    return v;
  };

  /** Undoes taking completed op i (call entry `at`) out of the list. */
  const putBack = (i: number, at: number) => {
    relink(next, prev, retAt[i]!);
    relink(next, prev, at);
    flip(slot[i]!);
  };

  /** Linearizes op i next if the model allows it and the configuration is new; `at` is its list node. */
  const tryLift = (i: number, at: number, bound: number): boolean => {
    const op = ops[i]!;
    const isUnknown = op.ret === null;
    if (isUnknown) {
      const w = waitsFor[slot[i]!]!;
      if (w >= 0 && (unknownWords[w >>> 5]! & (1 << (w & 31))) === 0) return false;
    }
    const after = model.step(state, op.input, isUnknown ? undefined : op.output);
    if (after === null) return false;
    // An unknown op that changes nothing is better never linearized: leaving it keeps it available,
    // and a search that succeeds with it here succeeds without it. Every open unknown op is tried in
    // every configuration the search leaves, so the cheap test (the model handed back the same
    // state) goes first.
    if (isUnknown && after === state) return false;
    const afterKey = model.key(after);
    if (isUnknown && afterKey === stateKey) return false;
    const nextUnknown = isUnknown ? unknown | (1n << BigInt(at)) : unknown;
    if (!isUnknown) {
      flip(slot[i]!);
      unlink(next, prev, at);
      unlink(next, prev, retAt[i]!);
    }
    const memo = `${knownKey(isUnknown ? highest : Math.max(highest, slot[i]!))}|${afterKey}`;
    const visits = seen.get(memo);
    if (visits?.some((v) => v.unknown === nextUnknown || (v.closed && (v.unknown & ~nextUnknown) === 0n))) {
      if (!isUnknown) putBack(i, at);
      return false;
    }
    if (++explored > budget) {
      if (!isUnknown) putBack(i, at);
      outOfBudget = true;
      return false;
    }
    const visit: Visited = { unknown: nextUnknown, closed: false };
    if (visits) visits.push(visit);
    else seen.set(memo, [visit]);
    stack.push({ op: i, at, bound, highest, state, key: stateKey, visit });
    if (isUnknown) {
      flipUnknown(at);
      unlink(unext, uprev, at);
    } else highest = Math.max(highest, slot[i]!);
    state = after;
    stateKey = afterKey;
    unknown = nextUnknown;
    return true;
  };

  let inUnknown = false;
  let e = next[HEAD]!;
  let u = UHEAD;
  let bound = 0;
  for (;;) {
    if (next[HEAD] === TAIL) return verdict(true);
    if (!inUnknown) {
      if (isCall[e]) {
        const lifted = tryLift(opOf[e]!, e, 0);
        if (outOfBudget) return verdict('unknown');
        e = lifted ? next[HEAD]! : next[e]!;
        continue;
      }
      inUnknown = true;
      bound = e;
      u = unext[UHEAD]!;
      continue;
    }
    if (u !== UTAIL && callAt[unknownOps[u]!]! < bound) {
      const lifted = tryLift(unknownOps[u]!, u, bound);
      if (outOfBudget) return verdict('unknown');
      if (lifted) {
        inUnknown = false;
        e = next[HEAD]!;
      } else u = unext[u]!;
      continue;
    }

    // Every candidate before the return at `bound` failed: it cannot be linearized from here.
    if (stack.length > best) {
      for (let d = unchangedBelow; d < stack.length; d++) bestPath[d] = stack[d]!.op;
      best = stack.length;
      unchangedBelow = best;
      const stuck = opOf[bound]!;
      const pending: number[] = [];
      for (let p = next[HEAD]!; p !== bound; p = next[p]!) if (isCall[p] && opOf[p] !== stuck) pending.push(ops[opOf[p]!]!.id);
      bestStuck = [ops[stuck]!.id, ...pending];
    }
    const frame = stack.pop();
    if (!frame) return verdict(false);
    unchangedBelow = Math.min(unchangedBelow, stack.length);
    frame.visit.closed = true;
    state = frame.state;
    stateKey = frame.key;
    highest = frame.highest;
    if (ops[frame.op]!.ret === null) {
      unknown &= ~(1n << BigInt(frame.at));
      flipUnknown(frame.at);
      relink(unext, uprev, frame.at);
      bound = frame.bound;
      u = unext[frame.at]!;
    } else {
      putBack(frame.op, frame.at);
      inUnknown = false;
      e = next[frame.at]!;
    }
  }
}
