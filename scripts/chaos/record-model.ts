// The sequential specification of one user's record in the vault, as the firmware defines it, for
// the linearizability checker: what a client may be told in each state. Passwords and K values are
// small ids chosen by the recorder, so a history never holds a secret.
import type { Model } from './linearizability.ts';

export type RecordInput =
  | { f: 'register'; pw: number; limit: number }
  | { f: 'attempt'; session?: string }
  | { f: 'outcome'; session: string; pw: number }
  | { f: 'status' }
  | { f: 'delete' };

export type RecordOutput =
  | { r: 'ok' }
  | { r: 'stale' }
  | { r: 'ke2' }
  | { r: 'locked' }
  | { r: 'released'; k: number }
  | { r: 'wrong'; left: number }
  | { r: 'changed' }
  | { r: 'status'; state: 'none' | 'registered' | 'locked'; left: number; limit: number };

export interface SessionInfo {
  readonly id: string;
  /** The registration the attempt was charged against; -1 when the user did not exist (a fake KE2). */
  readonly ver: number;
  /** The password id registered at the attempt; meaningless when ver is -1. */
  readonly pw: number;
}

export interface RecordState {
  readonly exists: boolean;
  readonly locked: boolean;
  readonly used: number;
  readonly limit: number;
  readonly pw: number;
  readonly ver: number;
  /** ver -> the K id first released for it: every later release of that registration must match. */
  readonly kOf: ReadonlyMap<number, number>;
  /** Open sessions sorted by id: the key is built on every step, and this spares it a sort. */
  readonly sessions: readonly SessionInfo[];
}

/** Where `id` is, or would be inserted, in sessions sorted by id. */
function place(sessions: readonly SessionInfo[], id: string): number {
  let lo = 0;
  let hi = sessions.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (sessions[mid]!.id < id) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

function withSession(sessions: readonly SessionInfo[], info: SessionInfo): readonly SessionInfo[] {
  const at = place(sessions, info.id);
  const out = sessions.slice();
  if (sessions[at]?.id === info.id) out[at] = info;
  else out.splice(at, 0, info);
  return out;
}

export function recordModel(opts: { resetOnSuccess?: boolean } = {}): Model<RecordState, RecordInput, RecordOutput> {
  const resetOnSuccess = opts.resetOnSuccess ?? true;

  function attempt(s: RecordState, input: { session?: string }, out: RecordOutput | undefined): RecordState | null {
    const remember = (ver: number, pw: number) =>
      input.session === undefined ? s.sessions : withSession(s.sessions, { id: input.session, ver, pw });
    if (!s.exists) {
      // The device cannot tell a fake KE2 from a real one, and must not be able to.
      if (out && out.r !== 'ke2') return null;
      return { ...s, sessions: remember(-1, -1) };
    }
    if (s.locked || s.used >= s.limit) {
      if (out && out.r !== 'locked') return null;
      return s.locked ? s : { ...s, locked: true };
    }
    if (out && out.r !== 'ke2') return null;
    return { ...s, used: s.used + 1, sessions: remember(s.ver, s.pw) };
  }

  function outcome(s: RecordState, input: { session: string; pw: number }, out: RecordOutput | undefined): RecordState | null {
    const at = place(s.sessions, input.session);
    const session = s.sessions[at];
    if (session?.id !== input.session) return null;
    // One KE3 per session, whatever it was answered. Except when the answer is unknown: a client sends
    // one KE3 per session, so this op is the only one that could ever use it, and whether it was used
    // cannot be observed. Keeping it makes "took effect, changing nothing else" the same state as
    // "never happened", which is what lets the search drop such an op instead of carrying both
    // possibilities to the end of the history.
    const consumed = out ? { ...s, sessions: s.sessions.filter((_, j) => j !== at) } : s;
    if (!s.exists || session.ver === -1) {
      if (out && !(out.r === 'wrong' && out.left === 0)) return null;
      return consumed;
    }
    if (s.locked) {
      if (out && out.r !== 'locked') return null;
      return consumed;
    }
    if (session.ver !== s.ver) {
      if (out && out.r !== 'changed') return null;
      return consumed;
    }
    if (input.pw === session.pw) {
      if (out && out.r !== 'released') return null;
      const known = s.kOf.get(s.ver);
      let kOf = s.kOf;
      if (out) {
        if (known === undefined) kOf = new Map(s.kOf).set(s.ver, out.k);
        else if (known !== out.k) return null;
      }
      return { ...consumed, kOf, used: resetOnSuccess ? 0 : s.used };
    }
    if (s.used >= s.limit) {
      if (out && out.r !== 'locked') return null;
      return { ...consumed, locked: true };
    }
    if (out && !(out.r === 'wrong' && out.left === s.limit - s.used)) return null;
    return consumed;
  }

  function status(s: RecordState, out: RecordOutput | undefined): RecordState | null {
    if (!out) return s;
    if (out.r !== 'status') return null;
    if (!s.exists) return out.state === 'none' ? s : null;
    if (s.locked) return out.state === 'locked' && out.limit === s.limit ? s : null;
    return out.state === 'registered' && out.left === s.limit - s.used && out.limit === s.limit ? s : null;
  }

  return {
    init: () => ({ exists: false, locked: false, used: 0, limit: 0, pw: -1, ver: 0, kOf: new Map(), sessions: [] }),

    step(s, input, out) {
      switch (input.f) {
        case 'register':
          // A refusal as stale is always possible from the client's side: some newer registration won.
          if (out?.r === 'stale') return s;
          if (out && out.r !== 'ok') return null;
          return { ...s, exists: true, locked: false, used: 0, limit: input.limit, pw: input.pw, ver: s.ver + 1 };
        case 'delete':
          if (out && out.r !== 'ok') return null;
          return { ...s, exists: false };
        case 'attempt':
          return attempt(s, input, out);
        case 'outcome':
          return outcome(s, input, out);
        case 'status':
          return status(s, out);
      }
    },

    // Canonical up to behaviour, which is what the memo needs: registration numbers only ever meet in
    // equality tests, so a session is current, from an older registration, or fake, and only the
    // current registration's K can still be released. A deleted record keeps only which sessions are
    // open and which of them were fake (the next registration makes every other one old). Histories
    // that differ only in where an unknown register or delete landed thereby meet again instead of
    // being searched twice to the end.
    key(s) {
      // Ids are length-prefixed so no id can run into the next.
      let open = '';
      for (const x of s.sessions) open += `${x.id.length}:${x.id}${x.ver === -1 ? 'f' : x.ver === s.ver && s.exists ? 'c' : 'o'}`;
      if (!s.exists) return `none|${open}`;
      return `${s.locked ? 'locked' : 'open'}|${s.used}|${s.limit}|${s.pw}|${s.kOf.get(s.ver) ?? ''}|${open}`;
    },
  };
}
