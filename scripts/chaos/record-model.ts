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
  /** The registration the attempt was charged against; -1 when the user did not exist (a fake KE2). */
  ver: number;
  /** The password id registered at the attempt; meaningless when ver is -1. */
  pw: number;
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
  readonly sessions: ReadonlyMap<string, SessionInfo>;
}

export function recordModel(opts: { resetOnSuccess?: boolean } = {}): Model<RecordState, RecordInput, RecordOutput> {
  const resetOnSuccess = opts.resetOnSuccess ?? true;

  const withSessions = (s: RecordState, edit: (m: Map<string, SessionInfo>) => void): Map<string, SessionInfo> => {
    const m = new Map(s.sessions);
    edit(m);
    return m;
  };

  function attempt(s: RecordState, input: { session?: string }, out: RecordOutput | undefined): RecordState | null {
    const remember = (info: SessionInfo) =>
      input.session === undefined ? s.sessions : withSessions(s, (m) => m.set(input.session!, info));
    if (!s.exists) {
      // The device cannot tell a fake KE2 from a real one, and must not be able to.
      if (out && out.r !== 'ke2') return null;
      return { ...s, sessions: remember({ ver: -1, pw: -1 }) };
    }
    if (s.locked || s.used >= s.limit) {
      if (out && out.r !== 'locked') return null;
      return { ...s, locked: true };
    }
    if (out && out.r !== 'ke2') return null;
    return { ...s, used: s.used + 1, sessions: remember({ ver: s.ver, pw: s.pw }) };
  }

  function outcome(s: RecordState, input: { session: string; pw: number }, out: RecordOutput | undefined): RecordState | null {
    const session = s.sessions.get(input.session);
    if (!session) return null;
    // One KE3 per session, whatever it was answered.
    const consumed = { ...s, sessions: withSessions(s, (m) => m.delete(input.session)) };
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
    init: () => ({ exists: false, locked: false, used: 0, limit: 0, pw: -1, ver: 0, kOf: new Map(), sessions: new Map() }),

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
      const ids = [...s.sessions.keys()].sort();
      let kinds = '';
      for (const id of ids) {
        const v = s.sessions.get(id)!.ver;
        kinds += v === -1 ? 'f' : v === s.ver && s.exists ? 'c' : 'o';
      }
      if (!s.exists) return JSON.stringify([0, ids, kinds]);
      return JSON.stringify([s.locked ? 1 : 2, s.used, s.limit, s.pw, s.kOf.get(s.ver) ?? null, ids, kinds]);
    },
  };
}
