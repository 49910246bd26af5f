// The seam where consensus plugs in. The firmware only ever sees "entry committed at index"; who
// decides commitment is behind ReplicatedLog. Today: SoloLog, a single replica whose durable local
// write IS the commit (propose -> seal -> LMDB write -> flush -> token anchor -> committed -> apply).
// Later: a Raft log over the fleet implements the same interface.
import { emptyBuckets, observeInto } from '../../protocol/metrics-wire.ts';
import { BkvError } from '../../protocol/errors.ts';
import { GENESIS_HASH, chainHash, type ChainPoint, type SealedStorage } from '../firmware/storage.ts';
import type { LogStore } from './store.ts';

export interface CommittedEntry {
  index: number;
  entry: Uint8Array;
}

export interface LogHandlers {
  /** Start-up: the latest verified snapshot, before any committed entry. */
  restore(snapshot: { index: number; state: Uint8Array }): void;
  /** Entries, in index order, each exactly once, only after they are committed AND anchored. */
  committed(batch: CommittedEntry[]): void;
  /** The log can no longer make progress safely (disk or token failure). */
  failed(err: BkvError): void;
}

export interface ReplicatedLog {
  /**
   * Replays durable state through the handlers. Throws FirmwareError TAMPERED / ROLLBACK_DETECTED
   * when the stored log cannot be vouched for; the replica must then not serve.
   */
  start(handlers: LogHandlers): Promise<void>;
  /** Resolves with the index once the entry is committed (after handlers.committed saw it); rejects if it never will be. */
  propose(entry: Uint8Array): Promise<number>;
  /** The firmware's snapshot at `index`: entries up to it may go (and with them any erased K). */
  compact(index: number, state: Uint8Array): Promise<void>;
  close(): Promise<void>;
}

export class LogError extends BkvError {}

/**
 * The code of a proposal the log refused before appending it (this replica does not lead): no entry
 * exists, so the request may be retried elsewhere without spending anything.
 */
export const NOT_APPENDED = 'NOT_APPENDED';

interface Queued {
  entry: Uint8Array;
  /** When it was proposed (the host's clock: metrics only). */
  at: number;
  resolve: (index: number) => void;
  reject: (e: unknown) => void;
}

export class SoloLog implements ReplicatedLog {
  private handlers?: LogHandlers;
  private head: ChainPoint = { index: 0, hash: GENESIS_HASH };
  /** Chain hashes of entries newer than the last snapshot (compaction needs the head at its index). */
  private readonly hashes = new Map<number, Uint8Array>();
  private queue: Queued[] = [];
  private writing = false;
  private dead?: BkvError;
  private compacting: Promise<void> = Promise.resolve();
  private wantCompact?: { index: number; state: Uint8Array };
  /** Observers for tests and benchmarks: batches written (size of each). */
  readonly stats = { batches: 0, entries: 0, anchors: 0 };
  /** Propose-to-committed time (sealed, flushed, anchored) of every entry, for /metrics. */
  readonly commitBuckets = emptyBuckets();

  constructor(
    private readonly store: LogStore,
    private readonly sealed: SealedStorage,
  ) {}

  async start(handlers: LogHandlers): Promise<void> {
    this.handlers = handlers;
    const verified = this.sealed.verify(this.store.readAll());
    this.head = verified.head;
    this.hashes.set(verified.head.index, verified.head.hash);
    if (verified.snapshot) {
      this.hashes.set(verified.snapshot.index, verified.snapshot.head);
      handlers.restore({ index: verified.snapshot.index, state: verified.snapshot.state });
    }
    // Durable entries past the anchor (a crash between flush and anchor) are adopted: anchor them now,
    // before anything derived from them can leave.
    if (!verified.anchor || verified.anchor.index < this.head.index) {
      this.sealed.writeAnchor(this.head);
      this.stats.anchors++;
    }
    let prev = verified.snapshot?.head ?? GENESIS_HASH;
    for (const e of verified.entries) {
      // Re-derive hashes for compaction; verify() already checked the chain.
      prev = chainHash(prev, e.index, e.entry);
      this.hashes.set(e.index, prev);
    }
    if (verified.entries.length > 0) handlers.committed(verified.entries);
  }

  propose(entry: Uint8Array): Promise<number> {
    if (this.dead) return Promise.reject(this.dead);
    if (!this.handlers) return Promise.reject(new LogError('LOG_NOT_STARTED', 'propose before start'));
    return new Promise((resolve, reject) => {
      this.queue.push({ entry, at: performance.now(), resolve, reject });
      if (!this.writing) {
        this.writing = true;
        // Let every proposal of this event-loop turn join the batch: one flush, one anchor write.
        setImmediate(() => void this.writeBatches());
      }
    });
  }

  private async writeBatches(): Promise<void> {
    while (this.queue.length > 0 && !this.dead) {
      const batch = this.queue;
      this.queue = [];
      try {
        let head = this.head;
        const items: Array<{ index: number; sealed: Uint8Array }> = [];
        const committed: CommittedEntry[] = [];
        for (const q of batch) {
          const index = head.index + 1;
          const { sealed, hash } = this.sealed.sealEntry(index, head.hash, q.entry);
          items.push({ index, sealed });
          committed.push({ index, entry: q.entry });
          head = { index, hash };
          this.hashes.set(index, hash);
        }
        await this.store.append(items);
        // The anchor moves before anything that depends on these entries can leave the replica.
        this.sealed.writeAnchor(head);
        this.head = head;
        this.stats.batches++;
        this.stats.entries += batch.length;
        this.stats.anchors++;
        this.handlers!.committed(committed);
        const now = performance.now();
        for (const q of batch) observeInto(this.commitBuckets, (now - q.at) / 1000);
        batch.forEach((q, i) => q.resolve(committed[i]!.index));
      } catch (e) {
        this.fail(e, batch);
      }
    }
    this.writing = false;
  }

  private fail(e: unknown, batch: Queued[]): void {
    const err = e instanceof BkvError ? e : new LogError('STORE_WRITE_FAILED', `log write failed: ${(e as Error)?.message ?? 'unknown'}`);
    this.dead = err;
    for (const q of [...batch, ...this.queue]) q.reject(err);
    this.queue = [];
    this.handlers?.failed(err);
  }

  compact(index: number, state: Uint8Array): Promise<void> {
    if (this.dead) return Promise.reject(this.dead);
    this.wantCompact = { index, state };
    // Serialized, and only the latest request matters: an older snapshot is subsumed by a newer one.
    this.compacting = this.compacting.catch(() => undefined).then(async () => {
      const want = this.wantCompact;
      if (!want || this.dead) return;
      this.wantCompact = undefined;
      const hash = this.hashes.get(want.index);
      if (!hash) throw new LogError('COMPACT_UNKNOWN_INDEX', `no chain hash for index ${want.index}`);
      try {
        await this.store.compact(want.index, this.sealed.sealSnapshot(want.index, hash, want.state));
      } catch (e) {
        this.fail(e, []);
        throw this.dead;
      }
      for (const k of this.hashes.keys()) if (k < want.index) this.hashes.delete(k);
    });
    return this.compacting;
  }

  async close(): Promise<void> {
    this.dead ??= new LogError('LOG_CLOSED', 'log closed');
    for (const q of this.queue) q.reject(this.dead);
    this.queue = [];
    await this.compacting.catch(() => undefined);
    while (this.writing) await new Promise((r) => setTimeout(r, 5));
  }
}
