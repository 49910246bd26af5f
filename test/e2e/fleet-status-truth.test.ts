// `bkv fleet status` under partitions, as a user runs it against a real fleet (`bkv fleet up`: replica
// threads on SoftHSM2 tokens and LMDB, ChatD): a cut-off replica is healthy but does not serve and says
// why; with no majority anywhere nothing serves and the summary says so, not "3 of 3 healthy"; the
// faults in force are listed with who asked; every fault request and role change is an audit line
// (stderr and <state>/fleet-audit.jsonl) that carries no secret.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { BKV, cliProcess } from './fixture.ts';

let dir: string;
let stateDir: string;
let up: ChildProcess | undefined;
const upErr: string[] = [];
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'bkv-e2e-fleet-truth-'));
  stateDir = join(dir, 'state');
});
afterAll(() => {
  if (up && up.exitCode === null) up.kill('SIGKILL');
  rmSync(dir, { recursive: true, force: true });
});

interface Rep { name: string; role: string; healthy: boolean; serves: boolean; servesNot: string; reachesLeader: boolean | null; reachable: number | null }
interface StatusJson { leader: string | null; replicas: Rep[]; faults: { op: string; what: string; since: string; by: string; replicas: string[] }[] }

async function statusJson(): Promise<StatusJson> {
  const r = await cliProcess(['fleet', 'status', '--state', stateDir, '--json']);
  expect(r.status, r.err).toBe(0);
  return JSON.parse(r.out) as StatusJson;
}

async function until(ok: (v: StatusJson) => boolean, ms = 20_000): Promise<StatusJson> {
  const end = Date.now() + ms;
  for (;;) {
    const v = await statusJson();
    if (ok(v)) return v;
    if (Date.now() > end) throw new Error(`status never got there: ${JSON.stringify(v)}`);
    await new Promise((r) => setTimeout(r, 250));
  }
}

/** Every string value in a JSON value (the PINs in pins.json). */
const strings = (v: unknown): string[] => (typeof v === 'string' ? [v] : typeof v === 'object' && v !== null ? Object.values(v).flatMap(strings) : []);

async function fault(...args: string[]): Promise<string> {
  const r = await cliProcess(['fleet', 'fault', ...args, '--state', stateDir]);
  expect(r.status, r.err).toBe(0);
  return r.out;
}

describe('bkv fleet status under partitions', () => {
  it('says which replicas serve and why the others do not, lists the faults, and logs who did what', async () => {
    up = spawn(process.execPath, [BKV, 'fleet', 'up', '--state', stateDir, '--replicas', '3', '--wan', 'none', '--faults', '--quiet', '--json'], { stdio: ['ignore', 'pipe', 'pipe'] });
    const child = up;
    createInterface({ input: child.stderr! }).on('line', (l) => upErr.push(l));
    // --json: the ready line is the only line on stdout, JSON.
    const ready = await new Promise<Record<string, unknown>>((resolve, reject) => {
      createInterface({ input: child.stdout! }).on('line', (l) => resolve(JSON.parse(l) as Record<string, unknown>));
      child.once('exit', (c) => reject(new Error(`bkv fleet up exited (${c}): ${upErr.slice(-5).join(' | ')}`)));
    });
    expect(ready).toMatchObject({ event: 'ready', mode: 'fleet', replicas: ['us-east', 'us-west', 'eu-west'], pid: child.pid, transport: 'ports', wan: 'none' });
    expect(JSON.parse(readFileSync(join(stateDir, 'serve.json'), 'utf8'))).toMatchObject({ chatdUrl: ready.chatdUrl, vaultUrl: ready.fleetUrl, operatorUrl: ready.operatorUrl });

    const s0 = await until((x) => !!x.leader && x.replicas.every((r) => r.serves));
    expect(s0.faults).toEqual([]);
    for (const r of s0.replicas) expect(r).toMatchObject({ serves: true, servesNot: '', reachesLeader: true, reachable: 3 });
    const leader = s0.leader!;
    const follower = s0.replicas.find((r) => r.name !== leader)!.name;

    // One follower's data center goes dark: it stays healthy (its disk and token are fine) but serves nothing.
    await fault('isolate', follower);
    const s1 = await until((x) => x.replicas.find((r) => r.name === follower)!.serves === false);
    const cut = s1.replicas.find((r) => r.name === follower)!;
    expect(cut).toMatchObject({ healthy: true, reachesLeader: false, reachable: 1 });
    expect(cut.servesNot).toMatch(/^(CANNOT_REACH_LEADER|NO_QUORUM|NO_LEADER): .*(cut|minority|reaches 1 of 3)/);
    expect(s1.leader).toBe(leader);
    expect(s1.replicas.filter((r) => r.serves).map((r) => r.name).sort()).toEqual(s0.replicas.map((r) => r.name).filter((n) => n !== follower).sort());
    expect(s1.faults).toHaveLength(1);
    expect(s1.faults[0]).toMatchObject({ op: 'isolate', replicas: [follower] });
    expect(s1.faults[0]!.by).toMatch(/^operator key \(.+ pid \d+ \(bkv fleet fault isolate\)\)$/);

    // A refused request is logged too (who, what, the code), and changes no fault in force.
    const refused = await cliProcess(['fleet', 'fault', 'restart', leader, '--state', stateDir]);
    expect(refused.status).toBe(1);
    expect(refused.err).toContain('[REPLICA_RUNNING]');
    expect((await statusJson()).faults).toHaveLength(1);

    // No majority anywhere: three healthy replicas, none serves, and the table and summary say so.
    const names = s0.replicas.map((r) => r.name);
    await fault('partition', ...names);
    const s2 = await until((x) => x.leader === null && x.replicas.every((r) => !r.serves && r.role !== 'leader'), 30_000);
    for (const r of s2.replicas) {
      expect(r.healthy, r.name).toBe(true);
      expect(r.servesNot, r.name).toMatch(/^NO_QUORUM: reaches 1 of 3 replicas, a quorum is 2/);
    }
    const text = await cliProcess(['fleet', 'status', '--state', stateDir]);
    expect(text.status, text.err).toBe(0);
    expect(text.out).toContain('leader: none; 0 of 3 replicas serve, quorum 2: the fleet serves nothing');
    expect(text.out).not.toMatch(/3 of 3/);
    expect(text.out).toContain('not serving:');
    expect(text.out).toContain('faults in force:');
    expect(text.out).toMatch(/partition\s+\{us-east\} \| \{us-west\} \| \{eu-west\}/);
    expect(text.out).toMatch(new RegExp(`isolate\\s+${follower} cut off from every replica`));

    // Healed: the list is empty and every replica serves again.
    await fault('heal');
    const s3 = await until((x) => !!x.leader && x.replicas.every((r) => r.serves), 30_000);
    expect(s3.faults).toEqual([]);

    const r = await cliProcess(['fleet', 'down', '--state', stateDir]);
    expect(r.status, r.err).toBe(0);

    // The audit trail: each fault request with who asked, each role change; the operator's own file; no secret.
    const file = join(stateDir, 'fleet-audit.jsonl');
    expect(statSync(file).mode & 0o777).toBe(0o600);
    const audit = readFileSync(file, 'utf8').trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
    const faults = audit.filter((a) => a.event === 'fault');
    expect(faults.map((a) => a.op)).toEqual(['isolate', 'restart', 'partition', 'heal']);
    expect(faults[1]).toMatchObject({ op: 'restart', ok: false, code: 'REPLICA_RUNNING', fault: { op: 'restart', replica: leader } });
    for (const a of faults) {
      expect(a.ok).toBe(a.op !== 'restart');
      expect(typeof a.at === 'string' && !Number.isNaN(Date.parse(a.at))).toBe(true);
      expect(a.by).toMatch(/pid \d+ \(bkv fleet fault/);
    }
    const roles = audit.filter((a) => a.event === 'role');
    expect(roles.some((a) => a.role === 'leader' && a.replica === leader)).toBe(true);
    expect(roles.some((a) => a.role !== 'leader' && a.replica === leader)).toBe(true); // it lost its quorum and stepped down
    for (const a of roles) expect(a.by).toBe('raft');
    // The same lines reached `fleet up`'s stderr, although it ran with --quiet.
    expect(upErr.filter((l) => l.includes('"event":"fault"'))).toHaveLength(4);
    const secrets = [readFileSync(join(stateDir, 'operator.key'), 'utf8').trim(), readFileSync(join(stateDir, 'relay.key'), 'utf8').trim(),
      ...strings(JSON.parse(readFileSync(join(stateDir, 'pins.json'), 'utf8')))].filter((x) => x.length >= 4);
    expect(secrets.length).toBeGreaterThan(2);
    const all = readFileSync(file, 'utf8') + upErr.join('\n');
    for (const secret of secrets) expect(all.includes(secret)).toBe(false);
  }, 150_000);
});
