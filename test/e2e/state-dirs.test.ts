// A state directory the fleet used, served by the single vault: refused at once with the reason and
// what to run, instead of a vault that starts and calls its own disk TAMPERED.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { BKV, cliProcess, startRig } from './fixture.ts';

let dir: string;
beforeAll(() => { dir = mkdtempSync(join(tmpdir(), 'bkv-e2e-state-dirs-')); });
afterAll(() => { rmSync(dir, { recursive: true, force: true }); });

describe('state directories', () => {
  it('bkv serve on a directory the fleet used refuses, naming the reason and `bkv fleet up`', async () => {
    const state = join(dir, 'fleet-used');
    const up = spawn(process.execPath, [BKV, 'fleet', 'up', '--state', state, '--replicas', '3', '--wan', 'none', '--json', '--quiet'], { stdio: ['ignore', 'pipe', 'pipe'] });
    const exit = new Promise<number | null>((r) => up.once('exit', (c) => r(c)));
    await new Promise<void>((resolve, reject) => {
      createInterface({ input: up.stdout! }).on('line', (l) => { if (l.includes('"event":"ready"')) resolve(); });
      void exit.then((c) => reject(new Error(`fleet up exited ${c}`)));
    });
    const down = await cliProcess(['fleet', 'down', '--state', state]);
    expect(down.status, down.err).toBe(0);
    expect(await exit).toBe(0);

    // bkv doctor reads the disks too: green, each the fleet's Raft log with the anchor on its chain.
    const d = await cliProcess(['doctor', '--state', state, '--json']);
    expect(d.status, d.out).toBe(0);
    const disks = (JSON.parse(d.out) as { disks: { replica: string; status: string; log: string; detail: string }[] }).disks;
    expect(disks.map((x) => [x.replica, x.status, x.log])).toEqual([['us-east', 'pass', 'fleet'], ['us-west', 'pass', 'fleet'], ['eu-west', 'pass', 'fleet']]);
    expect(disks[0]!.detail).toMatch(/sealed entries chained to index \d+; the token's anchor at \d+ is on that chain/);

    const r = await cliProcess(['serve', '--state', state, '--quiet']);
    expect(r.status).toBe(1);
    expect(r.err).toContain('FLEET_STATE');
    expect(r.err).toContain(`belongs to a fleet: replica us-east's token holds the Raft fleet's log anchor`);
    expect(r.err).toContain(`bkv fleet up --state ${state}`);
    expect(r.err).not.toContain('TAMPERED:');
    expect(r.out).not.toContain('CHATD_URL=');

    // One byte of one sealed entry altered on the host's disk: red, as an integrity failure.
    const { open } = await import('lmdb');
    const db = open({ path: join(state, 'replicas', 'us-west', 'db'), maxDbs: 4 });
    const log = db.openDB<Uint8Array, number>({ name: 'log' });
    const first = [...log.getKeys({})][0]!;
    const v = new Uint8Array(log.get(first)!);
    v[v.length - 5] ^= 0x40;
    await log.put(first, v);
    await db.close();
    const bad = await cliProcess(['doctor', '--state', state]);
    expect(bad.status).toBe(1);
    expect(bad.out).toMatch(/fail\s+us-west: TAMPERED: /);
    expect(bad.out).toContain("replica us-west's disk failed its integrity check (TAMPERED");
    expect(bad.out).toContain('This is not transient');
    expect(bad.out).toMatch(/pass\s+us-east: the fleet's Raft log/);
  }, 90_000);

  it('a vault that refuses its own disk is an integrity failure for the device, not "try again later"; doctor names the replica', async () => {
    const rig = await startRig();
    try {
      const a = await rig.account('+15556660001');
      const owner = rig.device(a);
      await owner.enable('an integrity test password', 5);
      await rig.stopVault('SIGTERM');
      const { open } = await import('lmdb');
      const db = open({ path: join(rig.stateDir, 'replicas', 'us-east', 'db'), maxDbs: 4 });
      const log = db.openDB<Uint8Array, number>({ name: 'log' });
      const first = [...log.getKeys({})][0]!;
      const v = new Uint8Array(log.get(first)!);
      v[v.length - 3] ^= 0x01;
      await log.put(first, v);
      await db.close();
      await rig.startVaultAgain();
      const e = await owner.status().then(() => undefined, (x: unknown) => x as { code?: string; message?: string });
      expect(e?.code).toBe('VAULT_INTEGRITY');
      expect(e?.message).toContain('(TAMPERED)');
      expect(e?.message).toContain('bkv doctor --state DIR');
      expect(e?.message).not.toMatch(/try again/);
      owner.close();
      await rig.stopVault('SIGTERM');
      const d = await cliProcess(['doctor', '--state', rig.stateDir]);
      expect(d.status).toBe(1);
      expect(d.out).toMatch(/fail\s+us-east: TAMPERED: /);
      expect(d.out).toContain("replica us-east's disk failed its integrity check");
    } finally {
      await rig.cleanup();
    }
  }, 90_000);
});
