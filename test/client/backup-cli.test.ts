// The `bkv backup` command line is the subject here, so these run the real CLI in a child process.
import { describe, expect, it } from 'vitest';
import { spawn } from 'node:child_process';
import { closeSync, openSync } from 'node:fs';
import { mkdir, readdir, readFile, stat, truncate, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { generateBackupKey, parseKey64 } from '../../client/key64.ts';
import { createBackup } from '../../client/backup.ts';
import { CloudFolder } from '../../client/cloud.ts';
import { HEADER_BYTES } from '../../client/backup-format.ts';
import { command, subcommands } from '../../scripts/commands/backup.ts';
import { expectNoTrace, makeChatFolder, snapshot, withTemp } from './fixtures.ts';

const bkv = fileURLToPath(new URL('../../bin/bkv.js', import.meta.url));

// `umask` runs bkv under that umask (through sh), to show a mode bkv sets does not depend on it.
function run(args: string[], opts: { cwd: string; stdin?: string; umask?: string }): Promise<{ status: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const [cmd, argv] = opts.umask === undefined ? [process.execPath, [bkv, ...args]] : ['/bin/sh', ['-c', `umask ${opts.umask}; exec "$0" "$@"`, process.execPath, bkv, ...args]];
    const child = spawn(cmd, argv, { cwd: opts.cwd, stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    child.on('error', reject);
    child.on('close', (status) => resolve({ status, stdout, stderr }));
    child.stdin.end(opts.stdin ?? '');
  });
}

// stdout carries the key and nothing else, so `> key.txt` is a file --key64-file reads back.
const KEY_ONLY = /^[0-9a-f]{4}(?: [0-9a-f]{4}){15}\n$/;

function keyFrom(stdout: string): string {
  expect(stdout).toMatch(KEY_ONLY);
  return stdout.trim();
}

async function createIn(dir: string, input: string, extra: string[] = []) {
  const r = await run(['backup', 'create', '--in', input, '--key64', '--state', 'st', ...extra], { cwd: dir });
  expect(r.status).toBe(0);
  const key = keyFrom(r.stdout);
  expect(r.stderr).toContain('Backup written');
  expect(r.stderr).not.toContain(key.slice(0, 14));
  return { ...r, key };
}

// XOR, not overwrite: writing a fixed value is a no-op when the byte already holds it (1 run in 256).
function flipped(bytes: Buffer, at: number): Buffer {
  const copy = Buffer.from(bytes);
  copy[at] ^= 0x55;
  return copy;
}

describe('bkv backup (CLI)', () => {
  it('round-trips a folder: key printed once on stdout, never stored; key from argv, file and stdin', async () => {
    await withTemp(async (dir) => {
      await makeChatFolder(join(dir, 'chat'));
      const { stderr, key } = await createIn(dir, 'chat');
      expect(stderr).toContain(join('st', 'cloud', 'default.bkv'));
      // Neither K nor its hex is anywhere in the state dir (the cloud folder included).
      const k = Buffer.from(parseKey64(key));
      const blob = await readFile(join(dir, 'st', 'cloud', 'default.bkv'));
      expect(blob.includes(k)).toBe(false);
      expect(blob.includes(Buffer.from(k.toString('hex')))).toBe(false);
      expect(await readdir(join(dir, 'st'))).toEqual(['cloud']);

      const a = await run(['backup', 'restore', '--key64', key, '--state', 'st', '--out', 'r1'], { cwd: dir });
      expect(a.status).toBe(0);
      expect(a.stdout).toMatch(/^Restored 5 files/);
      await writeFile(join(dir, 'key.txt'), `${key.toUpperCase().replaceAll(' ', '-')}\n`);
      const b = await run(['backup', 'restore', '--key64-file', 'key.txt', '--state', 'st', '--out', 'r2'], { cwd: dir });
      expect(b.status).toBe(0);
      const c = await run(['backup', 'restore', '--key64', '-', '--cloud', join('st', 'cloud'), '--out', 'r3'], { cwd: dir, stdin: `${key}\n` });
      expect(c.status).toBe(0);
      const want = await snapshot(join(dir, 'chat'));
      for (const out of ['r1', 'r2', 'r3']) expect(await snapshot(join(dir, out))).toEqual(want);
    });
  });

  it('round-trips a single file, per account, with progress on request', async () => {
    await withTemp(async (dir) => {
      await writeFile(join(dir, 'msgstore.db'), Buffer.alloc(300_000, 7));
      const r = await run(['backup', 'create', '--in', 'msgstore.db', '--key64', '--cloud', 'drive', '--account', 'alice@example.com', '--progress'], { cwd: dir });
      expect(r.status).toBe(0);
      expect(r.stderr).toMatch(/encrypt: 293\.0 KiB \/ 293\.0 KiB \(100%\)\nBackup written/);
      expect(await readdir(join(dir, 'drive'))).toEqual(['alice@example.com.bkv']);
      const back = await run(['backup', 'restore', '--key64', keyFrom(r.stdout), '--cloud', 'drive', '--account', 'alice@example.com', '--out', 'out'], { cwd: dir });
      expect(back.status).toBe(0);
      expect(back.stderr).toBe(''); // not a TTY and no --progress: quiet
      expect((await readFile(join(dir, 'out', 'msgstore.db'))).equals(Buffer.alloc(300_000, 7))).toBe(true);
    });
  });

  it('wrong key, truncated file, flipped byte, missing backup: exit 1 with the code, --out never created', async () => {
    await withTemp(async (dir) => {
      await makeChatFolder(join(dir, 'chat'), 200_000);
      const { key } = await createIn(dir, 'chat');
      const file = join(dir, 'st', 'cloud', 'default.bkv');
      const good = await readFile(file);
      const other = key.replace(/^./, (c) => (c === '0' ? '1' : '0'));
      const cases: [string, () => Promise<void>, string, string][] = [
        ['wrong key', async () => {}, other, 'BACKUP_WRONG_KEY'],
        ['truncated at a segment boundary', () => truncate(file, HEADER_BYTES + 2 * (65536 + 16)), key, 'BACKUP_TRUNCATED'],
        ['truncated mid-segment', () => truncate(file, good.length - 100), key, 'BACKUP_CORRUPT'],
        ['flipped body byte', () => writeFile(file, flipped(good, 5000)), key, 'BACKUP_CORRUPT'],
        ['flipped header byte', () => writeFile(file, flipped(good, 60)), key, 'BACKUP_CORRUPT'],
      ];
      for (const [what, damage, k, code] of cases) {
        await writeFile(file, good);
        await damage();
        const r = await run(['backup', 'restore', '--key64', k, '--state', 'st', '--out', 'out'], { cwd: dir });
        expect(r.status, what).toBe(1);
        expect(r.stderr, what).toContain(`[${code}]`);
        expect(r.stderr).not.toContain(key.slice(0, 9));
        await expectNoTrace(dir, 'out', ['chat', 'st']);
      }
      await writeFile(file, good);
      const missing = await run(['backup', 'restore', '--key64', key, '--state', 'st', '--account', 'bob', '--out', 'out'], { cwd: dir });
      expect(missing.status).toBe(1);
      expect(missing.stderr).toContain('[BACKUP_NOT_FOUND]');
      await expectNoTrace(dir, 'out', ['chat', 'st']);
    });
  });

  it('explains a mistyped key without echoing it, and usage errors exit 2', async () => {
    await withTemp(async (dir) => {
      const key = 'ab12'.repeat(16);
      const typo = `${key.slice(0, 16)}g${key.slice(17)}`;
      const r = await run(['backup', 'restore', '--key64', typo, '--out', 'o'], { cwd: dir });
      expect(r.status).toBe(1);
      expect(r.stderr).toBe("bkv: character 'g' at position 17 is not a hex digit [BAD_KEY64]\n");
      const short = await run(['backup', 'restore', '--key64', '-', '--out', 'o'], { cwd: dir, stdin: key.slice(1) });
      expect(short.stderr).toContain('got 63 digits, need 64');
      const stray = await run(['backup', 'restore', key, '--out', 'o'], { cwd: dir });
      expect(stray.status).toBe(2);
      expect(stray.stderr).not.toContain('ab12ab12');
      for (const args of [['backup', 'create', '--in', 'x'], ['backup', 'restore', '--key64', key], ['backup', 'nope'], ['backup', 'restore', '--key64', key, '--key64-file', 'f', '--out', 'o']]) {
        expect((await run(args, { cwd: dir })).status, args.join(' ')).toBe(2);
      }
      expect(await readdir(dir)).toEqual([]);
    });
  });

  it('a wrong key on a password-protected backup hints at the password', async () => {
    await withTemp(async (dir) => {
      await makeChatFolder(join(dir, 'chat'));
      await createBackup({ input: join(dir, 'chat'), key: generateBackupKey(), mode: 'password', cloud: new CloudFolder(join(dir, 'st', 'cloud')) });
      const r = await run(['backup', 'restore', '--key64', 'ab12'.repeat(16), '--state', 'st', '--out', 'out'], { cwd: dir });
      expect(r.status).toBe(1);
      expect(r.stderr).toContain('protected by a password');
      expect(r.stderr).toContain('[BACKUP_WRONG_KEY]');
      await expectNoTrace(dir, 'out', ['chat', 'st']);
    });
  });

  it('create --key64 > key.txt holds only the key: restore --key64-file key.txt takes it back', async () => {
    await withTemp(async (dir) => {
      await makeChatFolder(join(dir, 'chat'));
      const fd = openSync(join(dir, 'key.txt'), 'w');
      const r = await new Promise<{ status: number | null; stderr: string }>((resolve, reject) => {
        const child = spawn(process.execPath, [bkv, 'backup', 'create', '--in', 'chat', '--key64', '--state', 'st'], { cwd: dir, stdio: ['ignore', fd, 'pipe'] });
        let stderr = '';
        child.stderr!.on('data', (d) => (stderr += d));
        child.on('error', reject);
        child.on('close', (status) => resolve({ status, stderr }));
      });
      closeSync(fd);
      expect(r.status).toBe(0);
      expect(r.stderr).toContain('shown only this once');
      const back = await run(['backup', 'restore', '--key64-file', 'key.txt', '--state', 'st', '--out', 'out'], { cwd: dir });
      expect(back.stderr).toBe('');
      expect(back.status).toBe(0);
      expect(await snapshot(join(dir, 'out'))).toEqual(await snapshot(join(dir, 'chat')));
    });
  });

  it('--key64-out F writes the key to a new 0600 file, never to stdout, and refuses an existing F before uploading', async () => {
    await withTemp(async (dir) => {
      await makeChatFolder(join(dir, 'chat'));
      const r = await run(['backup', 'create', '--in', 'chat', '--key64-out', 'k.txt', '--state', 'st'], { cwd: dir, umask: '000' });
      expect(r.status).toBe(0);
      expect(r.stdout).toBe('');
      const key = keyFrom(await readFile(join(dir, 'k.txt'), 'utf8'));
      expect(r.stderr).toContain("k.txt");
      expect(r.stderr).not.toContain(key.slice(0, 14));
      expect((await stat(join(dir, 'k.txt'))).mode & 0o777).toBe(0o600);
      const before = await readFile(join(dir, 'st', 'cloud', 'default.bkv'));

      const again = await run(['backup', 'create', '--in', 'chat', '--key64', '--key64-out', 'k.txt', '--state', 'st'], { cwd: dir });
      expect(again.status).toBe(1);
      expect(again.stderr).toContain('[OUT_EXISTS]');
      expect(again.stdout).toBe('');
      expect(await readFile(join(dir, 'k.txt'), 'utf8')).toBe(`${key}\n`);
      expect((await readFile(join(dir, 'st', 'cloud', 'default.bkv'))).equals(before)).toBe(true);

      const noDir = await run(['backup', 'create', '--in', 'chat', '--key64-out', join('missing', 'k.txt'), '--state', 'st'], { cwd: dir });
      expect(noDir.status).toBe(1);
      expect(noDir.stderr).toContain('[OUT_UNWRITABLE]');
      // A failed upload leaves no empty key file that looks like a saved key.
      const badIn = await run(['backup', 'create', '--in', 'nothing-here', '--key64-out', 'k2.txt', '--state', 'st'], { cwd: dir });
      expect(badIn.status).toBe(1);
      expect(await readdir(dir)).not.toContain('k2.txt');
      expect((await readFile(join(dir, 'st', 'cloud', 'default.bkv'))).equals(before)).toBe(true);

      const back = await run(['backup', 'restore', '--key64-file', 'k.txt', '--state', 'st', '--out', 'out'], { cwd: dir });
      expect(back.status).toBe(0);
    });
  });

  it('--json: the result is one JSON object on stdout, a failure one JSON object on stderr (code, message, hint)', async () => {
    await withTemp(async (dir) => {
      await makeChatFolder(join(dir, 'chat'));
      const c = await run(['backup', 'create', '--in', 'chat', '--key64', '--state', 'st', '--json'], { cwd: dir });
      expect(c.status, c.stderr).toBe(0);
      expect(c.stdout.trim().split('\n')).toHaveLength(1);
      const made = JSON.parse(c.stdout) as Record<string, unknown>;
      expect(made).toMatchObject({ ok: true, mode: 'key64', account: 'default', object: join(dir, 'st', 'cloud', 'default.bkv') });
      expect(made.files).toBeGreaterThan(0);
      expect(made.encryptedBytes).toBeGreaterThan(made.bytes as number);
      const key = made.key64 as string;
      expect(`${key}\n`).toMatch(KEY_ONLY);
      expect(c.stderr).not.toContain(key.slice(0, 14));
      await writeFile(join(dir, 'key.txt'), `${key}\n`, { mode: 0o600 });

      const r = await run(['backup', 'restore', '--key64-file', 'key.txt', '--state', 'st', '--out', 'out', '--json'], { cwd: dir });
      expect(r.status, r.stderr).toBe(0);
      expect(JSON.parse(r.stdout)).toMatchObject({ ok: true, object: made.object, files: made.files, bytes: made.bytes, out: join(dir, 'out') });
      expect(await snapshot(join(dir, 'out'))).toEqual(await snapshot(join(dir, 'chat')));

      // Failures: stdout empty, stderr one JSON line; the wrong key is not echoed.
      const other = key.replace(/^./, (ch) => (ch === '0' ? '1' : '0'));
      const w = await run(['backup', 'restore', '--key64', other, '--state', 'st', '--out', 'out2', '--json'], { cwd: dir });
      expect(w.status).toBe(1);
      expect(w.stdout).toBe('');
      expect(w.stderr.trim().split('\n')).toHaveLength(1);
      const err = JSON.parse(w.stderr) as { error: { code: string; message: string; hint?: string } };
      expect(err.error.code).toBe('BACKUP_WRONG_KEY');
      expect(err.error.message.length).toBeGreaterThan(10);
      expect(err.error.hint).toMatch(/key/);
      for (const k of [key, other]) expect(w.stderr).not.toContain(k.slice(0, 9));
      const u = await run(['backup', 'create', '--in', 'chat', '--state', 'st', '--json'], { cwd: dir });
      expect(u.status).toBe(2);
      expect(JSON.parse(u.stderr)).toMatchObject({ error: { code: 'USAGE', hint: "see the command's --help" } });
    });
  });

  it('--help tells the truth: every documented flag is accepted and every accepted flag is documented', async () => {
    await withTemp(async (dir) => {
      for (const s of subcommands) {
        const r = await run(['backup', s.name, '--help'], { cwd: dir });
        expect(r.status).toBe(0);
        const documented = new Set([...r.stdout.matchAll(/^ {2}(--[a-z0-9-]+)/gm)].map((m) => m[1]));
        const accepted = new Set(Object.keys(s.flags).map((f) => `--${f}`).concat(['--state', '--json', ...s.common.map((c) => `--${c}`)]));
        expect(documented).toEqual(accepted);
      }
      // The cloud folder and progress belong to the commands that move a backup; the vault-only ones
      // neither take nor list them.
      expect(subcommands.find((s) => s.name === 'status')!.common).toEqual(['cloud', 'account']);
      for (const name of ['enable-password', 'change-password', 'disable']) {
        expect(subcommands.find((s) => s.name === name)!.common, name).toEqual([]);
        const r = await run(['backup', name, '--cloud', 'x', '--yes'], { cwd: dir });
        expect(r.status, name).toBe(2);
        expect(r.stderr, name).toContain("'--cloud'");
      }
      for (const name of ['create', 'restore']) expect(subcommands.find((s) => s.name === name)!.common, name).toEqual(['cloud', 'account', 'progress']);
      const top = await run(['backup', '--help'], { cwd: dir });
      for (const s of subcommands) expect(top.stdout).toContain(`  ${s.name} `);
      expect(command.help).toBe(top.stdout.trimEnd());
    });
  });
});
