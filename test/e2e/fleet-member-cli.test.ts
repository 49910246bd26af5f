// `bkv fleet member` as an operator runs it: `bkv provision --spares`, `bkv fleet up`, add a spare
// (--json), remove a founder (progress lines), the refusals (exit codes, JSON errors), status
// showing the configuration and the standby tokens, the backup CLI served throughout, and a
// `fleet down` / `fleet up` on the changed fleet.json, which starts the new members.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { BKV, cliProcess, writeSecret } from './fixture.ts';

let dir: string;
let stateDir: string;
let up: ChildProcess | undefined;
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'bkv-e2e-fleet-member-'));
  stateDir = join(dir, 'state');
});
afterAll(() => {
  if (up && up.exitCode === null) up.kill('SIGKILL');
  rmSync(dir, { recursive: true, force: true });
});

interface StatusJson {
  leader: string | null;
  replicas: { name: string; role: string; healthy: boolean; member?: string; leader: string | null }[];
  members?: { voters: string[]; learners: string[]; committed: boolean } | null;
  change?: unknown;
  standby?: { name: string; standby: string }[];
}

async function statusJson(): Promise<StatusJson> {
  const r = await cliProcess(['fleet', 'status', '--state', stateDir, '--json']);
  expect(r.status, r.err).toBe(0);
  return JSON.parse(r.out) as StatusJson;
}

async function until<T>(f: () => Promise<T>, ok: (v: T) => boolean, ms = 30_000): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = await f();
    if (ok(v) || Date.now() > end) return v;
    await new Promise((r) => setTimeout(r, 200));
  }
}

async function fleetUp(): Promise<{ exit: Promise<number | null> }> {
  up = spawn(process.execPath, [BKV, 'fleet', 'up', '--state', stateDir, '--wan', 'none', '--quiet'], { stdio: ['ignore', 'pipe', 'pipe'] });
  const child = up;
  const exit = new Promise<number | null>((res) => child.once('exit', (c) => res(c)));
  const err: string[] = [];
  createInterface({ input: child.stderr! }).on('line', (l) => err.push(l));
  await new Promise<void>((resolve, reject) => {
    createInterface({ input: child.stdout! }).on('line', (l) => { if (l.startsWith('FLEET_URL=')) resolve(); });
    void exit.then((c) => reject(new Error(`bkv fleet up exited (${c}): ${err.slice(-5).join(' | ')}`)));
  });
  return { exit };
}

const serving = (s: StatusJson) => !!s.leader && s.replicas.every((y) => y.healthy && y.leader === s.leader);

describe('bkv fleet member', () => {
  it('adds a spare, removes a founder, refuses what it must, and the changed fleet starts again', async () => {
    let r = await cliProcess(['provision', '--state', stateDir, '--replicas', '3', '--spares', '1', '--json']);
    expect(r.status, r.err).toBe(0);
    expect(JSON.parse(r.out)).toMatchObject({ replicas: [{ name: 'us-east' }, { name: 'us-west' }, { name: 'eu-west' }], standby: [{ name: 'ap-southeast', standby: 'spare' }] });
    const manifest = () => JSON.parse(readFileSync(join(stateDir, 'fleet.json'), 'utf8')) as { replicas: { name: string }[]; standby?: { name: string; standby: string }[]; founders?: string[] };
    expect(manifest().standby).toEqual([expect.objectContaining({ name: 'ap-southeast', standby: 'spare' })]);
    r = await cliProcess(['provision', '--state', stateDir, '--spares', '2']);
    expect(r.status).toBe(1);
    expect(r.err).toContain('FLEET_MISMATCH');

    r = await cliProcess(['fleet', 'member', '--help']);
    expect(r.status).toBe(0);
    expect(r.out).toContain('usage: bkv fleet member add NAME | remove NAME | replace OLD NEW');
    r = await cliProcess(['fleet', 'member', 'add', 'ap-southeast', '--state', stateDir, '--json']);
    expect(r.status).toBe(1);
    expect(JSON.parse(r.err)).toMatchObject({ error: { code: 'FLEET_NOT_RUNNING' } });

    let { exit } = await fleetUp();
    let s = await until(statusJson, serving);
    expect(s.replicas.map((x) => x.name)).toEqual(['us-east', 'us-west', 'eu-west']);
    expect(s.standby).toEqual([{ name: 'ap-southeast', standby: 'spare' }]);

    // The backup CLI, before and after: pinned keys stay valid.
    const acct = await cliProcess(['account', 'create', '--phone', '+15553330002', '--state', stateDir]);
    expect(acct.status, acct.err).toBe(0);
    const dev = ['--state', stateDir, '--token-file', writeSecret(dir, 'token', acct.out.trim()), '--ksf', 'identity'];
    r = await cliProcess(['backup', 'enable-password', '--password-file', '-', ...dev], { stdin: 'member cli password\n' });
    expect(r.status, r.err).toBe(0);

    r = await cliProcess(['fleet', 'member', 'add', 'ap-southeast', '--state', stateDir, '--json']);
    expect(r.status, r.err).toBe(0);
    const doc = JSON.parse(r.out) as { ok: boolean; op: string; voters: string[]; steps: string[] };
    expect(doc).toMatchObject({ ok: true, op: 'add' });
    expect([...doc.voters].sort()).toEqual(['ap-southeast', 'eu-west', 'us-east', 'us-west']);
    expect(doc.steps.length).toBeGreaterThanOrEqual(4);
    expect(r.out.trim().split('\n')).toHaveLength(1);
    expect(manifest().replicas.map((x) => x.name)).toEqual(['us-east', 'us-west', 'eu-west', 'ap-southeast']);
    expect(manifest().founders).toEqual(['us-east', 'us-west', 'eu-west']);

    // Refusals: typed, exit 1, nothing changed; usage errors exit 2.
    const before = readFileSync(join(stateDir, 'fleet.json'), 'utf8');
    r = await cliProcess(['fleet', 'member', 'add', 'eu-central', '--state', stateDir, '--json']);
    expect(r.status).toBe(1);
    expect(JSON.parse(r.err)).toMatchObject({ error: { code: 'NO_SPARE_TOKEN' } });
    r = await cliProcess(['fleet', 'member', 'remove', 'nowhere', '--state', stateDir]);
    expect(r.status).toBe(1);
    expect(r.err).toContain('[NOT_MEMBER]');
    r = await cliProcess(['fleet', 'member', 'replace', 'us-east', '--state', stateDir]);
    expect(r.status).toBe(2);
    r = await cliProcess(['fleet', 'member', 'move', 'us-east', '--state', stateDir]);
    expect(r.status).toBe(2);
    expect(readFileSync(join(stateDir, 'fleet.json'), 'utf8')).toBe(before);

    s = await until(statusJson, serving);
    const founder = s.replicas.find((x) => x.name !== s.leader && x.name !== 'ap-southeast')!.name;
    r = await cliProcess(['fleet', 'member', 'remove', founder, '--state', stateDir]);
    expect(r.status, r.err).toBe(0);
    expect(r.out).toContain(`bkv fleet member: removing ${founder}: proposed by the leader`);
    expect(r.out).toMatch(/bkv fleet member: done in [\d.]+ s; voters /);
    s = await until(statusJson, serving);
    expect(s.replicas.map((x) => x.name)).not.toContain(founder);
    expect(s.replicas.every((x) => x.member === 'voter')).toBe(true);
    expect(s.members).toMatchObject({ learners: [], committed: true });
    expect(s.standby).toEqual([{ name: founder, standby: 'removed' }]);
    r = await cliProcess(['fleet', 'status', '--state', stateDir]);
    expect(r.out).toContain('configuration: voters ');
    expect(r.out).toContain(`standby tokens: ${founder} (removed)`);
    const audit = readFileSync(join(stateDir, 'fleet-audit.jsonl'), 'utf8');
    expect(audit).toContain('"event":"member"');
    expect(audit).not.toMatch(/"pin"|password/i);
    r = await cliProcess(['backup', 'status', ...dev]);
    expect(r.status, r.err).toBe(0);
    expect(r.out).toContain('10 of 10 attempts left');

    // Down and up again: fleet.json's members start, the removed one does not.
    r = await cliProcess(['fleet', 'down', '--state', stateDir]);
    expect(r.status, r.err).toBe(0);
    expect(await exit).toBe(0);
    ({ exit } = await fleetUp());
    s = await until(statusJson, serving);
    expect(serving(s)).toBe(true);
    expect([...s.replicas.map((x) => x.name)].sort()).toEqual(['ap-southeast', 'eu-west', 'us-east', 'us-west'].filter((n) => n !== founder).sort());
    r = await cliProcess(['backup', 'status', ...dev]);
    expect(r.status, r.err).toBe(0);
    expect(r.out).toContain('10 of 10 attempts left');
    r = await cliProcess(['fleet', 'down', '--state', stateDir]);
    expect(r.status, r.err).toBe(0);
    expect(await exit).toBe(0);
  }, 240_000);
});
