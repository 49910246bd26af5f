// `bkv serve` as a user runs it: a real process that provisions the state directory, starts the vault
// and ChatD as two more processes, records where they are, and supervises them. The device side is
// the real `bkv` CLI in child processes too.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, lstatSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { pidAlive } from '../../scripts/services.ts';
import { BKV, cliProcess, makeChats, treeDigest, writeSecret } from './fixture.ts';

interface Serve {
  child: ChildProcess;
  chatdUrl: string;
  vaultPid: number;
  chatdPid: number;
  stdout: string[];
  stderr: string[];
  exit: Promise<number | null>;
}

// `umask`: serve (and so the vault and ChatD) runs under it, through sh.
function startServe(stateDir: string, umask?: string): Promise<Serve> {
  const args = [BKV, 'serve', '--state', stateDir];
  const child = umask === undefined
    ? spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'pipe'] })
    : spawn('/bin/sh', ['-c', `umask ${umask}; exec "$0" "$@"`, process.execPath, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  const stdout: string[] = [];
  const stderr: string[] = [];
  const exit = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
  createInterface({ input: child.stderr! }).on('line', (l) => stderr.push(l));
  return new Promise((resolve, reject) => {
    let vaultPid = 0;
    let chatdPid = 0;
    createInterface({ input: child.stdout! }).on('line', (l) => {
      stdout.push(l);
      const v = /vault \(pid (\d+)\)/.exec(l);
      if (v) vaultPid = Number(v[1]);
      const c = /ChatD \(pid (\d+)\)/.exec(l);
      if (c) chatdPid = Number(c[1]);
      if (l.startsWith('CHATD_URL=')) resolve({ child, chatdUrl: l.slice('CHATD_URL='.length), vaultPid, chatdPid, stdout, stderr, exit });
    });
    void exit.then((code) => reject(new Error(`bkv serve exited (${code}) before it was ready: ${stderr.slice(-5).join(' | ')}`)));
  });
}

/** Every path under root (root included) whose mode gives anything to group or others. */
function openToOthers(root: string): string[] {
  const bad: string[] = [];
  const walk = (p: string) => {
    const st = lstatSync(p);
    if (st.isSymbolicLink()) return;
    if (st.mode & 0o077) bad.push(`${p} ${(st.mode & 0o777).toString(8)}`);
    if (st.isDirectory()) for (const n of readdirSync(p)) walk(join(p, n));
  };
  walk(root);
  return bad;
}

async function gone(pid: number): Promise<boolean> {
  for (let i = 0; i < 100 && pidAlive(pid); i++) await new Promise((r) => setTimeout(r, 50));
  return !pidAlive(pid);
}

let dir: string;
let stateDir: string;
const leftovers: ChildProcess[] = [];
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'bkv-e2e-serve-'));
  stateDir = join(dir, 'state');
});
afterAll(() => {
  for (const c of leftovers) if (c.exitCode === null) c.kill('SIGKILL');
  rmSync(dir, { recursive: true, force: true });
});

describe('bkv serve', () => {
  it('provisions, serves the whole password flow to the real CLI, and stops both on Ctrl-C (SIGINT)', async () => {
    // umask 000: whatever bkv writes must be private by its own choice of modes.
    const s = await startServe(stateDir, '000');
    leftovers.push(s.child);
    expect(s.chatdUrl).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
    expect(s.vaultPid).toBeGreaterThan(0);
    expect(s.chatdPid).toBeGreaterThan(0);
    expect(s.vaultPid).not.toBe(s.chatdPid); // ChatD is its own process
    // Provisioned on the way (a fresh directory), and the records devices use were written.
    expect(existsSync(join(stateDir, 'fleet.json'))).toBe(true);
    expect(JSON.parse(readFileSync(join(stateDir, 'serve.json'), 'utf8'))).toMatchObject({ chatdUrl: s.chatdUrl, pid: s.child.pid });
    const keys = JSON.parse(readFileSync(join(stateDir, 'vault-keys.json'), 'utf8')).keys;
    expect(keys['ristretto255-SHA512']).toMatch(/^[0-9a-f]{64}$/);
    // The session key devices pin besides the AKE keys (an X25519 public key).
    expect(keys.session).toMatch(/^[0-9a-f]{64}$/);

    // The device: an account token, then the CLI with no --chatd (found in serve.json).
    const acct = await cliProcess(['account', 'create', '--phone', '+15554440001', '--state', stateDir]);
    expect(acct.status, acct.err).toBe(0);
    const tokenFile = writeSecret(dir, 'token', acct.out.trim());
    const dev = ['--state', stateDir, '--token-file', tokenFile, '--ksf', 'identity'];
    const pw = 'serve test password, from stdin';
    let r = await cliProcess(['backup', 'enable-password', '--password-file', '-', ...dev], { stdin: pw + '\n' });
    expect(r.status, r.err).toBe(0);
    const chats = join(dir, 'chats');
    makeChats(chats);
    const pwFile = writeSecret(dir, 'pw', pw);
    r = await cliProcess(['backup', 'create', '--in', chats, '--password-file', pwFile, ...dev]);
    expect(r.status, r.err).toBe(0);
    // A new device: the token from the environment, the password from stdin.
    r = await cliProcess(['backup', 'restore', '--out', join(dir, 'restored'), '--password-file', '-', '--state', stateDir, '--ksf', 'identity'], {
      stdin: pw,
      env: { BKV_ACCOUNT_TOKEN: acct.out.trim() },
    });
    expect(r.status, r.err).toBe(0);
    expect(treeDigest(join(dir, 'restored'))).toEqual(treeDigest(chats));
    r = await cliProcess(['backup', 'status', ...dev]);
    expect(r.out).toContain('password backup enabled, 10 of 10 attempts left');

    // Everything bkv wrote (tokens, LMDB, fleet.json, pins, accounts, serve.json, keys, the cloud folder) is the owner's alone.
    expect(existsSync(join(stateDir, 'cloud'))).toBe(true);
    expect(openToOthers(stateDir)).toEqual([]);

    // A second serve on the same state would fork the vault's log: refused.
    const second = await cliProcess(['serve', '--state', stateDir]);
    expect(second.status).toBe(1);
    expect(second.err).toContain('[SERVE_RUNNING]');

    s.child.kill('SIGINT'); // what Ctrl-C sends (the children, in their own process group, get nothing)
    expect(await s.exit).toBe(0);
    expect(await gone(s.vaultPid)).toBe(true);
    expect(await gone(s.chatdPid)).toBe(true);
    expect(s.stderr.join('\n')).toContain('stopped (ChatD code 0, vault code 0)');
    expect(existsSync(join(stateDir, 'serve.json'))).toBe(false);
    // The secrets never showed up in what serve (and its children) printed.
    expect([...s.stdout, ...s.stderr].join('\n')).not.toContain(pw);
    expect([...s.stdout, ...s.stderr].join('\n')).not.toContain(acct.out.trim());

    // With nothing running, the device says so.
    r = await cliProcess(['backup', 'status', ...dev, '--chatd', s.chatdUrl]);
    expect(r.status).toBe(1);
    expect(r.err).toContain('[CHATD_UNREACHABLE]');
  });

  it('restarts on the same state (nothing re-provisioned, the record kept); if the vault dies, ChatD is stopped and the exit code says so', async () => {
    const s = await startServe(stateDir);
    leftovers.push(s.child);
    expect(s.stderr.join('\n')).not.toContain('initialised token');
    const tokenFile = join(dir, 'token');
    const r = await cliProcess(['backup', 'status', '--state', stateDir, '--token-file', tokenFile]);
    expect(r.status, r.err).toBe(0);
    expect(r.out).toContain('password backup enabled');

    process.kill(s.vaultPid, 'SIGKILL');
    expect(await s.exit).toBe(3);
    expect(await gone(s.chatdPid)).toBe(true);
    expect(s.stderr.join('\n')).toContain('the vault exited unexpectedly (signal SIGKILL); stopping ChatD');
    expect(existsSync(join(stateDir, 'serve.json'))).toBe(false);
  });

  it('SIGTERM stops ChatD, then the vault, and exits 0', async () => {
    const s = await startServe(stateDir);
    leftovers.push(s.child);
    s.child.kill('SIGTERM');
    expect(await s.exit).toBe(0);
    expect(await gone(s.vaultPid)).toBe(true);
    expect(await gone(s.chatdPid)).toBe(true);
    expect(s.stderr.join('\n')).toContain('SIGTERM: stopping ChatD, then the vault');
  });

  it('a serve killed outright leaves its children; the next serve refuses to start beside that vault', async () => {
    const s = await startServe(stateDir);
    leftovers.push(s.child);
    s.child.kill('SIGKILL');
    await s.exit;
    try {
      const r = await cliProcess(['serve', '--state', stateDir]);
      expect(r.status).toBe(1);
      expect(r.err).toContain('[SERVE_ORPHAN]');
      expect(r.err).toContain(`kill ${s.vaultPid}`);
    } finally {
      for (const pid of [s.vaultPid, s.chatdPid]) if (pidAlive(pid)) process.kill(pid, 'SIGTERM');
    }
    expect(await gone(s.vaultPid)).toBe(true);
    expect(await gone(s.chatdPid)).toBe(true);
  });

  it('if ChatD dies, the vault is stopped and the exit code says so', async () => {
    const s = await startServe(stateDir);
    leftovers.push(s.child);
    process.kill(s.chatdPid, 'SIGKILL');
    expect(await s.exit).toBe(4);
    expect(await gone(s.vaultPid)).toBe(true);
  });
});
