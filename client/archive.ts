// The plaintext inside a backup: a small versioned archive of the chat backup folder (or of a single
// file), written and read as a stream. docs/backup-format.md gives the byte layout. Unpacking trusts
// nothing about names even though they were authenticated: a backup may come from an older or
// buggy writer, and a restore must never write outside its directory.
import { lstat, mkdir, open, readdir } from 'node:fs/promises';
import { basename, isAbsolute, join, relative, resolve, sep } from 'node:path';
import { BackupError } from './errors.ts';
import { ByteReader } from './byte-reader.ts';

export const ARCHIVE_MAGIC = Buffer.from('BKVARC', 'ascii');
export const ARCHIVE_VERSION = 1;
const KIND_DIRECTORY = 1;
const KIND_FILE = 2;
const ENTRY_END = 0;
const ENTRY_DIR = 1;
const ENTRY_FILE = 2;
export const MAX_NAME_BYTES = 4096;
const READ_CHUNK = 64 * 1024;

export type ArchiveKind = 'directory' | 'file';

export interface ArchiveEntry {
  type: 'dir' | 'file';
  /** Relative POSIX path inside the archive. */
  name: string;
  size: number;
  /** Where to read it from when packing. */
  path: string;
}

export interface ArchivePlan {
  kind: ArchiveKind;
  entries: ArchiveEntry[];
  totalBytes: number;
}

/**
 * Lists what would be packed: regular files and directories only, in sorted pre-order so that every
 * directory precedes its contents. Symlinks and special files are refused rather than followed, since
 * following them could pull in files from outside the backup folder.
 */
export async function planArchive(input: string): Promise<ArchivePlan> {
  let st;
  try {
    st = await lstat(input);
  } catch (e) {
    throw new BackupError('BACKUP_BAD_INPUT', `cannot read backup input '${input}': ${(e as NodeJS.ErrnoException).code ?? e}`);
  }
  if (st.isFile()) {
    return { kind: 'file', entries: [{ type: 'file', name: basename(input), size: st.size, path: input }], totalBytes: st.size };
  }
  if (!st.isDirectory()) throw new BackupError('BACKUP_BAD_INPUT', `backup input '${input}' is neither a regular file nor a directory`);
  const entries: ArchiveEntry[] = [];
  let totalBytes = 0;
  const walk = async (dir: string, prefix: string): Promise<void> => {
    const names = (await readdir(dir)).sort();
    for (const n of names) {
      const path = join(dir, n);
      const name = prefix ? `${prefix}/${n}` : n;
      checkEntryName(name); // refuse to write what we could not restore
      const s = await lstat(path);
      if (s.isDirectory()) {
        entries.push({ type: 'dir', name, size: 0, path });
        await walk(path, name);
      } else if (s.isFile()) {
        entries.push({ type: 'file', name, size: s.size, path });
        totalBytes += s.size;
      } else {
        throw new BackupError('BACKUP_BAD_INPUT', `'${name}' in the backup input is not a regular file or directory (symlinks and special files are not backed up)`);
      }
    }
  };
  await walk(input, '');
  return { kind: 'directory', entries, totalBytes };
}

function entryHead(type: number, name: string, size?: number): Buffer {
  const nameBytes = Buffer.from(name, 'utf8');
  const b = Buffer.alloc(1 + 2 + nameBytes.length + (size === undefined ? 0 : 8));
  b[0] = type;
  b.writeUInt16BE(nameBytes.length, 1);
  nameBytes.copy(b, 3);
  if (size !== undefined) b.writeBigUInt64BE(BigInt(size), 3 + nameBytes.length);
  return b;
}

/** Streams the archive for a plan. Reads each file in fixed chunks and checks it did not change size. */
export async function* packArchive(plan: ArchivePlan, onBytes?: (n: number) => void): AsyncGenerator<Buffer> {
  const head = Buffer.alloc(ARCHIVE_MAGIC.length + 2);
  ARCHIVE_MAGIC.copy(head, 0);
  head[6] = ARCHIVE_VERSION;
  head[7] = plan.kind === 'directory' ? KIND_DIRECTORY : KIND_FILE;
  yield head;
  for (const e of plan.entries) {
    if (e.type === 'dir') {
      yield entryHead(ENTRY_DIR, e.name);
      continue;
    }
    yield entryHead(ENTRY_FILE, e.name, e.size);
    const fh = await open(e.path, 'r');
    try {
      let left = e.size;
      while (left > 0) {
        const buf = Buffer.allocUnsafe(Math.min(READ_CHUNK, left));
        const { bytesRead } = await fh.read(buf, 0, buf.length, null);
        if (bytesRead === 0) throw new BackupError('BACKUP_BAD_INPUT', `'${e.name}' shrank while being backed up`);
        left -= bytesRead;
        onBytes?.(bytesRead);
        yield buf.subarray(0, bytesRead);
      }
      const { bytesRead } = await fh.read(Buffer.alloc(1), 0, 1, null);
      if (bytesRead !== 0) throw new BackupError('BACKUP_BAD_INPUT', `'${e.name}' grew while being backed up`);
    } finally {
      await fh.close();
    }
  }
  yield Buffer.from([ENTRY_END]);
}

/**
 * Rules for a name inside the archive (a relative POSIX path). Throws BACKUP_BAD_ENTRY. The same rules
 * apply when packing, so bkv never writes a backup it would refuse to restore.
 */
export function checkEntryName(name: string): void {
  const bytes = Buffer.byteLength(name, 'utf8');
  const bad = (why: string) => new BackupError('BACKUP_BAD_ENTRY', `archive entry name ${JSON.stringify(name.slice(0, 200))} ${why}`);
  if (bytes === 0) throw bad('is empty');
  if (bytes > MAX_NAME_BYTES) throw bad(`is longer than ${MAX_NAME_BYTES} bytes`);
  // Control characters (NUL above all) and backslashes mean different things on other systems.
  if (/[\u0000-\u001f\u007f\\]/.test(name)) throw bad('contains a control character or a backslash');
  if (name.startsWith('/') || isAbsolute(name) || /^[A-Za-z]:/.test(name)) throw bad('is an absolute path');
  for (const part of name.split('/')) {
    if (part === '') throw bad('has an empty path component');
    if (part === '.' || part === '..') throw bad(`has a '${part}' path component`);
  }
}

const fatalUtf8 = new TextDecoder('utf-8', { fatal: true });

export interface UnpackResult {
  kind: ArchiveKind;
  files: number;
  directories: number;
  bytes: number;
}

/**
 * Writes an archive stream into `root`, which must be an empty directory the caller owns (restore
 * gives it a fresh temporary one). Parents must appear before children; files are created with O_EXCL
 * so that a duplicate name fails instead of overwriting.
 */
export async function unpackArchive(source: AsyncIterable<Uint8Array>, root: string): Promise<UnpackResult> {
  const reader = new ByteReader(source);
  const corrupt = (why: string) => new BackupError('BACKUP_CORRUPT', `backup archive is malformed: ${why}`);
  const exact = async (n: number, what: string): Promise<Buffer> => {
    const b = await reader.read(n);
    if (b.length !== n) throw corrupt(`ends inside ${what}`);
    return b;
  };
  const rootAbs = resolve(root);
  const dirs = new Set<string>(['']);
  const result: UnpackResult = { kind: 'directory', files: 0, directories: 0, bytes: 0 };
  try {
    const head = await exact(ARCHIVE_MAGIC.length + 2, 'its header');
    if (!head.subarray(0, ARCHIVE_MAGIC.length).equals(ARCHIVE_MAGIC)) throw corrupt('bad archive magic');
    if (head[6] !== ARCHIVE_VERSION) throw corrupt(`archive version ${head[6]} is not supported`);
    if (head[7] !== KIND_DIRECTORY && head[7] !== KIND_FILE) throw corrupt(`unknown archive kind ${head[7]}`);
    result.kind = head[7] === KIND_DIRECTORY ? 'directory' : 'file';
    for (;;) {
      const type = (await exact(1, 'an entry'))[0];
      if (type === ENTRY_END) break;
      if (type !== ENTRY_DIR && type !== ENTRY_FILE) throw corrupt(`unknown entry type ${type}`);
      const nameLen = (await exact(2, 'an entry name length')).readUInt16BE(0);
      let name: string;
      try {
        name = fatalUtf8.decode(await exact(nameLen, 'an entry name'));
      } catch (e) {
        if (e instanceof BackupError) throw e;
        throw new BackupError('BACKUP_BAD_ENTRY', 'archive entry name is not valid UTF-8');
      }
      checkEntryName(name);
      const slash = name.lastIndexOf('/');
      const parent = slash < 0 ? '' : name.slice(0, slash);
      if (!dirs.has(parent)) throw new BackupError('BACKUP_BAD_ENTRY', `archive entry ${JSON.stringify(name)} comes before its directory`);
      if (result.kind === 'file' && (type !== ENTRY_FILE || result.files > 0 || parent !== '')) {
        throw corrupt('a single-file archive must hold exactly one top-level file');
      }
      const target = resolve(rootAbs, ...name.split('/'));
      // Belt and braces over checkEntryName: the resolved path must stay under root.
      const rel = relative(rootAbs, target);
      if (rel === '' || rel.startsWith('..') || isAbsolute(rel) || rel.split(sep).includes('..')) {
        throw new BackupError('BACKUP_BAD_ENTRY', `archive entry ${JSON.stringify(name)} escapes the restore directory`);
      }
      if (type === ENTRY_DIR) {
        try {
          await mkdir(target, { mode: 0o700 });
        } catch (e) {
          if ((e as NodeJS.ErrnoException).code === 'EEXIST') throw new BackupError('BACKUP_BAD_ENTRY', `archive entry ${JSON.stringify(name)} appears twice`);
          throw e;
        }
        dirs.add(name);
        result.directories++;
        continue;
      }
      const size = (await exact(8, 'a file size')).readBigUInt64BE(0);
      if (size > BigInt(Number.MAX_SAFE_INTEGER)) throw corrupt(`file size of ${JSON.stringify(name)} is too large`);
      let fh;
      try {
        fh = await open(target, 'wx', 0o600);
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code === 'EEXIST') throw new BackupError('BACKUP_BAD_ENTRY', `archive entry ${JSON.stringify(name)} appears twice`);
        throw e;
      }
      try {
        let left = Number(size);
        for await (const piece of reader.chunks(left)) {
          await fh.write(piece);
          left -= piece.length;
        }
        if (left > 0) throw corrupt(`ends inside file ${JSON.stringify(name)}`);
        await fh.sync();
      } finally {
        await fh.close();
      }
      result.files++;
      result.bytes += Number(size);
    }
    if (!(await reader.atEnd())) throw corrupt('data after the end marker');
    if (result.kind === 'file' && result.files !== 1) throw corrupt('a single-file archive must hold exactly one file');
    return result;
  } finally {
    await reader.close();
  }
}
