import { describe, expect, it } from 'vitest';
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';

const bkv = fileURLToPath(new URL('../../bin/bkv.js', import.meta.url));

function run(...args: string[]) {
  return spawnSync(process.execPath, [bkv, ...args], { encoding: 'utf8' });
}

describe('bkv command line', () => {
  it('prints usage and exits 2 without a command', () => {
    const r = run();
    expect(r.status).toBe(2);
    expect(r.stdout).toContain('usage: bkv COMMAND');
  });

  it('rejects an unknown command with exit 2 and names it', () => {
    const r = run('no-such-command');
    expect(r.status).toBe(2);
    expect(r.stderr).toContain("unknown command 'no-such-command'");
  });
});
