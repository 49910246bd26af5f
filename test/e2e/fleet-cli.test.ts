// `bkv fleet up` and `bkv fleet status --json` as a user runs them: real processes (the supervisor,
// the fleet with its replica threads, ChatD), the real `bkv backup` CLI against the fleet through
// serve.json / vault-keys.json, a fault, and `bkv fleet down`.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, lstatSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { pidAlive } from '../../scripts/services.ts';
import { BKV, cliProcess, makeChats, writeSecret } from './fixture.ts';

const REPLICAS = 3;

let dir: string;
let stateDir: string;
let up: ChildProcess | undefined;
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'bkv-e2e-fleet-cli-'));
  stateDir = join(dir, 'state');
});
afterAll(() => {
  if (up && up.exitCode === null) up.kill('SIGKILL');
  rmSync(dir, { recursive: true, force: true });
});

interface StatusJson {
  leader: string | null;
  replicas: { name: string; region: string; role: string; term: number; commitIndex: number; appliedIndex: number; lag: number; healthy: boolean; reason: string; leader: string | null }[];
  fleet: { url: string; pid: number; cpuMs: number | null; wan: string };
  chatdUrl: string;
}

async function statusJson(): Promise<StatusJson> {
  const r = await cliProcess(['fleet', 'status', '--state', stateDir, '--json']);
  expect(r.status, r.err).toBe(0);
  return JSON.parse(r.out) as StatusJson;
}

async function until<T>(f: () => Promise<T>, ok: (v: T) => boolean, ms = 20_000): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = await f();
    if (ok(v) || Date.now() > end) return v;
    await new Promise((r) => setTimeout(r, 200));
  }
}

describe('bkv fleet up / status', () => {
  it('starts the fleet behind ChatD, reports it as JSON, serves the backup CLI, shows a crash, and stops', async () => {
    // Nothing running yet: a clear error, not a stack.
    let r = await cliProcess(['fleet', 'status', '--state', stateDir, '--json']);
    expect(r.status).toBe(1);
    // With --json the error is JSON too (code, message, hint).
    expect(JSON.parse(r.err)).toMatchObject({ error: { code: 'FLEET_NOT_RUNNING', hint: expect.stringContaining('bkv fleet up') } });
    r = await cliProcess(['fleet', 'status', '--state', stateDir]);
    expect(r.status).toBe(1);
    expect(r.err).toContain('[FLEET_NOT_RUNNING]');

    up = spawn(process.execPath, [BKV, 'fleet', 'up', '--state', stateDir, '--replicas', String(REPLICAS), '--wan', 'none', '--faults', '--quiet'], { stdio: ['ignore', 'pipe', 'pipe'] });
    const child = up;
    const exit = new Promise<number | null>((res) => child.once('exit', (c) => res(c)));
    const err: string[] = [];
    createInterface({ input: child.stderr! }).on('line', (l) => err.push(l));
    const urls = await new Promise<{ chatd: string; fleet: string }>((resolve, reject) => {
      let chatd = '';
      createInterface({ input: child.stdout! }).on('line', (l) => {
        if (l.startsWith('CHATD_URL=')) chatd = l.slice(10);
        if (l.startsWith('FLEET_URL=')) resolve({ chatd, fleet: l.slice(10) });
      });
      void exit.then((c) => reject(new Error(`bkv fleet up exited (${c}): ${err.slice(-5).join(' | ')}`)));
    });
    expect(urls.chatd).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
    expect(JSON.parse(readFileSync(join(stateDir, 'serve.json'), 'utf8'))).toMatchObject({ mode: 'fleet', chatdUrl: urls.chatd, vaultUrl: urls.fleet, pid: child.pid });

    // Once elected: one leader, every replica healthy, all agreeing on who leads and in which term.
    const s = await until(statusJson, (x) => !!x.leader && x.replicas.every((y) => y.healthy && y.leader === x.leader));
    expect(s.replicas.map((x) => x.name)).toEqual(['us-east', 'us-west', 'eu-west']);
    expect(s.replicas.filter((x) => x.role === 'leader').map((x) => x.name)).toEqual([s.leader]);
    expect(new Set(s.replicas.map((x) => x.term)).size).toBe(1);
    expect(s.replicas[0]!.term).toBeGreaterThan(0);
    expect(s.fleet.url).toBe(urls.fleet);
    expect(s.fleet.pid).not.toBe(child.pid); // the fleet is its own process
    expect(pidAlive(s.fleet.pid)).toBe(true);

    // The unchanged password CLI works against the fleet (ChatD and pinned keys from the state).
    const acct = await cliProcess(['account', 'create', '--phone', '+15553330001', '--state', stateDir]);
    expect(acct.status, acct.err).toBe(0);
    const dev = ['--state', stateDir, '--token-file', writeSecret(dir, 'token', acct.out.trim()), '--ksf', 'identity'];
    r = await cliProcess(['backup', 'enable-password', '--password-file', '-', ...dev], { stdin: 'fleet cli password\n' });
    expect(r.status, r.err).toBe(0);
    const before = (await statusJson()).replicas.find((x) => x.name === s.leader)!.commitIndex;

    // A follower crashes (fault injection: `fleet up --faults` above): status shows it down, the others carry on and commit.
    const follower = s.replicas.find((x) => x.role !== 'leader')!.name;
    r = await cliProcess(['fleet', 'fault', 'crash', follower, '--state', stateDir]);
    expect(r.status, r.err).toBe(0);
    // A backup made now gets K with the password: an attempt and a reset, committed by the two left.
    const chats = join(dir, 'chats');
    makeChats(chats);
    r = await cliProcess(['backup', 'create', '--in', chats, '--password-file', writeSecret(dir, 'pw', 'fleet cli password'), ...dev]);
    expect(r.status, r.err).toBe(0);
    r = await cliProcess(['backup', 'status', ...dev]);
    expect(r.status, r.err).toBe(0);
    expect(r.out).toContain('10 of 10 attempts left');
    const after = await until(statusJson, (x) => x.replicas.find((y) => y.name === follower)!.role === 'down');
    const down = after.replicas.find((x) => x.name === follower)!;
    expect(down).toMatchObject({ role: 'down', healthy: false });
    expect(after.replicas.find((x) => x.name === after.leader)!.commitIndex).toBeGreaterThan(before);
    r = await cliProcess(['fleet', 'fault', 'crash', 'nowhere', '--state', stateDir]);
    expect(r.status).toBe(2);
    expect(r.err).toContain("no replica 'nowhere'");
    // Crashing it again does nothing, and says so rather than claiming a crash.
    r = await cliProcess(['fleet', 'fault', 'crash', follower, '--state', stateDir]);
    expect(r.status, r.err).toBe(0);
    expect(r.out).toContain(`${follower} was already down`);
    expect(r.out).not.toContain(`crashed ${follower}`);
    // The disk copy's path is printed, and it is there.
    r = await cliProcess(['fleet', 'fault', 'snapshot-disk', follower, '--state', stateDir]);
    expect(r.status, r.err).toBe(0);
    const copy = /aside to (\S+?)[;,]/.exec(r.out)?.[1];
    expect(copy, r.out).toBeDefined();
    expect(existsSync(copy!)).toBe(true);
    expect(copy!.startsWith(stateDir)).toBe(true);
    // The fleet's disks (LMDB makes its files 0664), the copy, peers and records: the owner's alone.
    const open: string[] = [];
    const walk = (p: string) => {
      const st = lstatSync(p);
      if (st.mode & 0o077) open.push(`${p} ${(st.mode & 0o777).toString(8)}`);
      if (st.isDirectory()) for (const n of readdirSync(p)) walk(join(p, n));
    };
    walk(stateDir);
    expect(open).toEqual([]);

    r = await cliProcess(['fleet', 'down', '--state', stateDir]);
    expect(r.status, r.err).toBe(0);
    expect(await exit).toBe(0);
    expect(pidAlive(s.fleet.pid)).toBe(false);
    expect(existsSync(join(stateDir, 'serve.json'))).toBe(false);
    r = await cliProcess(['fleet', 'status', '--state', stateDir]);
    expect(r.status).toBe(1);
    expect(r.err).toContain('[FLEET_NOT_RUNNING]');
  }, 120_000);
});
