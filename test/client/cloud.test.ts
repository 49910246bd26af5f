import { describe, expect, it } from 'vitest';
import { spawn } from 'node:child_process';
import { readdir, readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { Transform, type Writable } from 'node:stream';
import { fileURLToPath } from 'node:url';
import { CloudFolder } from '../../client/cloud.ts';
import { BackupError } from '../../client/errors.ts';
import { makeChatFolder, snapshot, withTemp } from './fixtures.ts';
import { createBackup, restoreBackup } from '../../client/backup.ts';
import { generateBackupKey } from '../../client/key64.ts';

async function* bytes(total: number, chunk = 10_000) {
  for (let sent = 0; sent < total; sent += chunk) yield Buffer.alloc(Math.min(chunk, total - sent), sent / chunk);
}

/** A write stream that dies after `limit` bytes, as a crash or full disk would. Wraps the real one. */
function failAfter(limit: number) {
  return (real: Writable): Writable => {
    let seen = 0;
    const t = new Transform({
      transform(chunk: Buffer, _e, cb) {
        seen += chunk.length;
        if (seen > limit) cb(new Error('injected: disk gone'));
        else cb(null, chunk);
      },
    });
    t.pipe(real);
    return t;
  };
}

describe('cloud folder', () => {
  it('puts, gets, lists, replaces and deletes objects', async () => {
    await withTemp(async (dir) => {
      const cloud = new CloudFolder(join(dir, 'cloud'));
      expect(await cloud.list()).toEqual([]);
      expect(await cloud.put('alice.bkv', bytes(25_000))).toBe(25_000);
      expect(await cloud.put('bob.bkv', bytes(10))).toBe(10);
      expect((await cloud.list()).map((o) => [o.name, o.bytes])).toEqual([['alice.bkv', 25_000], ['bob.bkv', 10]]);
      const { stream, bytes: n } = await cloud.get('alice.bkv');
      const got: Buffer[] = [];
      for await (const c of stream) got.push(c as Buffer);
      expect(n).toBe(25_000);
      const want: Buffer[] = [];
      for await (const c of bytes(25_000)) want.push(c);
      expect(Buffer.concat(got).equals(Buffer.concat(want))).toBe(true);
      await cloud.put('alice.bkv', bytes(5));
      expect((await stat(join(dir, 'cloud', 'alice.bkv'))).size).toBe(5);
      expect(await cloud.delete('alice.bkv')).toBe(true);
      expect(await cloud.delete('alice.bkv')).toBe(false);
      await expect(cloud.get('alice.bkv')).rejects.toMatchObject({ code: 'BACKUP_NOT_FOUND' });
      expect(await readdir(join(dir, 'cloud'))).toEqual(['bob.bkv']);
    });
  });

  it('refuses names that are paths or temporaries', async () => {
    await withTemp(async (dir) => {
      const cloud = new CloudFolder(dir);
      for (const bad of ['../x', 'a/b', '.hidden', '', '..', 'x\u0000', 'a b']) {
        await expect(cloud.put(bad, bytes(1))).rejects.toBeInstanceOf(BackupError);
      }
      expect(await readdir(dir)).toEqual([]);
    });
  });

  it('a write that fails mid-upload leaves no file under the final name and the old object intact', async () => {
    await withTemp(async (dir) => {
      const good = new CloudFolder(dir);
      await good.put('alice.bkv', bytes(1000));
      const before = await readFile(join(dir, 'alice.bkv'));
      const flaky = new CloudFolder(dir, { wrapUploadStream: failAfter(300_000) });
      await expect(flaky.put('alice.bkv', bytes(1_000_000))).rejects.toThrow('injected: disk gone');
      await expect(flaky.put('carol.bkv', bytes(1_000_000))).rejects.toThrow('injected: disk gone');
      expect(await readdir(dir)).toEqual(['alice.bkv']); // no carol.bkv, temporaries removed
      expect((await readFile(join(dir, 'alice.bkv'))).equals(before)).toBe(true);
      // The same wrapper that lets everything through must not lose the tail of the upload.
      const passing = new CloudFolder(dir, { wrapUploadStream: failAfter(Infinity) });
      expect(await passing.put('erin.bkv', bytes(1_000_003, 4099))).toBe(1_000_003);
      expect((await stat(join(dir, 'erin.bkv'))).size).toBe(1_000_003);
    });
  });

  it('a backup whose upload fails leaves the previous backup in place, still restorable with its key', async () => {
    await withTemp(async (dir) => {
      const input = join(dir, 'in');
      await makeChatFolder(input);
      const oldKey = generateBackupKey();
      await createBackup({ input, key: oldKey, mode: 'key64', cloud: new CloudFolder(join(dir, 'cloud')) });
      const flaky = new CloudFolder(join(dir, 'cloud'), { wrapUploadStream: failAfter(20_000) });
      await expect(createBackup({ input, key: generateBackupKey(), mode: 'key64', cloud: flaky })).rejects.toThrow('injected');
      expect(await readdir(join(dir, 'cloud'))).toEqual(['default.bkv']);
      await restoreBackup({ key: oldKey, cloud: new CloudFolder(join(dir, 'cloud')), out: join(dir, 'out') });
      expect(await snapshot(join(dir, 'out'))).toEqual(await snapshot(input));
    });
  });

  it('a process killed mid-upload (SIGKILL) leaves no file under the final name', async () => {
    await withTemp(async (dir) => {
      const run = fileURLToPath(new URL('../../bin/run.js', import.meta.url));
      const child = spawn(process.execPath, [run, fileURLToPath(new URL('./crash-upload.ts', import.meta.url)), dir, 'dave.bkv'], { stdio: 'ignore' });
      // Wait until the upload has really written something, then kill it.
      const deadline = Date.now() + 30_000;
      for (;;) {
        const temps = (await readdir(dir)).filter((n) => n.startsWith('.dave.bkv'));
        if (temps.length && (await stat(join(dir, temps[0]!))).size > 512 * 1024) break;
        if (Date.now() > deadline) throw new Error('child never started writing');
        await new Promise((r) => setTimeout(r, 20));
      }
      const exited = new Promise((r) => child.once('exit', r));
      child.kill('SIGKILL');
      await exited;
      const names = await readdir(dir);
      expect(names).not.toContain('dave.bkv');
      expect(names.some((n) => n.startsWith('.dave.bkv.upload-'))).toBe(true); // the crash's leftover...
      expect(await new CloudFolder(dir).list()).toEqual([]); // ...which is never listed as an object
    });
  });
});
