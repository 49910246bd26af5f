// The mutation check (issue: one replica core): each seeded bug is caught by the simulator within
// a stated number of seeds. Rerun one by hand: BKV_MUTATION=skip-anchor npx vitest run test/vault/sim-mutations.test.ts
import { describe, expect, it } from 'vitest';
import { MUTATION_CASES, seedsToCatch } from '../../scripts/chaos/mutations.ts';

/** The budget each bug must be caught within (docs/consensus.md, "Mutation check", has the measured counts). */
const MAX_SEEDS = Number(process.env.BKV_MUTATION_SEEDS ?? 60);
const FIRST = Number(process.env.BKV_MUTATION_FIRST_SEED ?? 1);
const only = process.env.BKV_MUTATION;

describe('mutation check: seeded bugs in the replica core and the firmware are caught by the simulator', () => {
  for (const c of MUTATION_CASES.filter((x) => !only || x.name === only)) {
    it(`${c.name} (${c.breaks}) is caught within ${MAX_SEEDS} seeds`, async () => {
      const r = await seedsToCatch(c, FIRST, MAX_SEEDS);
      console.log(JSON.stringify({ mutation: c.name, caughtAtSeed: r.seed, seedsTried: r.tried, violation: r.violation.slice(0, 160) }));
      expect(r.seed).not.toBeNull();
    }, 600_000);
  }
});
