// chatd/main.ts as a separate process, the way `bkv serve` will run it.
import { describe, expect, it } from 'vitest';
import { spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { AccountStore } from '../../chatd/accounts.ts';
import { ChatdClient, ChatdUnreachableError } from '../../client/transport.ts';
import { randomBody, startStandInVault, tempState, transform } from './fixtures.ts';

const runJs = fileURLToPath(new URL('../../bin/run.js', import.meta.url));
const mainTs = fileURLToPath(new URL('../../chatd/main.ts', import.meta.url));

describe('chatd/main.ts', () => {
  it('prints its URL, relays, logs JSON lines on stderr and exits 0 on SIGTERM', async () => {
    const state = tempState();
    const vault = await startStandInVault();
    try {
      const { token } = await new AccountStore(state.dir).create('+15551234567');
      const child = spawn(process.execPath, [runJs, mainTs, '--vault-url', vault.url, '--state', state.dir, '--account-burst', '5'], {
        stdio: ['ignore', 'pipe', 'pipe'],
      });
      let stderr = '';
      child.stderr.on('data', (d) => (stderr += d));
      const exited = new Promise<number | null>((r) => child.on('exit', (code) => r(code)));
      const url = await new Promise<string>((resolve, reject) => {
        createInterface({ input: child.stdout }).once('line', resolve);
        child.once('exit', () => reject(new Error(`chatd exited early: ${stderr}`)));
      });
      expect(url).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
      const c = new ChatdClient({ url, token });
      const body = randomBody(512);
      expect(await c.request(body)).toEqual(transform(body));
      const s = await c.openSession();
      expect(await s.request(body)).toEqual(transform(body));
      c.close();
      child.kill('SIGTERM');
      expect(await exited).toBe(0);
      await expect(new ChatdClient({ url, token }).request(body)).rejects.toBeInstanceOf(ChatdUnreachableError);
      const lines = stderr.trim().split('\n').map((l) => JSON.parse(l) as { event: string; status?: number });
      expect(lines.filter((l) => l.event === 'request').map((l) => l.status)).toEqual([200, 200]);
      expect(lines.at(-1)!.event).toBe('closed');
      expect(stderr).not.toContain(token.slice(5));
    } finally {
      await vault.close();
      state.cleanup();
    }
  });

  it('refuses bad configuration with exit 2 and a clear message', async () => {
    const run = (args: string[], env: NodeJS.ProcessEnv = process.env) =>
      new Promise<{ status: number | null; stderr: string }>((resolve) => {
        const p = spawn(process.execPath, [runJs, mainTs, ...args], { env, stdio: ['ignore', 'ignore', 'pipe'] });
        let stderr = '';
        p.stderr.on('data', (d) => (stderr += d));
        p.on('close', (status) => resolve({ status, stderr }));
      });
    const [noVault, badUrl, badPort, badFlag] = await Promise.all([
      run([], { ...process.env, BKV_VAULT_URL: '' }),
      run(['--vault-url', 'ftp://x']),
      run(['--vault-url', 'http://127.0.0.1:1', '--port', 'x']),
      run(['--nope']),
    ]);
    expect(noVault.status).toBe(2);
    expect(noVault.stderr).toContain('--vault-url');
    expect(badUrl.status).toBe(2);
    expect(badUrl.stderr).toContain('[BAD_CHATD_CONFIG]');
    expect(badPort.status).toBe(2);
    expect(badPort.stderr).toContain('--port');
    expect(badFlag.status).toBe(2);
  });
});
