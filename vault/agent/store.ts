// The replica host's disk: one LMDB environment (lmdb-js, msgpackr values) holding sealed log entries
// by index, the sealed snapshot and (for Raft, later) hard state. Everything in it is sealed by the
// firmware's token: this module only moves bytes and waits for them to be durable.
import { chmodSync, mkdirSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { open, type Database, type RootDatabase } from 'lmdb';
import { BkvError } from '../../protocol/errors.ts';
import type { StoredItems } from '../firmware/storage.ts';

export class StoreError extends BkvError {}

const SNAPSHOT_KEY = 'snapshot';

/** An LMDB environment with a `log` (by index) and a `meta` database, whose write promises mean "on disk". */
/**
 * The replica's disk is the owner's alone: lmdb-js creates its files 0664 and takes no mode, so they
 * are narrowed after open; the 0700 directory already shuts others out in between.
 */
export function makePrivate(dir: string): void {
  chmodSync(dir, 0o700);
  for (const e of readdirSync(dir, { withFileTypes: true })) if (e.isFile()) chmodSync(join(dir, e.name), 0o600);
}

export function openDurableLmdb(dir: string): { root: RootDatabase; log: Database<Uint8Array, number>; meta: Database<unknown, string> } {
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  let root: RootDatabase;
  try {
    // Durable commits: no noSync, and overlappingSync off so a write's promise means "on disk".
    root = open({ path: dir, noSync: false, overlappingSync: false, cache: false, maxDbs: 4 });
  } catch (e) {
    throw new StoreError('STORE_OPEN_FAILED', `cannot open LMDB at ${dir}: ${(e as Error).message}`);
  }
  makePrivate(dir);
  return { root, log: root.openDB<Uint8Array, number>({ name: 'log', cache: false }), meta: root.openDB<unknown, string>({ name: 'meta', cache: false }) };
}

export class LogStore {
  private constructor(
    private readonly root: RootDatabase,
    private readonly log: Database<Uint8Array, number>,
    private readonly meta: Database<unknown, string>,
  ) {}

  static open(dir: string): LogStore {
    const { root, log, meta } = openDurableLmdb(dir);
    return new LogStore(root, log, meta);
  }

  /** Everything on disk, as raw sealed bytes, for the firmware to verify. */
  readAll(): StoredItems {
    const entries: StoredItems['entries'] = [];
    for (const { key, value } of this.log.getRange({})) {
      if (typeof key !== 'number' || !(value instanceof Uint8Array)) {
        throw new StoreError('TAMPERED', 'log database holds a non-entry item');
      }
      entries.push({ index: key, sealed: new Uint8Array(value) });
    }
    const snap = this.meta.get(SNAPSHOT_KEY);
    if (snap !== undefined && !(snap instanceof Uint8Array)) throw new StoreError('TAMPERED', 'snapshot slot holds a non-snapshot item');
    return { snapshot: snap ? new Uint8Array(snap) : undefined, entries };
  }

  /** Writes a batch of sealed entries in one transaction; resolves once it is flushed to disk. */
  async append(batch: Array<{ index: number; sealed: Uint8Array }>): Promise<void> {
    await this.root.transaction(() => {
      for (const { index, sealed } of batch) this.log.put(index, sealed);
    });
    await this.root.flushed;
  }

  /** Replaces entries up to `index` with the snapshot, atomically; resolves once durable. */
  async compact(index: number, sealedSnapshot: Uint8Array): Promise<void> {
    await this.root.transaction(() => {
      this.meta.put(SNAPSHOT_KEY, sealedSnapshot);
      const doomed = [...this.log.getKeys({ end: index + 1 })];
      for (const key of doomed) this.log.remove(key);
    });
    await this.root.flushed;
  }

  async close(): Promise<void> {
    await this.root.close();
  }
}
