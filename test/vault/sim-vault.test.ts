// The deterministic vault cluster: the production replica core (firmware, Raft, sealing, anchors) on simulated tokens, disks and network, one thread,
// virtual time, seeded faults; an outside oracle checks the guess budget, the counter, K release,
// Raft safety and convergence. See docs/consensus.md, "Deterministic vault cluster".
import { describe, expect, it } from 'vitest';
import { randomVaultRun } from '../../scripts/chaos/workload.ts';

const SEEDS = Number(process.env.BKV_SIM_VAULT_SEEDS ?? 200);
const FIRST = Number(process.env.BKV_SIM_VAULT_FIRST_SEED ?? 1);
const DISK_SEEDS = Number(process.env.BKV_SIM_DISK_SEEDS ?? 100);
const DISK_FIRST = Number(process.env.BKV_SIM_DISK_FIRST_SEED ?? 10_001);


describe('deterministic vault cluster', () => {
  it('a seed replays exactly; another seed differs', async () => {
    const a = await randomVaultRun({ seed: 7, durationMs: 1_500 });
    const b = await randomVaultRun({ seed: 7, durationMs: 1_500 });
    const c = await randomVaultRun({ seed: 8, durationMs: 1_500 });
    if (process.env.BKV_SIM_DEBUG) console.log(JSON.stringify({ hash: a.traceHash, outcomes: a.outcomes, counts: a.cluster.counts, oracle: a.cluster.oracle.counts, now: a.cluster.now }));
    expect(a.violations).toEqual([]);
    expect(b.traceHash).toBe(a.traceHash);
    expect(b.outcomes).toEqual(a.outcomes);
    expect(c.traceHash).not.toBe(a.traceHash);
  }, 60_000);

  it(`${SEEDS} seeds under crashes, partitions, drops, duplicates and reordering: every invariant holds`, async () => {
    const failures: string[] = [];
    const total: Record<string, number> = {};
    const oracle = { ke2: 0, released: 0, resets: 0, locks: 0 };
    const net = { lostFlushes: 0, duplicated: 0, dropped: 0, forwarded: 0, compactions: 0, batchedSteps: 0 };
    for (let seed = FIRST; seed < FIRST + SEEDS; seed++) {
      const r = await randomVaultRun({ seed });
      for (const [k, v] of Object.entries(r.outcomes)) total[k] = (total[k] ?? 0) + v;
      for (const k of Object.keys(oracle) as (keyof typeof oracle)[]) oracle[k] += r.cluster.oracle.counts[k];
      for (const k of Object.keys(net) as (keyof typeof net)[]) net[k] += r.cluster.counts[k];
      if (process.env.BKV_SIM_DEBUG) console.log(seed, JSON.stringify(r.cluster.proposed), JSON.stringify(r.cluster.replied));
      if (!r.converged || r.violations.length > 0) failures.push(`seed ${seed}: converged=${String(r.converged)} ${r.violations.slice(0, 3).join('; ')}`);
    }
    expect(failures).toEqual([]);
    // The runs exercised what the oracle judges: guesses, releases, resets, lockouts, lost flushes.
    expect(total.registered).toBeGreaterThanOrEqual(SEEDS);
    expect(oracle.ke2).toBeGreaterThan(SEEDS * 3);
    expect(oracle.released).toBeGreaterThan(0);
    expect(oracle.resets).toBeGreaterThan(0);
    expect(oracle.locks).toBeGreaterThan(0);
    expect(net.lostFlushes + net.duplicated + net.dropped).toBeGreaterThan(0);
    expect(net.forwarded).toBeGreaterThan(0);
    // Messages that arrive at one instant reach the core together (stepAll), as on a real host.
    expect(net.batchedSteps).toBeGreaterThan(SEEDS);
    console.log(JSON.stringify({ seeds: [FIRST, FIRST + SEEDS - 1], outcomes: total, oracle, net }));
  }, 300_000);

  it(`${DISK_SEEDS} seeds adding rolled-back, blank, torn and flipped disks, whole-fleet restarts, rollback attacks, forks, token errors, clock jumps and membership changes: every invariant holds`, async () => {
    const failures: string[] = [];
    let rereplications = 0;
    for (let seed = DISK_FIRST; seed < DISK_FIRST + DISK_SEEDS; seed++) {
      const r = await randomVaultRun({ seed, diskFaults: true, tokenFaults: true, clockFaults: true, membership: true });
      rereplications += r.cluster.counts.rereplications;
      if (!r.converged || r.violations.length > 0) failures.push(`seed ${seed}: converged=${String(r.converged)} ${r.violations.slice(0, 3).join('; ')}`);
    }
    expect(failures).toEqual([]);
    // The runs did roll disks back: replicas refused them and re-replicated.
    expect(rereplications).toBeGreaterThan(DISK_SEEDS / 4);
    console.log(JSON.stringify({ diskSeeds: [DISK_FIRST, DISK_FIRST + DISK_SEEDS - 1], rereplications }));
  }, 300_000);
});
