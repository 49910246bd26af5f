import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Worker } from 'node:worker_threads';
import { provisionTestFleet, type TestFleet } from '../helpers/fleet.ts';
import { KeyLabels } from '../../hsm-adapter/token.ts';

let fleet: TestFleet;
beforeAll(async () => {
  fleet = await provisionTestFleet({ replicas: 5 });
});
afterAll(async () => {
  await fleet?.cleanup();
});

function runWorker(tokenLabel: string, rounds: number): Promise<{ ok: number; sealed: string; sigValid: boolean; kcv: string; error?: string }> {
  return new Promise((resolve, reject) => {
    const w = new Worker(new URL('../../bin/ts-worker.js', import.meta.url), {
      workerData: {
        __entry: new URL('./token-worker.ts', import.meta.url).href,
        modulePath: fleet.state.modulePath,
        tokenLabel,
        pin: fleet.state.pinFor(tokenLabel),
        rounds,
      },
    });
    let result: unknown;
    w.on('message', (m) => (result = m));
    w.on('error', reject);
    w.on('exit', (code) => (code === 0 && result ? resolve(result as never) : reject(new Error(`worker exited ${code}`))));
  });
}

describe('tokens from many threads', () => {
  it('five worker threads use five tokens at once', async () => {
    const rounds = 300;
    // The main thread holds sessions too, so the module is shared while the workers run.
    const main = fleet.replicas.map((r) => fleet.openToken(r.tokenLabel));
    const results = await Promise.all(fleet.replicas.map((r) => runWorker(r.tokenLabel, rounds)));
    for (const [i, r] of results.entries()) {
      expect(r.error).toBeUndefined();
      expect(r.ok).toBe(rounds);
      expect(r.sigValid).toBe(true);
      // What a worker sealed opens in the main thread on the same token, and nowhere else.
      const label = fleet.replicas[i].tokenLabel;
      const aad = Buffer.from(`aad ${label}`);
      expect(Buffer.from(main[i].open(KeyLabels.recordKey, Buffer.from(r.sealed, 'hex'), aad)).toString()).toBe(`${label} message ${rounds - 1}`);
      expect(() => main[(i + 1) % main.length].open(KeyLabels.recordKey, Buffer.from(r.sealed, 'hex'), aad)).toThrow(/cannot open/);
    }
    expect(new Set(results.map((r) => r.kcv)).size).toBe(1);
  });
});
