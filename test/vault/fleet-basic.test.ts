// The threaded fleet, fault-free: three replicas in worker threads with their own tokens agree by
// Raft; a device registers and recovers through any replica; every replica applies the same state.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { enablePassword, recoverK, status } from '../../client/password.ts';
import { startFleetFixture, type FleetFixture } from './fleet-fixture.ts';

let fx: FleetFixture;
beforeAll(async () => { fx = await startFleetFixture(3); });
afterAll(async () => { await fx?.close(); });

describe('fleet: three replicas', () => {
  it('elects one leader and serves a registration and a recovery entering at any replica', async () => {
    const leader = await fx.stableLeader();
    expect(fx.fleet.replicas).toContain(leader);
    const k = new Uint8Array(32).fill(7);
    const follower = fx.fleet.replicas.find((r) => r !== leader)!;
    await enablePassword(fx.send('alice', follower), fx.opts('alice'), 'correct horse', k, 5);
    for (const at of fx.fleet.replicas) {
      const got = await recoverK(fx.send('alice', at), fx.opts('alice'), 'correct horse');
      expect(Buffer.from(got).equals(Buffer.from(k))).toBe(true);
    }
    const st = await status(fx.send('alice', follower), fx.opts('alice'));
    expect(st).toEqual({ state: 'registered', attemptsLeft: 5, limit: 5 });
    const all = await fx.waitFor('replicas to converge', async () => {
      const s = await fx.fleet.status();
      return s.every((x) => x.appliedIndex === s[0]!.appliedIndex && x.lag === 0) ? s : undefined;
    });
    expect(all.filter((s) => s.role === "leader")).toHaveLength(1);
    expect(new Set(all.map((s) => s.digest)).size).toBe(1);
    if (process.env.BKV_DEBUG) console.log(JSON.stringify(all, null, 1));
  });
});
