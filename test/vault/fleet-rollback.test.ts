// Fleet.snapshotDisk on a replica that is busy writing, then restart --rollback through the Fleet API.
// The copy used to wait for a gap between two Readies, which never came while the replica was busy
// (BACKUP_FAILED); LMDB now copies a read snapshot while writes go on. The rolled-back replica must be
// caught by its token anchor, re-replicate, and the counter it then serves must not go back.
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { disable, enablePassword, recoverK, status } from '../../client/password.ts';
import { startFleetFixture, type FleetFixture } from './fleet-fixture.ts';

let fx: FleetFixture;
beforeAll(async () => { fx = await startFleetFixture(3); });
afterAll(async () => { await fx?.close(); });

const K = new Uint8Array(32).fill(7);
const PW = 'correct horse';

async function statusOf(user: string, at?: string) {
  return fx.waitFor(`status of ${user}`, async () => {
    try { return await status(fx.send(user, at), fx.opts(user)); } catch { return undefined; }
  });
}

describe('fleet snapshot-disk and restart --rollback', () => {
  it('copies a busy replica\'s disk; the replica restarted on it re-replicates and the counter never goes back', async () => {
    const leader = await fx.stableLeader();
    const [victim, other] = fx.fleet.replicas.filter((r) => r !== leader) as [string, string];
    await enablePassword(fx.send('rb', other), fx.opts('rb'), PW, K, 5);
    await fx.waitFor('victim applied the registration', async () => (await fx.fleet.status()).find((s) => s.name === victim)!.lag === 0);

    // Keep every replica writing while the copy is taken: devices recovering through the victim.
    let stop = false;
    let busy = 0;
    const load = Promise.all(Array.from({ length: 6 }, async (_, i) => {
      const u = `busy-${i}`;
      await enablePassword(fx.send(u, victim), fx.opts(u), PW, K, 5);
      while (!stop) {
        await recoverK(fx.send(u, victim), fx.opts(u), PW).then(() => { busy++; }, () => undefined);
      }
    }));
    await fx.waitFor('load running', async () => busy >= 6);
    const path = await fx.fleet.snapshotDisk(victim);
    const busyAtCopy = busy;
    expect(existsSync(join(path, 'data.mdb'))).toBe(true);
    await fx.waitFor('more writes after the copy', async () => busy >= busyAtCopy + 6);
    stop = true;
    await load;

    // After the copy: two wrong guesses, and a disabled record (its K erased: every replica compacts).
    for (let i = 0; i < 2; i++) {
      await expect(recoverK(fx.send('rb', other), fx.opts('rb'), 'wrong')).rejects.toMatchObject({ code: 'WRONG_PASSWORD' });
    }
    await enablePassword(fx.send('gone', other), fx.opts('gone'), PW, K, 5);
    await disable(fx.send('gone', other), fx.opts('gone'));
    expect((await statusOf('rb', other)).attemptsLeft).toBe(3);
    await fx.waitFor('victim applied everything', async () => (await fx.fleet.status()).find((s) => s.name === victim)!.lag === 0);

    await fx.fleet.crash(victim);
    await fx.fleet.restart(victim, { disk: 'rollback' });
    const back = await fx.waitFor('victim caught up and voting', async () => {
      const s = (await fx.fleet.status()).find((x) => x.name === victim)!;
      return s.role === 'follower' && s.lag === 0 ? s : undefined;
    });
    // Its token anchor is past the copy's end: the disk is refused and fetched again, not served.
    expect(back.stats?.rereplicated).toBe(true);

    // The victim must now carry the fleet with `other`: the old leader goes.
    await fx.fleet.crash(leader);
    expect((await statusOf('rb', victim)).attemptsLeft).toBe(3);
    await fx.fleet.restart(leader);
    await fx.waitFor('convergence', async () => {
      const s = await fx.fleet.status();
      return s.every((x) => x.healthy && x.lag === 0 && x.digest === s[0]!.digest) ? s : undefined;
    }, 30_000);
  });
});
