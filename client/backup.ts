// The device's backup flows, end to end: pack the input, encrypt it as a STREAM, upload it atomically
// to the cloud folder; and the reverse, where nothing reaches the destination until the last segment
// has verified. Whoever calls these supplies K (from a 64-digit key, or from the vault after OPAQUE).
import { mkdtemp, readdir, rename, rm, stat } from 'node:fs/promises';
import { basename, dirname, join, resolve } from 'node:path';
import { ByteReader } from './byte-reader.ts';
import { decryptBackup, encryptBackup, HEADER_BYTES, parseHeader, type BackupHeader, type BackupMode } from './backup-format.ts';
import { packArchive, planArchive, unpackArchive, type ArchiveKind } from './archive.ts';
import { checkObjectName, syncDir, type CloudFolder } from './cloud.ts';
import { BackupError } from './errors.ts';

export type Progress = (done: number, total: number) => void;

export const DEFAULT_ACCOUNT = 'default';

/** The cloud object that holds an account's backup: `<account>.bkv`, one per account. */
export function backupObjectName(account: string): string {
  const name = `${account}.bkv`;
  try {
    checkObjectName(name);
  } catch {
    throw new BackupError('CLOUD_BAD_NAME', `account name ${JSON.stringify(account.slice(0, 80))} is not allowed (letters, digits, . _ @ + = -; no leading dot)`);
  }
  return name;
}

export interface CreateBackupOptions {
  input: string;
  key: Uint8Array;
  mode: BackupMode;
  cloud: CloudFolder;
  account?: string;
  segmentBytes?: number;
  onProgress?: Progress;
}

export interface CreateBackupResult {
  object: string;
  kind: ArchiveKind;
  files: number;
  plaintextBytes: number;
  backupBytes: number;
}

export async function createBackup(o: CreateBackupOptions): Promise<CreateBackupResult> {
  const object = backupObjectName(o.account ?? DEFAULT_ACCOUNT);
  const plan = await planArchive(o.input);
  let done = 0;
  o.onProgress?.(0, plan.totalBytes);
  const archive = packArchive(plan, (n) => o.onProgress?.((done += n), plan.totalBytes));
  const backupBytes = await o.cloud.put(object, encryptBackup(archive, o.key, { mode: o.mode, segmentBytes: o.segmentBytes }));
  return {
    object,
    kind: plan.kind,
    files: plan.entries.filter((e) => e.type === 'file').length,
    plaintextBytes: plan.totalBytes,
    backupBytes,
  };
}

export interface BackupInfo {
  object: string;
  bytes: number;
  modified: Date;
  /** From the header, unauthenticated: a hint for which way to ask for the key, not a security fact. */
  mode: BackupMode | 'unknown';
  version: number;
  segmentBytes: number;
}

/** What the cloud folder says about an account's backup, without a key. */
export async function readBackupInfo(cloud: CloudFolder, account = DEFAULT_ACCOUNT): Promise<BackupInfo> {
  const object = backupObjectName(account);
  const { stream, bytes } = await cloud.get(object);
  const reader = new ByteReader(stream);
  let header: BackupHeader;
  try {
    header = parseHeader(await reader.read(HEADER_BYTES));
  } finally {
    await reader.close();
    stream.destroy();
  }
  const s = (await cloud.stat(object))!;
  return { object, bytes, modified: s.modified, mode: header.mode, version: header.version, segmentBytes: header.segmentBytes };
}

export interface RestoreBackupOptions {
  key: Uint8Array;
  cloud: CloudFolder;
  account?: string;
  /** Must not exist, or be an empty directory; its parent must exist. */
  out: string;
  onProgress?: Progress;
  /** Called with the authenticated header before any plaintext is written (to a temporary dir). */
  onHeader?: (header: BackupHeader) => void;
}

export interface RestoreBackupResult {
  object: string;
  kind: ArchiveKind;
  mode: BackupMode;
  files: number;
  directories: number;
  plaintextBytes: number;
}

async function checkOut(out: string): Promise<void> {
  const parent = dirname(out);
  try {
    if (!(await stat(parent)).isDirectory()) throw new Error('not a directory');
  } catch {
    throw new BackupError('RESTORE_BAD_OUT', `the parent directory of --out '${out}' does not exist`);
  }
  let s;
  try {
    s = await stat(out);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return;
    throw e;
  }
  if (!s.isDirectory() || (await readdir(out)).length > 0) {
    throw new BackupError('RESTORE_BAD_OUT', `--out '${out}' exists and is not an empty directory; restore will not overwrite anything`);
  }
}

async function* counted(source: AsyncIterable<Uint8Array>, total: number, onProgress?: Progress): AsyncGenerator<Uint8Array> {
  let done = 0;
  onProgress?.(0, total);
  for await (const chunk of source) {
    yield chunk;
    onProgress?.((done += chunk.length), total);
  }
}

/**
 * Restores an account's backup into `out`. Decrypts and unpacks into a fresh temporary directory
 * beside `out` and renames it into place only after the final segment has authenticated; on any
 * failure the temporary directory is removed and `out` is left exactly as it was.
 */
export async function restoreBackup(o: RestoreBackupOptions): Promise<RestoreBackupResult> {
  const object = backupObjectName(o.account ?? DEFAULT_ACCOUNT);
  const out = resolve(o.out);
  await checkOut(out);
  const { stream, bytes } = await o.cloud.get(object);
  let mode: BackupMode = 'key64';
  const temp = await mkdtemp(join(dirname(out), `.${basename(out)}.bkv-restore-`));
  try {
    const plaintext = decryptBackup(counted(stream, bytes, o.onProgress), o.key, {
      onHeader: (h) => {
        if (h.mode !== 'unknown') mode = h.mode; // authenticateHeader has ruled 'unknown' out
        o.onHeader?.(h);
      },
    });
    const r = await unpackArchive(plaintext, temp);
    // Every segment, the last one included, has verified: only now does anything appear under out.
    try {
      await rename(temp, out);
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code === 'ENOTEMPTY' || code === 'EEXIST' || code === 'ENOTDIR') {
        throw new BackupError('RESTORE_BAD_OUT', `--out '${out}' was filled by someone else during the restore; nothing was written to it`);
      }
      throw e;
    }
    await syncDir(dirname(out));
    return { object, kind: r.kind, mode, files: r.files, directories: r.directories, plaintextBytes: r.bytes };
  } catch (e) {
    await rm(temp, { recursive: true, force: true });
    throw e;
  } finally {
    stream.destroy();
  }
}
