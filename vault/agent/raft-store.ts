// A Raft replica's disk: the same LMDB layout as LogStore (sealed entries by index in `log`, the
// sealed snapshot in `meta`), plus the sealed Raft hard state. One Ready is one LMDB transaction,
// flushed before the promise resolves: the caller sends that Ready's messages only afterwards.
// Everything here is sealed by the firmware's token; this module only moves bytes.
import { existsSync, mkdirSync } from 'node:fs';
import type { Database, RootDatabase } from 'lmdb';
import type { StoredItems } from '../firmware/storage.ts';
import { StoreError, makePrivate, openDurableLmdb } from './store.ts';

const SNAPSHOT_KEY = 'snapshot';
const HARD_STATE_KEY = 'hardState';

export interface RaftWrite {
  /** Replaces the whole stored log (a snapshot installed from the leader). */
  snapshot?: Uint8Array;
  /** Sealed entries; the first one replaces the stored entry at its index and everything after it. */
  entries: Array<{ index: number; sealed: Uint8Array }>;
  hardState?: Uint8Array;
}

export class RaftStore {
  private constructor(
    private readonly root: RootDatabase,
    private readonly log: Database<Uint8Array, number>,
    private readonly meta: Database<unknown, string>,
  ) {}

  static open(dir: string): RaftStore {
    const { root, log, meta } = openDurableLmdb(dir);
    return new RaftStore(root, log, meta);
  }


  readAll(): StoredItems & { hardState?: Uint8Array } {
    const entries: StoredItems['entries'] = [];
    for (const { key, value } of this.log.getRange({})) {
      if (typeof key !== 'number' || !(value instanceof Uint8Array)) throw new StoreError('TAMPERED', 'log database holds a non-entry item');
      entries.push({ index: key, sealed: new Uint8Array(value) });
    }
    const snap = this.meta.get(SNAPSHOT_KEY);
    const hs = this.meta.get(HARD_STATE_KEY);
    if (snap !== undefined && !(snap instanceof Uint8Array)) throw new StoreError('TAMPERED', 'snapshot slot holds a non-snapshot item');
    if (hs !== undefined && !(hs instanceof Uint8Array)) throw new StoreError('TAMPERED', 'hard state slot holds a non-hard-state item');
    return { snapshot: snap ? new Uint8Array(snap) : undefined, entries, hardState: hs ? new Uint8Array(hs) : undefined };
  }

  /** One Ready's persistence, atomically and durably. */
  async write(w: RaftWrite): Promise<void> {
    if (!w.snapshot && w.entries.length === 0 && !w.hardState) return;
    await this.root.transaction(() => {
      if (w.snapshot) {
        this.meta.put(SNAPSHOT_KEY, w.snapshot);
        for (const k of [...this.log.getKeys({})]) this.log.remove(k);
      }
      if (w.entries.length > 0) {
        for (const k of [...this.log.getKeys({ start: w.entries[0]!.index })]) this.log.remove(k);
        for (const { index, sealed } of w.entries) this.log.put(index, sealed);
      }
      if (w.hardState) this.meta.put(HARD_STATE_KEY, w.hardState);
    });
    await this.root.flushed;
  }

  /** Replaces entries up to `index` with the snapshot, atomically; resolves once durable. */
  async compact(index: number, sealedSnapshot: Uint8Array): Promise<void> {
    await this.root.transaction(() => {
      this.meta.put(SNAPSHOT_KEY, sealedSnapshot);
      for (const k of [...this.log.getKeys({ end: index + 1 })]) this.log.remove(k);
    });
    await this.root.flushed;
  }

  /**
   * A consistent copy of the database into the directory `dir` (which must not hold one), taken by
   * LMDB from a read snapshot while writes go on: it holds exactly the last committed transaction,
   * i.e. whole Readies only, as a crash at that moment would have left the disk.
   */
  async backup(dir: string): Promise<void> {
    if (existsSync(dir)) throw new StoreError('BACKUP_FAILED', 'backup target already exists');
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    try {
      await this.root.backup(dir, false);
    } catch (e) {
      throw new StoreError('BACKUP_FAILED', `LMDB copy failed: ${(e as Error).message}`);
    }
    makePrivate(dir);
  }

  /** Forget everything (a rolled-back disk the replica will re-replicate from its peers). */
  async wipe(): Promise<void> {
    await this.root.transaction(() => {
      for (const k of [...this.log.getKeys({})]) this.log.remove(k);
      this.meta.remove(SNAPSHOT_KEY);
      this.meta.remove(HARD_STATE_KEY);
    });
    await this.root.flushed;
  }

  async close(): Promise<void> {
    await this.root.close();
  }
}
