// The closing line of a run ("tests: N passed, N failed, N skipped") counts a file that failed in
// beforeAll as a failure, not as skipped tests and "0 failed" (issue 14).
import { expect, it } from 'vitest';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = fileURLToPath(new URL('../', import.meta.url));

function runFixtures(files: string[]): { status: number | null; line: string } {
  const dir = mkdtempSync(join(tmpdir(), 'bkv-reporter-'));
  try {
    const config = join(dir, 'vitest.config.mjs');
    // No import of vitest/config: the file lives outside the repository's node_modules.
    writeFileSync(config, `export default { test: { include: ${JSON.stringify(files.map((f) => join(ROOT, 'test/fixtures/reporter', f)))}, reporters: [${JSON.stringify(join(ROOT, 'test/helpers/summary-reporter.ts'))}] } };\n`);
    const r = spawnSync(process.execPath, [join(ROOT, 'node_modules/vitest/vitest.mjs'), 'run', '--root', ROOT, '--config', config], { encoding: 'utf8', timeout: 120_000 });
    const line = /tests: \d+ passed, \d+ failed, \d+ skipped/.exec(r.stdout)?.[0] ?? `(no summary line) ${r.stdout}${r.stderr}`;
    return { status: r.status, line };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

it('a file whose beforeAll throws counts as failed, next to the other file\'s results', () => {
  const r = runFixtures(['hook-fails.fixture.ts', 'passes.fixture.ts']);
  expect(r.status).not.toBe(0);
  // Its two tests never ran (skipped); the file itself is the failure.
  expect(r.line).toBe('tests: 1 passed, 1 failed, 3 skipped');
});

it('a clean run says 0 failed', () => {
  const r = runFixtures(['passes.fixture.ts']);
  expect(r.status).toBe(0);
  expect(r.line).toBe('tests: 1 passed, 0 failed, 1 skipped');
});
