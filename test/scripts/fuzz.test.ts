// The decoder fuzzer (`bkv chaos fuzz`, `npm run fuzz`): a short fixed run over every decoder finds
// nothing and exercises both the accepting and the refusing paths; a fragile decoder is caught, so
// the harness can fail; the command's flags and summary.
import { describe, expect, it } from 'vitest';
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { fuzzTarget, fuzzTargets } from '../../scripts/chaos/fuzz.ts';

const bkv = fileURLToPath(new URL('../../bin/bkv.js', import.meta.url));

describe('decoder fuzzing', () => {
  it('every decoder returns or throws a typed error on 3000 mutated inputs', async () => {
    const targets = await fuzzTargets();
    expect(targets.length).toBeGreaterThanOrEqual(20);
    for (const t of targets) {
      const r = fuzzTarget(t, 3000, 7);
      expect(r.findings, `${t.name}: ${JSON.stringify(r.findings[0])}`).toEqual([]);
      expect(r.accepted, `${t.name} decoded nothing: its corpus is not valid input`).toBeGreaterThan(0);
      expect(r.refused, `${t.name} refused nothing`).toBeGreaterThan(0);
    }
  }, 120_000);

  it('catches a decoder that throws an untyped error, with the input that did it', () => {
    const td = new TextDecoder();
    const r = fuzzTarget({ name: 'fragile', corpus: [new TextEncoder().encode('{"a":[1,2,3]}')], run: (b) => JSON.parse(td.decode(b)) as unknown }, 2000, 1);
    expect(r.findings.length).toBeGreaterThan(0);
    expect(r.findings[0]!.error).toMatch(/^SyntaxError/);
    expect(() => JSON.parse(td.decode(Buffer.from(r.findings[0]!.input, 'hex')))).toThrow(SyntaxError);
  });

  it('runs as a command with a JSON summary, and refuses an unknown decoder', () => {
    const ok = spawnSync(process.execPath, [bkv, 'chaos', 'fuzz', '--inputs', '300', '--target', 'key64,relay-request', '--json'], { encoding: 'utf8' });
    expect(ok.status).toBe(0);
    const s = JSON.parse(ok.stdout) as { decoders: number; findings: number; results: { target: string; inputs: number }[] };
    expect(s).toMatchObject({ decoders: 2, findings: 0 });
    expect(s.results.map((r) => r.target)).toEqual(['key64', 'relay-request']);
    const bad = spawnSync(process.execPath, [bkv, 'chaos', 'fuzz', '--target', 'nope'], { encoding: 'utf8' });
    expect(bad.status).toBe(2);
    expect(bad.stderr).toMatch(/--target takes decoder names from: .*device-message/);
  }, 60_000);
});
