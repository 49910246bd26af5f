// `npm run test:token -- ...` refuses flags that do not fit together before it runs anything.
import { expect, it } from 'vitest';
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));

it('needs --token and --pin-file with --module, and --module with them', () => {
  for (const [args, msg] of [
    [['--module', '/m.so'], /--module needs --token and --pin-file/],
    [['--token', 't', '--pin-file', 'p'], /go with --module/],
    [['--modul', 'x'], /Unknown option/],
  ] as const) {
    const r = spawnSync(process.execPath, ['bin/run.js', 'scripts/test-token.ts', ...args], { cwd: ROOT, encoding: 'utf8' });
    expect(r.status, r.stderr).toBe(2);
    expect(r.stderr).toMatch(msg);
    expect(r.stderr).toMatch(/usage: npm run test:token/);
  }
});
