// A state directory the fleet used, served by the single vault: refused at once with the reason and
// what to run, instead of a vault that starts and calls its own disk TAMPERED.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { BKV, cliProcess } from './fixture.ts';

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

    const r = await cliProcess(['serve', '--state', state, '--quiet']);
    expect(r.status).toBe(1);
    expect(r.err).toContain('FLEET_STATE');
    expect(r.err).toContain(`belongs to a fleet: replica us-east's token holds the Raft fleet's log anchor`);
    expect(r.err).toContain(`bkv fleet up --state ${state}`);
    expect(r.err).not.toContain('TAMPERED:');
    expect(r.out).not.toContain('CHATD_URL=');
  }, 90_000);
});
