// An honest device must not lose attempts to faults it cannot see: with a minority partitioned
// away and a leader on the majority side, correct-password recoveries through the fleet front
// (no region hint, as a ChatD without one) succeed, and none ends with a lower counter or a lock.
// The front keeps a session's KE3 on the replica its KE1 entered at and routes to a replica that
// knows a live leader; the device resends an unanswered frame (free while the leader holding its session lives).
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { enablePassword, recoverK, status } from '../../client/password.ts';
import { startFleetFixture, type FleetFixture } from './fleet-fixture.ts';

let fx: FleetFixture;
beforeAll(async () => { fx = await startFleetFixture(3); }, 60_000);
afterAll(async () => { await fx?.close(); });

const K = new Uint8Array(32).fill(3);
const PW = 'the right one';

describe('honest users under a minority partition', () => {
  it('100 correct-password recoveries: at least 99 succeed, the counter never drops, nothing locks', async () => {
    const leader = await fx.stableLeader();
    const [f1, f2] = fx.fleet.replicas.filter((r) => r !== leader) as [string, string];
    const o = fx.deviceOpts('honest');
    await enablePassword(fx.send('honest'), o, PW, K, 10);
    // One wrong guess first, so a correct recovery has a counter to reset (and a drop would show).
    await expect(recoverK(fx.send('honest'), o, 'wrong')).rejects.toMatchObject({ code: 'WRONG_PASSWORD' });
    fx.fleet.partition([[leader, f1], [f2]]);
    try {
      let ok = 0;
      const failures: string[] = [];
      for (let i = 0; i < 100; i++) {
        try {
          const k = await recoverK(fx.send('honest'), o, PW);
          if (Buffer.from(k).equals(Buffer.from(K))) ok++;
        } catch (e) {
          failures.push((e as { code?: string }).code ?? String(e));
        }
        const st = await status(fx.send('honest'), o).catch(() => undefined);
        if (st) {
          expect(st.state).toBe('registered');
          // A correct recovery resets to the full limit; a failed one leaves at most one charge.
          expect(st.attemptsLeft).toBeGreaterThanOrEqual(9);
        }
      }
      expect(ok, `failures: ${failures.join(', ')}`).toBeGreaterThanOrEqual(99);
    } finally {
      fx.fleet.heal();
    }
  }, 120_000);
});
