// The thread fleet's crash fault kills a replica's worker while it writes its token (the anchor and
// the vote are rewritten on every commit). A bare worker.terminate() there segfaults the whole
// process: pkcs11js 2.1.7 returns an unchecked napi_value when the thread is stopped inside
// C_CreateObject, so one crashed replica took the other four with it (found by `bkv chaos live`).
// crashWorker (vault/fleet/fleet.ts) lets the worker exit between tasks instead.
import { describe, expect, it } from 'vitest';
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';

const RUN = fileURLToPath(new URL('../../bin/run.js', import.meta.url));
const MAIN = fileURLToPath(new URL('./worker-crash-main.ts', import.meta.url));

describe('killing a replica worker in the middle of token writes', () => {
  it('crashWorker: forty kills at random moments, the process lives', () => {
    const r = spawnSync(process.execPath, [RUN, MAIN, 'crash', '40'], { encoding: 'utf8', timeout: 120_000 });
    expect(r.signal, r.stderr).toBeNull();
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout).toContain('survived 40 kills');
  }, 150_000);

  it('(the hazard it avoids) a bare worker.terminate() mid-write, observed and reported', () => {
    // Not asserted: whether it crashes depends on the binding's version and on timing. What it did is logged.
    const r = spawnSync(process.execPath, [RUN, MAIN, 'terminate', '10'], { encoding: 'utf8', timeout: 120_000 });
    console.log(`worker.terminate() mid-write: ${r.signal ? `process died (${r.signal})` : `exit ${r.status}, ${r.stdout.trim()}`}`);
    expect(r.error).toBeUndefined();
  }, 150_000);
});
