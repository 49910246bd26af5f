import { describe, expect, it } from 'vitest';
import { mkdir, readdir, symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { encryptBackup } from '../../client/backup-format.ts';
import { checkEntryName } from '../../client/archive.ts';
import { backupObjectName, createBackup, restoreBackup } from '../../client/backup.ts';
import { CloudFolder } from '../../client/cloud.ts';
import { BackupError } from '../../client/errors.ts';
import { expectNoTrace, makeChatFolder, snapshot, withTemp } from './fixtures.ts';

const K = Uint8Array.from({ length: 32 }, (_, i) => 3 * i);

type Entry = { dir: string } | { file: string; data?: string; size?: number } | { rawName: Buffer };

/** An archive built by hand from the documented layout, so we can write what bkv itself never would. */
function archive(entries: Entry[], kind = 1, trailer: Buffer = Buffer.from([0])): Buffer {
  const parts: Buffer[] = [Buffer.from('BKVARC', 'ascii'), Buffer.from([1, kind])];
  for (const e of entries) {
    if ('rawName' in e) {
      parts.push(Buffer.from([2]), u16(e.rawName.length), e.rawName, u64(0));
      continue;
    }
    const name = Buffer.from('dir' in e ? e.dir : e.file, 'utf8');
    parts.push(Buffer.from(['dir' in e ? 1 : 2]), u16(name.length), name);
    if ('file' in e) {
      const data = Buffer.from(e.data ?? '');
      parts.push(u64(e.size ?? data.length), data);
    }
  }
  parts.push(trailer);
  return Buffer.concat(parts);
}
const u16 = (n: number) => {
  const b = Buffer.alloc(2);
  b.writeUInt16BE(n);
  return b;
};
const u64 = (n: number) => {
  const b = Buffer.alloc(8);
  b.writeBigUInt64BE(BigInt(n));
  return b;
};

async function* once(b: Buffer) {
  yield b;
}

/** Encrypts a hand-made archive properly (so it authenticates) and restores it. */
async function restoreCrafted(dir: string, plain: Buffer): Promise<unknown> {
  const cloud = new CloudFolder(join(dir, 'cloud'));
  await cloud.put(backupObjectName('eve'), encryptBackup(once(plain), K, { mode: 'key64' }));
  await mkdir(join(dir, 'r'), { recursive: true });
  return restoreBackup({ key: K, cloud, account: 'eve', out: join(dir, 'r', 'out') }).then(() => undefined, (e: unknown) => e);
}

describe('archive inside the backup', () => {
  it('round-trips a chat folder (nested, empty dir, empty file, unicode names) and a single file', async () => {
    await withTemp(async (dir) => {
      const input = join(dir, 'in');
      await mkdir(input);
      await makeChatFolder(input);
      const cloud = new CloudFolder(join(dir, 'cloud'));
      const made = await createBackup({ input, key: K, mode: 'key64', cloud });
      expect(made).toMatchObject({ object: 'default.bkv', kind: 'directory', files: 5 });
      await restoreBackup({ key: K, cloud, out: join(dir, 'out') });
      expect(await snapshot(join(dir, 'out'))).toEqual(await snapshot(input));

      const single = join(input, 'Databases', 'msgstore.db');
      expect((await createBackup({ input: single, key: K, mode: 'key64', cloud, account: 'solo' })).kind).toBe('file');
      const r = await restoreBackup({ key: K, cloud, account: 'solo', out: join(dir, 'out-file') });
      expect(r).toMatchObject({ kind: 'file', files: 1, plaintextBytes: 7_777 });
      expect(await snapshot(join(dir, 'out-file'))).toEqual({ 'msgstore.db': (await snapshot(join(input, 'Databases')))['msgstore.db'] });
    });
  });

  it('restores into an existing empty directory but never over a non-empty one', async () => {
    await withTemp(async (dir) => {
      await makeChatFolder(join(dir, 'in'));
      const cloud = new CloudFolder(join(dir, 'cloud'));
      await createBackup({ input: join(dir, 'in'), key: K, mode: 'key64', cloud });
      await mkdir(join(dir, 'empty'));
      await restoreBackup({ key: K, cloud, out: join(dir, 'empty') });
      expect(Object.keys(await snapshot(join(dir, 'empty')))).toContain('settings.json');
      await mkdir(join(dir, 'full'));
      await writeFile(join(dir, 'full', 'keep.txt'), 'mine');
      const e = await restoreBackup({ key: K, cloud, out: join(dir, 'full') }).catch((x: unknown) => x);
      expect((e as BackupError).code).toBe('RESTORE_BAD_OUT');
      expect(await snapshot(join(dir, 'full'))).toEqual({ 'keep.txt': Buffer.from('mine').toString('hex') });
      const e2 = await restoreBackup({ key: K, cloud, out: join(dir, 'no', 'such', 'parent') }).catch((x: unknown) => x);
      expect((e2 as BackupError).code).toBe('RESTORE_BAD_OUT');
      expect(await readdir(dir)).not.toContain('no');
    });
  });

  it('control: a hand-built archive with safe names restores', async () => {
    await withTemp(async (dir) => {
      const err = await restoreCrafted(dir, archive([{ dir: 'a' }, { file: 'a/b.txt', data: 'hi' }, { file: 'c', data: '' }]));
      expect(err).toBeUndefined();
      expect(await snapshot(join(dir, 'r', 'out'))).toEqual({ 'a/': '', 'a/b.txt': Buffer.from('hi').toString('hex'), c: '' });
    });
  });

  const traversal: [string, Entry[]][] = [
    ['parent escape', [{ file: '../evil', data: 'x' }]],
    ['deep parent escape', [{ dir: 'a' }, { file: 'a/../../evil', data: 'x' }]],
    ['dot-dot directory', [{ dir: '..' }]],
    ['absolute path', [{ file: '/tmp/evil', data: 'x' }]],
    ['windows drive', [{ file: 'C:evil', data: 'x' }]],
    ['backslash traversal', [{ file: '..\\evil', data: 'x' }]],
    ['empty name', [{ file: '', data: 'x' }]],
    ['empty component', [{ dir: 'a' }, { file: 'a//b', data: 'x' }]],
    ['dot component', [{ file: './x', data: 'x' }]],
    ['NUL byte', [{ file: 'ok\u0000../../evil', data: 'x' }]],
    ['invalid UTF-8', [{ rawName: Buffer.from([0x2e, 0x2e, 0xc0, 0xaf, 0x65]) }]],
    ['file before its directory', [{ file: 'a/b', data: 'x' }]],
    ['duplicate file', [{ file: 'a', data: 'x' }, { file: 'a', data: 'y' }]],
    ['file then directory of the same name', [{ file: 'a', data: 'x' }, { dir: 'a' }]],
  ];
  for (const [what, entries] of traversal) {
    it(`rejects ${what} with BACKUP_BAD_ENTRY and writes nothing anywhere`, async () => {
      await withTemp(async (dir) => {
        const err = await restoreCrafted(dir, archive(entries));
        expect(err).toBeInstanceOf(BackupError);
        expect((err as BackupError).code).toBe('BACKUP_BAD_ENTRY');
        await expectNoTrace(join(dir, 'r'), 'out', []);
        expect((await readdir(dir)).sort()).toEqual(['cloud', 'r']); // no 'evil' beside
      });
    });
  }

  it('rejects malformed archives (bad magic, short file, trailing data, two files in a file backup) as BACKUP_CORRUPT', async () => {
    const bad = [
      Buffer.from('NOTARC\u0001\u0001\u0000'),
      archive([{ file: 'a', data: 'abc', size: 10 }], 1, Buffer.alloc(0)),
      archive([{ file: 'a', data: 'abc' }], 1, Buffer.from([0, 0])),
      archive([{ file: 'a', data: 'abc' }]).subarray(0, 20),
      archive([{ file: 'a' }, { file: 'b' }], 2),
      archive([], 2),
      archive([{ file: 'a' }], 9),
    ];
    for (const plain of bad) {
      await withTemp(async (dir) => {
        const err = await restoreCrafted(dir, plain);
        expect((err as BackupError).code).toBe('BACKUP_CORRUPT');
        await expectNoTrace(join(dir, 'r'), 'out', []);
      });
    }
  });

  it('applies the same name rules when packing, and refuses symlinks', async () => {
    expect(() => checkEntryName('Media/IMG 1.jpg')).not.toThrow();
    await withTemp(async (dir) => {
      await mkdir(join(dir, 'in'));
      await writeFile(join(dir, 'in', 'a\\b'), 'x');
      const cloud = new CloudFolder(join(dir, 'cloud'));
      const e = await createBackup({ input: join(dir, 'in'), key: K, mode: 'key64', cloud }).catch((x: unknown) => x);
      expect((e as BackupError).code).toBe('BACKUP_BAD_ENTRY');
      await mkdir(join(dir, 'in2'));
      await symlink('/etc/passwd', join(dir, 'in2', 'link'));
      const e2 = await createBackup({ input: join(dir, 'in2'), key: K, mode: 'key64', cloud }).catch((x: unknown) => x);
      expect((e2 as BackupError).code).toBe('BACKUP_BAD_INPUT');
      const e3 = await createBackup({ input: join(dir, 'missing'), key: K, mode: 'key64', cloud }).catch((x: unknown) => x);
      expect((e3 as BackupError).code).toBe('BACKUP_BAD_INPUT');
      expect(await cloud.list()).toEqual([]);
    });
  });
});
