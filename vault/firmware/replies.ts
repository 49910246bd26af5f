// Remembered answers, so that a device request delivered twice (a retrying ChatD, a duplicating
// network) is one request: the copy joins the original while its entry waits for the commit and gets
// the same reply bytes once it is decided, instead of being charged, proposed or refused again.
//
// Keyed by SHA-256(user || 0x00 || request body): the wire encoding is canonical, so only a
// byte-identical request from the same (ChatD-authenticated) user matches, and the copy learns
// nothing the original's reply did not already say (the same KE2 is the same OPRF evaluation of the
// same blinded element). Volatile firmware memory: a crash or an eviction forgets an answer, and the
// copy is then served as a new request, which is the old, safe behaviour (charged, never free).
import { createHash } from 'node:crypto';

export interface ReplyLimits {
  /** Answers kept per user (the oldest is forgotten first). */
  perUser: number;
  /** Answers kept in all (the oldest is forgotten first). */
  total: number;
}

interface Memo {
  user: string;
  /** The entry id (hex) the original waits on; null once decided. */
  pending: string | null;
  /** The reply, once decided. */
  body: Uint8Array | null;
  /** The registration (oprfId) the reply is only true of while it is live; null: always true. */
  guard: Uint8Array | null;
  expiresAt: number;
}

export type Remembered = { kind: 'pending'; id: string } | { kind: 'decided'; body: Uint8Array; guard: Uint8Array | null };

export class ReplyMemory {
  /** Insertion order is age: the first key is the oldest. */
  private readonly memos = new Map<string, Memo>();
  private readonly byUser = new Map<string, string[]>();

  constructor(private readonly limits: ReplyLimits) {
    if (!(limits.perUser >= 1 && limits.total >= 1)) throw new RangeError('reply memory limits must be >= 1');
  }

  static key(user: string, body: Uint8Array): string {
    return createHash('sha256').update(user, 'utf8').update(new Uint8Array(1)).update(body).digest('hex');
  }

  get size(): number {
    return this.memos.size;
  }

  lookup(key: string, now: number): Remembered | undefined {
    const m = this.memos.get(key);
    if (!m) return undefined;
    if (m.expiresAt < now) {
      this.drop(key);
      return undefined;
    }
    return m.body ? { kind: 'decided', body: m.body, guard: m.guard } : { kind: 'pending', id: m.pending! };
  }

  /** The original was proposed as entry `id`; copies wait on it until `settle` or `forget`. */
  waitFor(key: string, user: string, id: string): void {
    this.drop(key);
    const mine = this.byUser.get(user) ?? [];
    while (mine.length >= this.limits.perUser) this.drop(mine[0]!);
    while (this.memos.size >= this.limits.total) this.drop(this.memos.keys().next().value!);
    this.memos.set(key, { user, pending: id, body: null, guard: null, expiresAt: Infinity });
    mine.push(key);
    this.byUser.set(user, mine);
  }

  /** Entry `id` committed and this is its reply. Nothing if the memory forgot it meanwhile. */
  settle(key: string, id: string, body: Uint8Array, expiresAt: number, guard: Uint8Array | null = null): void {
    const m = this.memos.get(key);
    if (!m || m.pending !== id) return;
    m.pending = null;
    m.body = body;
    m.guard = guard;
    m.expiresAt = expiresAt;
  }

  /** Entry `id` will get no decided reply (timeout, lost proposal): a later copy is a new request. */
  forget(key: string, id: string): void {
    if (this.memos.get(key)?.pending === id) this.drop(key);
  }

  expire(now: number): void {
    for (const [key, m] of this.memos) if (m.expiresAt < now) this.drop(key);
  }

  clear(): void {
    this.memos.clear();
    this.byUser.clear();
  }

  drop(key: string): void {
    const m = this.memos.get(key);
    if (!m) return;
    this.memos.delete(key);
    const mine = this.byUser.get(m.user)!;
    mine.splice(mine.indexOf(key), 1);
    if (mine.length === 0) this.byUser.delete(m.user);
  }
}
