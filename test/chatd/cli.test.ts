// `bkv account create|list|revoke` as a user runs it (child process), and its tokens at a live ChatD.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { accountsPath, tokenHash } from '../../chatd/accounts.ts';
import { startChatd } from '../../chatd/server.ts';
import { ChatdAuthError, ChatdClient } from '../../client/transport.ts';
import { silentLog } from '../../chatd/log.ts';
import { randomBody, startStandInVault, tempState, transform } from './fixtures.ts';

const bkv = fileURLToPath(new URL('../../bin/bkv.js', import.meta.url));
const run = (...args: string[]) => spawnSync(process.execPath, [bkv, ...args], { encoding: 'utf8' });
// Async variant: the in-process ChatD must keep serving while the CLI runs.
const runAsync = (...args: string[]) =>
  new Promise<{ status: number | null; stdout: string; stderr: string }>((resolve) => {
    const p = spawn(process.execPath, [bkv, ...args]);
    let stdout = '';
    let stderr = '';
    p.stdout.on('data', (d) => (stdout += d));
    p.stderr.on('data', (d) => (stderr += d));
    p.on('close', (status) => resolve({ status, stdout, stderr }));
  });

let state: ReturnType<typeof tempState>;
beforeAll(() => {
  state = tempState();
});
afterAll(() => state.cleanup());

describe('bkv account', () => {
  it('--json: create answers one JSON object with the token (or its file), revoke too; a failure is JSON on stderr', () => {
    const own = tempState();
    try {
      const r = run('account', 'create', '--phone', '+15551230001', '--state', own.dir, '--json');
      expect(r.status, r.stderr).toBe(0);
      const made = JSON.parse(r.stdout) as { ok: boolean; phone: string; tag: string; token: string };
      expect(made).toMatchObject({ ok: true, phone: '+15551230001' });
      expect(made.token).toMatch(/^bkvt_[A-Za-z0-9_-]{43}$/);
      expect(made.tag).toBe(tokenHash(made.token).slice(0, 12));
      expect(r.stderr).not.toContain(made.token.slice(5));
      const out = join(own.dir, 'json.token');
      const f = run('account', 'create', '--phone', '+15551230002', '--state', own.dir, '--out', out, '--json');
      expect(JSON.parse(f.stdout)).toMatchObject({ ok: true, phone: '+15551230002', tokenFile: out });
      expect(f.stdout).not.toContain('bkvt_');
      const again = run('account', 'create', '--phone', '+15551230001', '--state', own.dir, '--json');
      expect(again.status).toBe(1);
      expect(again.stdout).toBe('');
      expect((JSON.parse(again.stderr) as { error: { code: string } }).error.code).toMatch(/^[A-Z_]+$/);
      expect(JSON.parse(run('account', 'revoke', '--phone', '+15551230001', '--state', own.dir, '--json').stdout)).toEqual({ ok: true, phone: '+15551230001', revoked: true });
    } finally {
      own.cleanup();
    }
  });

  it('creates an account, prints the token once and stores only its hash', () => {
    const r = run('account', 'create', '--phone', '+15551234567', '--state', state.dir);
    expect(r.status).toBe(0);
    const token = r.stdout.trim();
    expect(token).toMatch(/^bkvt_[A-Za-z0-9_-]{43}$/);
    expect(r.stderr).toContain('shown only this once');
    const file = readFileSync(accountsPath(state.dir), 'utf8');
    expect(file).not.toContain(token.slice(5));
    expect(file).toContain(tokenHash(token));

    const list = run('account', 'list', '--state', state.dir);
    expect(list.status).toBe(0);
    expect(list.stdout).toContain('+15551234567');
    expect(list.stdout).toContain('active');
    expect(list.stdout).toContain(tokenHash(token).slice(0, 12));
    expect(list.stdout + list.stderr).not.toContain(token.slice(5));
  });

  it('create --out F writes only the token to a new 0600 file and refuses an existing F before creating the account', () => {
    const state = tempState();
    try {
      const out = join(state.dir, 'my.token');
      // umask 000: the 0600 must be bkv's doing, not the shell's default.
      const r = spawnSync('/bin/sh', ['-c', 'umask 000; exec "$0" "$@"', process.execPath, bkv, 'account', 'create', '--phone', '+15557654321', '--state', state.dir, '--out', out], { encoding: 'utf8' });
      expect(r.status).toBe(0);
      expect(r.stdout).toBe('');
      const token = readFileSync(out, 'utf8').trim();
      expect(readFileSync(out, 'utf8')).toMatch(/^bkvt_[A-Za-z0-9_-]{43}\n$/);
      expect(statSync(out).mode & 0o777).toBe(0o600);
      expect(r.stderr).toContain(out);
      expect(r.stderr).not.toContain(token.slice(5, 20));
      expect(readFileSync(accountsPath(state.dir), 'utf8')).toContain(tokenHash(token));

      const before = readFileSync(accountsPath(state.dir), 'utf8');
      const again = run('account', 'create', '--phone', '+15550009999', '--state', state.dir, '--out', out);
      expect(again.status).toBe(1);
      expect(again.stderr).toContain('[OUT_EXISTS]');
      expect(readFileSync(out, 'utf8').trim()).toBe(token);
      // The account was not made either: its token would have been shown nowhere.
      expect(readFileSync(accountsPath(state.dir), 'utf8')).toBe(before);
      const other = join(state.dir, 'other.token');
      const badPhone = run('account', 'create', '--phone', '555', '--state', state.dir, '--out', other);
      expect(badPhone.stderr).toContain('[BAD_PHONE]');
      expect(existsSync(other)).toBe(false);
      expect(readFileSync(accountsPath(state.dir), 'utf8')).toBe(before);
    } finally {
      state.cleanup();
    }
  });

  it('refuses bad input with typed errors and leaves the store unchanged', async () => {
    const before = readFileSync(accountsPath(state.dir), 'utf8');
    // None of these may change anything, so they run side by side (each is a tsx start-up).
    const [dup, bad, noPhone, badFlag, badSub, noSub, missing, help] = await Promise.all([
      runAsync('account', 'create', '--phone', '+15551234567', '--state', state.dir),
      runAsync('account', 'create', '--phone', '555-1234', '--state', state.dir),
      runAsync('account', 'create', '--state', state.dir),
      runAsync('account', 'create', '--phone', '+15551234567', '--bogus'),
      runAsync('account', 'frobnicate'),
      runAsync('account'),
      runAsync('account', 'revoke', '--phone', '+15550001111', '--state', state.dir),
      runAsync('account', '--help'),
    ]);
    expect(dup.status).toBe(1);
    expect(dup.stderr).toContain('[ACCOUNT_EXISTS]');
    expect(bad.status).toBe(1);
    expect(bad.stderr).toContain('[BAD_PHONE]');
    for (const r of [noPhone, badFlag, badSub, noSub]) expect(r.status).toBe(2);
    expect(missing.status).toBe(1);
    expect(missing.stderr).toContain('[ACCOUNT_NOT_FOUND]');
    expect(readFileSync(accountsPath(state.dir), 'utf8')).toBe(before);
    expect(help.status).toBe(0);
    expect(help.stdout).toContain('bkv account create --phone');
  });

  it('issues tokens a running ChatD accepts, and revocation takes effect without a restart', async () => {
    const vault = await startStandInVault();
    const chatd = await startChatd({ vaultUrl: vault.url, stateDir: state.dir, log: silentLog });
    try {
      const created = await runAsync('account', 'create', '--phone', '+447700900123', '--state', state.dir);
      expect(created.status).toBe(0);
      const c = new ChatdClient({ url: chatd.url, token: created.stdout.trim() });
      const body = randomBody(100);
      expect(await c.request(body)).toEqual(transform(body));
      expect(vault.received.at(-1)!.user).toBe('+447700900123');

      const revoked = await runAsync('account', 'revoke', '--phone', '+447700900123', '--state', state.dir);
      expect(revoked.status).toBe(0);
      await expect(c.request(body)).rejects.toBeInstanceOf(ChatdAuthError);
      expect(vault.received).toHaveLength(1);
      c.close();

      const list = JSON.parse((await runAsync('account', 'list', '--json', '--state', state.dir)).stdout) as { phone: string; status: string }[];
      expect(list.map((a) => [a.phone, a.status])).toEqual([['+15551234567', 'active'], ['+447700900123', 'revoked']]);
    } finally {
      await chatd.close();
      await vault.close();
    }
  });

  it('defaults the state directory to .bkv in the working directory', () => {
    const s = tempState();
    try {
      const r = spawnSync(process.execPath, [bkv, 'account', 'create', '--phone', '+15551234567'], { encoding: 'utf8', cwd: s.dir });
      expect(r.status).toBe(0);
      expect(existsSync(`${s.dir}/.bkv/chatd/accounts.json`)).toBe(true);
    } finally {
      s.cleanup();
    }
  });
});
