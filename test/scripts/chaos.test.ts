// `bkv chaos sim` as a user runs it: a clean campaign, a campaign against a seeded bug that fails,
// shrinks and prints a replay command that fails again (and passes without the shrunk faults), and
// flag errors with exit 2.
import { describe, expect, it } from 'vitest';
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { countColour } from '../helpers/png.ts';
import { runBkv, screenshot } from '../helpers/bkv-cli.ts';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const run = runBkv;

describe('bkv chaos sim', () => {
  it('runs a campaign: every seed holds, one JSON summary on stdout, progress on stderr', async () => {
    const r = await run('chaos', 'sim', '--seeds', '4', '--from', '101', '--workers', '2', '--json');
    expect(r.status).toBe(0);
    const s = JSON.parse(r.stdout) as { mode: string; seeds: number[]; passed: number; failed: number; faults: string[] };
    expect(s).toMatchObject({ mode: 'safety', seeds: [101, 104], passed: 4, failed: 0 });
    expect(s.faults).toEqual(['net', 'disk', 'token', 'clock', 'membership']);
    expect(r.stderr).toContain('4/4 seeds');
  }, 120_000);

  it('catches a seeded bug, shrinks its fault schedule, and the printed command replays the failure', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'bkv-chaos-'));
    try {
      const r = await run('chaos', 'sim', '--seeds', '1', '--mutation', 'apply-uncommitted', '--workers', '1', '--json', '--report', dir);
      expect(r.status).toBe(1);
      const s = JSON.parse(r.stdout) as { failed: number; failures: { seed: number; violations: string[]; faultSteps: number; shrunk: { steps: { t: number }[]; replay: string } }[] };
      expect(s.failed).toBe(1);
      const f = s.failures[0]!;
      expect(f.violations.join(' ')).toMatch(/invariant/);
      expect(f.shrunk.steps.length).toBeLessThanOrEqual(5);
      expect(f.shrunk.steps.length).toBeLessThan(f.faultSteps);
      expect(f.shrunk.replay).toMatch(/^bkv chaos sim --seed 1 --steps \S+ --faults \S+ --mutation apply-uncommitted$/);
      for (const name of ['summary.json', 'seed-1.json', 'seed-1.trace.txt', 'index.html', 'history.jsonl']) {
        expect(existsSync(join(dir, name))).toBe(true);
        expect(statSync(join(dir, name)).mode & 0o077).toBe(0);
      }
      expect(readFileSync(join(dir, 'seed-1.trace.txt'), 'utf8')).toContain('crash');
      // The history, Jepsen style: every operation invoked, and how it ended (info: unknown, counted as used).
      const history = readFileSync(join(dir, 'history.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l) as { type: string; op?: string });
      expect(history.filter((h) => h.op === 'recover').length).toBeGreaterThan(3);
      expect(new Set(history.map((h) => h.type))).toContain('role');
      // The page pictures the shrunk run: its violation is on the timeline and linked to the operations around it.
      const html = readFileSync(join(dir, 'index.html'), 'utf8');
      expect(html).toMatch(/FAILED: \d+ violations?</);
      expect(html).toMatch(/<a href="#violation-1"><line[^>]*class="violation"/);
      expect(html).toMatch(/<tr id="violation-1">.*<a href="#op-\d+">/);
      expect(html).not.toMatch(/<script|https?:\/\//);
      const shot = screenshot(join(dir, 'index.html'));
      if (shot) {
        // Rendered: the violation's red line, leaders' green lanes and operation bars are on the picture.
        expect(countColour(shot, '#d50000')).toBeGreaterThan(150);
        expect(countColour(shot, '#2e8b57')).toBeGreaterThan(2000);
      }
      // The printed command, as printed: it fails again, the same way.
      const replay = await run(...f.shrunk.replay.split(' ').slice(1));
      expect(replay.status).toBe(1);
      expect(replay.stdout).toContain('FAILED');
      expect(replay.stdout).toContain('broke an invariant');
      // Without the bug the same schedule holds.
      const healthy = await run(...f.shrunk.replay.replace(/ --mutation \S+/, '').split(' ').slice(1));
      expect(healthy.status).toBe(0);
      expect(healthy.stdout).toContain('held every invariant');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }, 180_000);

  it('refuses bad flags with exit 2 and says why', async () => {
    const cases: [string[], RegExp][] = [
      [['chaos', 'sim', '--seeds', '2', '--faults', 'net,bogus'], /--faults takes .*'bogus'/],
      [['chaos', 'sim', '--seeds', 'many'], /--seeds needs a whole number/],
      [['chaos', 'sim', '--seed', '3', '--seeds', '2'], /--seed replays one seed/],
      [['chaos', 'sim', '--seeds', '2', '--mutation', 'nope'], /unknown mutation 'nope'/],
      [['chaos', 'sim'], /give --seeds N/],
      [['chaos', 'bogus'], /unknown chaos subcommand 'bogus' \(sim, live, fuzz\)/],
    ];
    for (const [args, msg] of cases) {
      const r = await run(...args);
      expect(r.status, args.join(' ')).toBe(2);
      expect(r.stderr).toMatch(msg);
    }
    const h = await run('chaos', 'sim', '--help');
    expect(h.status).toBe(0);
    expect(h.stdout).toContain('--liveness');
    expect(h.stdout).toContain('--steps');
  }, 60_000);
});
