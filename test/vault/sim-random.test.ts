// Randomized runs over many seeds: each seed picks the network/disk model, the Raft knobs and a
// stream of crashes, restarts, partitions (sets, one-way, leader isolation), drops, duplicates,
// reorders, leadership transfers and membership changes, with client traffic throughout. After
// healing, the oracle must find no violation and the fleet must converge.

import { describe, expect, it } from 'vitest';
import { randomRun } from '../../vault/sim/nemesis.ts';

const SEEDS = Number(process.env.BKV_SIM_SEEDS ?? 200);
const FIRST = Number(process.env.BKV_SIM_FIRST_SEED ?? 1);

describe('randomized runs', () => {
  it(`${SEEDS} seeds: safety invariants hold and the fleet converges`, () => {
    const failures: string[] = [];
    let acked = 0;
    let leaders = 0;
    const seen = { lostFlushes: 0, duplicated: 0, dropped: 0 };
    for (let seed = FIRST; seed < FIRST + SEEDS; seed++) {
      const r = randomRun({ seed, durationMs: 2_500, membership: seed % 3 === 0, allowMajorityDown: seed % 7 === 0 });
      acked += r.acked;
      leaders += r.cluster.checker.leaders.size;
      seen.lostFlushes += r.cluster.counts.lostFlushes;
      seen.duplicated += r.cluster.counts.duplicated;
      seen.dropped += r.cluster.counts.dropped;
      if (!r.converged || r.violations.length > 0) {
        failures.push(`seed ${seed}: converged=${String(r.converged)} ${r.violations.slice(0, 3).join('; ')}`);
      }
    }
    expect(failures).toEqual([]);
    // The runs did real work: many elections and many acknowledged client operations.
    expect(leaders).toBeGreaterThan(SEEDS * 2);
    expect(acked).toBeGreaterThan(SEEDS * 50);
    // Crashes did land between a Ready's creation and its flush (unflushed state lost), and the
    // network did drop and duplicate.
    expect(seen.lostFlushes).toBeGreaterThan(0);
    expect(seen.duplicated).toBeGreaterThan(0);
    expect(seen.dropped).toBeGreaterThan(0);
  });

  it('a seed replays exactly: equal seeds give equal trace hashes, different seeds differ', () => {
    const a = randomRun({ seed: 4242, durationMs: 1_500, membership: true });
    const b = randomRun({ seed: 4242, durationMs: 1_500, membership: true });
    const c = randomRun({ seed: 4243, durationMs: 1_500, membership: true });
    expect(a.traceHash).toBe(b.traceHash);
    expect(a.cluster.now).toBe(b.cluster.now);
    expect(a.cluster.counts).toEqual(b.cluster.counts);
    expect(a.traceHash).not.toBe(c.traceHash);
  });
});
