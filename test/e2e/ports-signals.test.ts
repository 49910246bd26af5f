// Busy ports and Ctrl-C, as a user meets them: `bkv serve` and `bkv fleet up` with a port that is
// taken stop at once with EADDRINUSE 127.0.0.1:P (exit 1, nothing provisioned, no stack); ChatD and
// the fleet process, started on a taken port themselves, say the same; a SIGTERM while the fleet
// starts stops everything at once and leaves no process behind.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { createServer, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { BKV, cliProcess } from './fixture.ts';

const RUN = fileURLToPath(new URL('../../bin/run.js', import.meta.url));
let dir: string;
let busy: Server;
let port: number;
beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'bkv-e2e-ports-'));
  busy = createServer();
  await new Promise<void>((r) => busy.listen(0, '127.0.0.1', r));
  port = (busy.address() as { port: number }).port;
});
afterAll(async () => {
  await new Promise<void>((r) => busy.close(() => r()));
  rmSync(dir, { recursive: true, force: true });
});

/** Processes whose command line names `needle` (what a stopped supervisor must not leave behind). */
function processesNaming(needle: string): number[] {
  const out: number[] = [];
  for (const p of readdirSync('/proc')) {
    if (!/^\d+$/.test(p)) continue;
    try {
      if (readFileSync(`/proc/${p}/cmdline`, 'utf8').includes(needle)) out.push(Number(p));
    } catch { /* gone */ }
  }
  return out;
}

describe('busy ports', () => {
  for (const [cmd, flag] of [['serve', '--port'], ['serve', '--vault-port'], ['fleet up', '--port'], ['fleet up', '--fleet-port']] as const) {
    it(`bkv ${cmd} ${flag} on a taken port: EADDRINUSE at once, exit 1, nothing provisioned`, async () => {
      const state = join(dir, `${cmd.replace(' ', '-')}${flag}`);
      const t0 = performance.now();
      const r = await cliProcess([...cmd.split(' '), '--state', state, flag, String(port), '--quiet']);
      expect(r.status, r.err).toBe(1);
      expect(performance.now() - t0).toBeLessThan(5_000);
      expect(r.err).toContain(`EADDRINUSE 127.0.0.1:${port}: ${flag} ${port} is in use`);
      expect(r.err).not.toMatch(/\n\s+at /);
      expect(existsSync(join(state, 'fleet.json'))).toBe(false);
    }, 20_000);
  }

  it('with --json the failure is one JSON object on stderr: code, message, hint', async () => {
    const r = await cliProcess(['serve', '--state', join(dir, 'json'), '--port', String(port), '--json']);
    expect(r.status, r.err).toBe(1);
    expect(r.out).toBe('');
    expect(JSON.parse(r.err)).toEqual({ error: { code: 'EADDRINUSE', message: expect.stringContaining(`EADDRINUSE 127.0.0.1:${port}`), hint: 'choose another port, or 0 for any free one' } });
  });

  it('the same two ports for ChatD and the fleet are refused before anything starts', async () => {
    const r = await cliProcess(['fleet', 'up', '--state', join(dir, 'twice'), '--port', '47999', '--fleet-port', '47999']);
    expect(r.status, r.err).toBe(1);
    expect(r.err).toContain('--port and --fleet-port are both 47999');
  });

  it('ChatD on a taken port says EADDRINUSE 127.0.0.1:P and exits 1, without a stack', async () => {
    const r = await new Promise<{ code: number | null; err: string }>((resolve) => {
      const c = spawn(process.execPath, [RUN, fileURLToPath(new URL('../../chatd/main.ts', import.meta.url)), '--vault-url', 'http://127.0.0.1:1', '--state', join(dir, 'chatd'), '--port', String(port)], { stdio: ['ignore', 'pipe', 'pipe'] });
      let err = '';
      c.stderr.on('data', (d) => (err += d));
      c.once('exit', (code) => resolve({ code, err }));
    });
    expect(r.code, r.err).toBe(1);
    expect(r.err).toContain(`chatd: EADDRINUSE 127.0.0.1:${port}: the port is in use`);
    expect(r.err).not.toMatch(/\n\s+at /);
  });
});

describe('bkv serve --json', () => {
  it('prints one JSON ready line, and a SIGTERM then stops both (exit 0)', async () => {
    const state = join(dir, 'serve-json');
    const s = spawn(process.execPath, [BKV, 'serve', '--state', state, '--json'], { stdio: ['ignore', 'pipe', 'pipe'] });
    let err = '';
    s.stderr.on('data', (d) => (err += d));
    const exit = new Promise<number | null>((r) => s.once('exit', (c) => r(c)));
    const line = await new Promise<string>((resolve, reject) => {
      let out = '';
      s.stdout.on('data', (d) => { out += d; if (out.includes('\n')) resolve(out); });
      void exit.then((c) => reject(new Error(`serve exited ${c}: ${err}`)));
    });
    expect(line.trim().split('\n')).toHaveLength(1);
    const ready = JSON.parse(line) as Record<string, unknown>;
    expect(ready).toMatchObject({ event: 'ready', mode: 'vault', pid: s.pid, serveRecord: join(state, 'serve.json') });
    expect(JSON.parse(readFileSync(join(state, 'serve.json'), 'utf8'))).toMatchObject({ chatdUrl: ready.chatdUrl, vaultUrl: ready.vaultUrl });
    s.kill('SIGTERM');
    const code = await exit;
    expect(code, err).toBe(0);
  }, 60_000);
});

describe('Ctrl-C while starting', () => {
  it('a SIGTERM while the fleet starts stops it at once, exit 0, nothing left running', async () => {
    const state = join(dir, 'sigterm');
    // Provision first, so the signal lands while the fleet process starts its replicas.
    const p = await cliProcess(['provision', '--state', state, '--replicas', '3']);
    expect(p.status, p.err).toBe(0);
    const up = spawn(process.execPath, [BKV, 'fleet', 'up', '--state', state, '--replicas', '3', '--wan', 'none'], { stdio: ['ignore', 'pipe', 'pipe'] });
    let err = '';
    const exit = new Promise<number | null>((r) => up.once('exit', (c) => r(c)));
    // The fleet process logs its replicas starting: the start is under way, not done (no FLEET_URL yet).
    await new Promise<void>((resolve) => up.stderr.on('data', (d) => { err += d; if (/replica \S+ started|fleet \|/.test(err)) resolve(); }));
    let out = '';
    up.stdout.on('data', (d) => (out += d));
    const t0 = performance.now();
    up.kill('SIGTERM');
    expect(await exit).toBe(0);
    expect(performance.now() - t0).toBeLessThan(8_000);
    expect(out).not.toContain('CHATD_URL=');
    expect(err).toMatch(/SIGTERM: stopped (while starting|before starting anything)/);
    await new Promise((r) => setTimeout(r, 300));
    expect(processesNaming(state)).toEqual([]);
    expect(existsSync(join(state, 'serve.json'))).toBe(false);
  }, 60_000);
});
