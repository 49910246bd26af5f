// The outside oracle for the deterministic vault cluster. It keeps its own small model of the
// record rules (written from docs/vault.md, not from the firmware's code), fed with the committed log
// in index order, and judges what leaves the fleet: every KE2 (one OPRF evaluation, one guess) and
// every Released (K). Violations are recorded, not thrown, so a failing seed reports all it broke.

import { decodeEntry, type VaultEntry } from '../firmware/entries.ts';
import { TICKET_SPAN } from '../firmware/state.ts';

interface ModelRecord {
  oprfId: string;
  changedAt: number;
  limit: number;
  used: number;
  locked: boolean;
  /** Bumped by every committed reset or new registration: the guess budget starts again. */
  epoch: number;
  /** The epoch of its registration (names the registration). */
  reg: number;
}

/** What one user's record looked like right after a committed index. */
interface UserPoint { index: number; used: number; locked: boolean; present: boolean; epoch: number; epochReg: number }

const hex = (b: Uint8Array): string => Buffer.from(b).toString('hex');

export class VaultOracle {
  readonly violations: string[] = [];
  /** index -> committed entry bytes (normal entries only), as first applied by any replica. */
  private readonly log = new Map<number, Uint8Array>();
  private modelAt = 0;
  private maxSeen = 0;
  private readonly users = new Map<string, ModelRecord>();
  /** Deleted users: registrations with a ticket at or before this are stale. */
  private readonly deletedBefore = new Map<string, number>();
  private readonly history = new Map<string, UserPoint[]>();
  /** Attempt entries by session id: who was charged, in which budget epoch, at which index. */
  private readonly attempts = new Map<string, { user: string; epoch: number; index: number; charged: boolean; limit: number }>();
  /** user -> epoch -> KE2s handed out. */
  private readonly ke2s = new Map<string, Map<number, number>>();
  /** session -> the KE2 reply bytes handed out for it. */
  private readonly ke2Sessions = new Map<string, string>();
  /** Released reply bytes already judged. */
  private readonly releasedBodies = new Set<string>();
  private epochs = 0;
  private readonly limits = new Map<string, { limit: number }>();
  /** resent: a reply byte-identical to one already judged (a duplicate request answered again): no new evaluation, no new K. */
  readonly counts = { ke2: 0, released: 0, resets: 0, locks: 0, attempts: 0, resent: 0 };
  /** Outcome entry id -> whether the device behind its KE3 used the right password (from outside). */
  private readonly intents = new Map<string, boolean>();

  /** The firmware proposed Outcome `id` for a KE3 whose device did (or did not) know the password. */
  onOutcomeIntent(id: Uint8Array, correct: boolean): void {
    this.intents.set(hex(id), correct);
  }

  fail(msg: string): void {
    if (this.violations.length < 100) this.violations.push(msg);
  }

  /** A replica applied a normal entry at `index` (the Raft checker already verifies all agree). */
  onCommitted(index: number, data: Uint8Array): void {
    if (!this.log.has(index)) this.log.set(index, data);
    this.maxSeen = Math.max(this.maxSeen, index);
  }

  /** A Raft-level entry without firmware content (noop, config) at `index`. */
  onSkipped(index: number): void {
    if (!this.log.has(index)) this.log.set(index, new Uint8Array(0));
    this.maxSeen = Math.max(this.maxSeen, index);
  }

  /** Run the model over the committed log as far as it is known without gaps. */
  private advance(upTo = this.maxSeen): void {
    while (this.modelAt < upTo) {
      const b = this.log.get(this.modelAt + 1);
      if (b === undefined) return;
      this.modelAt++;
      if (b.length > 0) this.applyModel(this.modelAt, decodeEntry(b));
    }
  }

  private applyModel(index: number, e: VaultEntry): void {
    const r = this.users.get(e.user);
    const before = r ? { used: r.used, epoch: r.epoch } : null;
    switch (e.t) {
      case 'Register':
      case 'ChangePassword': {
        // The model's own statement of the compare-and-swap rule: a registration lands only on the state
        // it was issued against (no change to the record, no Delete since its basis).
        const stale = index - e.basis > TICKET_SPAN || (r !== undefined && e.basis < r.changedAt) || e.basis < (this.deletedBefore.get(e.user) ?? -1);
        if (!stale) {
          this.deletedBefore.delete(e.user);
          const epoch = ++this.epochs;
          this.users.set(e.user, { oprfId: hex(e.oprfId), changedAt: index, limit: e.limit, used: 0, locked: false, epoch, reg: epoch });
          this.limits.set(`${e.user}/${epoch}`, { limit: e.limit });
        }
        break;
      }
      case 'Attempt': {
        this.counts.attempts++;
        let charged = false;
        if (r && !r.locked) {
          if (r.used >= r.limit) { r.locked = true; this.counts.locks++; } else { r.used++; charged = true; }
        }
        this.attempts.set(hex(e.id), { user: e.user, epoch: r?.epoch ?? 0, index, charged, limit: r?.limit ?? 0 });
        break;
      }
      case 'Outcome':
        // Judged from outside, not from the entry: a reset needs a device that knew the password.
        if (e.reset && this.intents.get(hex(e.id)) === false) this.fail(`index ${index}: a wrong password's Outcome resets ${e.user}'s counter`);
        if (r && !r.locked && r.oprfId === hex(e.oprfId)) {
          if (e.ok && e.reset) { r.used = 0; r.epoch = ++this.epochs; this.counts.resets++; }
          if (!e.ok && r.used >= r.limit) { r.locked = true; this.counts.locks++; }
        }
        break;
      case 'Reset':
        if (r && !r.locked && r.oprfId === hex(e.oprfId)) { r.used = 0; r.epoch = ++this.epochs; this.counts.resets++; }
        break;
      case 'Lock':
        if (r && !r.locked && r.oprfId === hex(e.oprfId)) { r.locked = true; this.counts.locks++; }
        break;
      case 'Delete':
        this.deletedBefore.set(e.user, index);
        this.users.delete(e.user);
        break;
    }
    const now = this.users.get(e.user);
    // Invariant 2 on the model itself: the counter only goes down through a committed reset (or a new record).
    if (before && now && now.epoch === before.epoch && now.used < before.used) this.fail(`index ${index}: ${e.user}'s counter went down without a reset`);
    const h = this.history.get(e.user) ?? [];
    h.push({ index, used: now?.used ?? 0, locked: now?.locked ?? false, present: now !== undefined, epoch: now?.epoch ?? 0, epochReg: now?.reg ?? 0 });
    this.history.set(e.user, h);
  }

  /** The model's view of `user` right after committed index `index`. */
  at(user: string, index: number): UserPoint | undefined {
    this.advance(index);
    const h = this.history.get(user);
    if (!h) return undefined;
    let lo = 0, hi = h.length - 1, best: UserPoint | undefined;
    while (lo <= hi) {
      const m = (lo + hi) >> 1;
      if (h[m]!.index <= index) { best = h[m]; lo = m + 1; } else hi = m - 1;
    }
    return best;
  }

  /**
   * Invariant 2 per replica: what a replica's firmware holds for `user` after applying (or restoring
   * to) `index` is exactly the committed history's value there, so no replica ever shows a counter
   * the committed log does not justify (lower, or unlocked).
   */
  checkReplica(replica: string, index: number, user: string, got: { used: number; locked: boolean } | undefined, now: number): void {
    const want = this.at(user, index);
    const present = want?.present ?? false;
    if (!present && got === undefined) return;
    if (!present || !got || got.used !== want!.used || got.locked !== want!.locked) {
      this.fail(`t=${now}: ${replica} at ${index} holds ${user} ${JSON.stringify(got)}, committed history says ${JSON.stringify(want)}`);
    }
  }

  /**
   * Invariant 1 (and rule 1): a KE2 for `session` left replica `replica`. Its Attempt must be
   * committed (and charged to this user), and per budget epoch at most `limit` KE2s leave. The same
   * reply bytes again (`body`: a duplicate request answered from the firmware's memory) evaluate
   * nothing new; another KE2 for a session already answered is a violation.
   */
  onKE2(replica: string, user: string, session: Uint8Array, now: number, body?: Uint8Array): void {
    this.advance();
    const s = hex(session);
    const b = body ? hex(body) : '';
    const seen = this.ke2Sessions.get(s);
    if (seen !== undefined && b !== '' && seen === b) { this.counts.resent++; return; }
    this.counts.ke2++;
    if (seen !== undefined) this.fail(`t=${now}: ${replica} handed out a second KE2 for session ${s.slice(0, 8)}`);
    this.ke2Sessions.set(s, b);
    const a = this.attempts.get(s);
    if (!a) return this.fail(`t=${now}: ${replica} handed out a KE2 for ${user} before its Attempt committed`);
    if (a.user !== user) return this.fail(`t=${now}: KE2 for ${user} charged to ${a.user}`);
    if (!a.charged) return; // unknown user (fake record) or already locked: no real guess
    const per = this.ke2s.get(user) ?? new Map<number, number>();
    const n = (per.get(a.epoch) ?? 0) + 1;
    per.set(a.epoch, n);
    this.ke2s.set(user, per);
    if (n > a.limit) this.fail(`t=${now}: ${user} got ${n} KE2s in one budget (limit ${a.limit})`);
  }

  /** Invariant 3: K left `replica` (whose firmware had applied `index`) for a KE3 from the `correct` password or not. */
  onReleased(replica: string, user: string, index: number, correct: boolean | undefined, now: number, body?: Uint8Array): void {
    // The same ciphertext again (a duplicate KE3 answered from memory) releases nothing new.
    if (body && this.releasedBodies.has(hex(body))) { this.counts.resent++; return; }
    if (body) this.releasedBodies.add(hex(body));
    this.counts.released++;
    if (correct !== true) this.fail(`t=${now}: ${replica} released K of ${user} for a wrong password`);
    const p = this.at(user, index);
    if (!p || !p.present || p.locked) this.fail(`t=${now}: ${replica} released K of ${user} at ${index}, where the record is ${p ? (p.locked ? 'locked' : 'gone') : 'unknown'}`);
  }

  /** A Status reply for `user` from a replica whose firmware had applied `index`: it must show the committed state there. */
  onStatus(replica: string, user: string, index: number, got: { state: string; attemptsLeft: number; limit: number }, now: number): void {
    const p = this.at(user, index);
    const r = this.recordAt(user, index);
    const want = !p || !p.present || !r ? { state: 'none', attemptsLeft: 0 } : { state: p.locked ? 'locked' : 'registered', attemptsLeft: p.locked ? 0 : r.limit - p.used };
    if (got.state !== want.state || got.attemptsLeft !== want.attemptsLeft) {
      this.fail(`t=${now}: ${replica} at ${index} answered Status ${JSON.stringify(got)} for ${user}, committed history says ${JSON.stringify(want)}`);
    }
  }

  /** The limit of the registration live at `index` (limits only change with a new registration). */
  private recordAt(user: string, index: number): { limit: number } | undefined {
    const p = this.at(user, index);
    if (!p?.present) return undefined;
    return this.limits.get(`${user}/${p.epochReg}`);
  }

  /** Final model state (for the run summary and end-of-run checks). */
  finalUser(user: string): Readonly<ModelRecord> | undefined {
    this.advance();
    return this.users.get(user);
  }
}
