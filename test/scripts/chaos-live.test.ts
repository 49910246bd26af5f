// `bkv chaos live` as a user runs it, against a deliberately broken build: the replicas' test-only
// switch sends the KE2 before its attempt commits, and the run must fail with the guess budget or
// linearizability, write a report whose timeline shows the violation (checked in headless Chromium),
// and keep every password out of what it writes. Flag errors exit 2 before anything starts.
// (A clean one-minute run is CI's own step: .ci/run.)
import { describe, expect, it } from 'vitest';
import { mkdtempSync, readFileSync, readdirSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { countColour } from '../helpers/png.ts';
import { runBkv, screenshot } from '../helpers/bkv-cli.ts';

const run = runBkv;

describe('bkv chaos live', () => {
  it('refuses bad flags with exit 2 and a reason, before provisioning anything', async () => {
    const cases: [string[], RegExp][] = [
      [['--transport', 'carrier-pigeon'], /--transport must be thread, process or tcp/],
      [['--transport', 'process', '--wan', 'default'], /--wan goes with --transport thread/],
      [['--minutes', '0.1'], /--minutes must be a number of minutes from 0.5/],
      [['--mutation', 'nope'], /unknown mutation 'nope' \(.*ke2-before-commit/],
      [['--replicas', '2'], /--replicas must be a whole number 3..7/],
      [['--limit', '1000'], /--limit must be a whole number 3..100/],
      [['--recheck', '/nonexistent/bkv-report'], /no summary.json and history.jsonl there/],
    ];
    for (const [args, msg] of cases) {
      const r = await run('chaos', 'live', ...args);
      expect(r.status, args.join(' ')).toBe(2);
      expect(r.stderr).toMatch(msg);
    }
    const h = await run('chaos', 'live', '--help');
    expect(h.status).toBe(0);
    expect(h.stdout).toContain('usage: bkv chaos live');
  });

  it('catches KE2-before-commit on a real fleet: budget or linearizability, the report shows it, no password written', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'bkv-live-test-'));
    try {
      const r = await run('chaos', 'live', '--minutes', '0.5', '--seed', '7', '--mutation', 'ke2-before-commit', '--attackers', '4', '--limit', '3', '--json', '--report', dir);
      expect(r.status, r.stderr.slice(-2000)).toBe(1);
      const s = JSON.parse(r.stdout) as { ok: boolean; violations: string[]; checks: { name: string; ok: boolean }[]; operations: number; settings: { mutation: string } };
      expect(s.ok).toBe(false);
      expect(s.settings.mutation).toBe('ke2-before-commit');
      expect(s.operations).toBeGreaterThan(100);
      const failedChecks = s.checks.filter((c) => !c.ok).map((c) => c.name);
      expect(failedChecks.some((n) => n === 'linearizable' || n.startsWith('guess budget'))).toBe(true);
      expect(s.violations.join('\n')).toMatch(/not linearizable|more than its limit/);
      // HDR percentiles per kind of operation, in the summary and on the page.
      const lat = (JSON.parse(r.stdout) as { latency: Record<string, { count: number; p50: number; p99: number; max: number }> }).latency;
      expect(lat.attempt!.count).toBeGreaterThan(20);
      expect(lat.attempt!.p50).toBeGreaterThan(0);
      expect(lat.attempt!.p50).toBeLessThanOrEqual(lat.attempt!.p99);
      expect(lat.attempt!.p99).toBeLessThanOrEqual(lat.attempt!.max);
      // Progress went to stderr, one document to stdout.
      expect(r.stdout.trim().split('\n')).toHaveLength(1);
      expect(r.stderr).toMatch(/checking +\d+ operations/);
      for (const name of ['index.html', 'history.jsonl', 'summary.json']) expect(statSync(join(dir, name)).mode & 0o077).toBe(0);
      // The history, Jepsen style: every operation invoked, then ok / fail / info.
      const history = readFileSync(join(dir, 'history.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l) as { type: string; f?: string });
      expect(history.filter((h) => h.f === 'attempt').length).toBeGreaterThan(20);
      expect(history.filter((h) => h.f === 'outcome').length).toBeGreaterThan(10);
      expect(new Set(history.map((h) => h.type))).toEqual(expect.objectContaining(new Set(['ok', 'role'])));
      // Passwords are numbered in what is written; the words a device typed never are.
      for (const f of readdirSync(dir)) expect(readFileSync(join(dir, f)).toString('latin1')).not.toMatch(/password \d+ of run|guess \d+\.\d+ of run/);
      // The saved run judged again, without running anything: the same verdict.
      const again = await run('chaos', 'live', '--recheck', dir, '--json');
      expect(again.status).toBe(1);
      expect((JSON.parse(again.stdout) as { violations: string[] }).violations).toEqual(s.violations);
      const html = readFileSync(join(dir, 'index.html'), 'utf8');
      expect(html).toMatch(/FAILED: \d+ violations?</);
      expect(html).toMatch(/<a href="#violation-1"><line[^>]*class="violation"/);
      expect(html).not.toMatch(/<script|https?:\/\//);
      expect(html).toMatch(/<table class="latency">.*<td><span class="key"[^>]*><\/span>attempt<\/td><td>\d+<\/td>/s);
      expect(html).toMatch(/<svg[^>]*class="percentiles">.*<polyline points="[\d., ]+"/s);
      const shot = screenshot(join(dir, 'index.html'));
      if (!shot) return;
      // Rendered: the violation's red line, a leader's green lane, the KE2 bars.
      expect(countColour(shot, '#d50000')).toBeGreaterThan(150);
      expect(countColour(shot, '#2e8b57')).toBeGreaterThan(2000);
      expect(countColour(shot, '#64b5f6')).toBeGreaterThan(20);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }, 300_000);
});
