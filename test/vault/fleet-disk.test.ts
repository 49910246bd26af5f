// One bad disk stops one replica, not the fleet: a flipped byte in a meta page or a data page, or a
// truncated data file, under one replica of a threaded fleet (every replica a thread of one process).
// The disk is read in a child process first, so LMDB never maps a file that would crash the fleet;
// that replica says TAMPERED (naming the file) and re-replicates, while the others keep serving.
import { openSync, readSync, statSync, truncateSync, writeSync, closeSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { enablePassword, recoverK, status } from '../../client/password.ts';
import { replicaDbDir } from '../../vault/agent/replica.ts';
import { startFleetFixture, type FleetFixture } from './fleet-fixture.ts';

let fx: FleetFixture;
beforeAll(async () => { fx = await startFleetFixture(3); }, 60_000);
afterAll(async () => { await fx?.close(); });

const K = new Uint8Array(32).fill(5);
const PW = 'the right one';

function flipByte(file: string, at: number): void {
  const fd = openSync(file, 'r+');
  try {
    const b = Buffer.alloc(1);
    readSync(fd, b, 0, 1, at);
    b[0]! ^= 0xff;
    writeSync(fd, b, 0, 1, at);
  } finally {
    closeSync(fd);
  }
}

/** [what, how, must the disk be refused] (a flip that hits nothing LMDB or the seals use may be harmless). */
const cases: Array<[string, (file: string) => void, boolean]> = [
  // LMDB keeps two meta pages and takes the newer valid one: one bad page may be survivable.
  ['a flipped byte in the first meta page', (f) => { flipByte(f, 24); flipByte(f, 28); }, false],
  // Both meta pages' magic and version (lmdb-js's LMDB: bytes 24-31 of pages 0 and 1): the environment cannot open.
  ['flipped bytes in both meta pages', (f) => { for (const p of [0, 4096]) { flipByte(f, p + 24); flipByte(f, p + 28); } }, true],
  ['a flipped byte in a data page', (f) => flipByte(f, Math.min(statSync(f).size - 1, 5 * 4096 + 200)), false],
  ['a truncated data file', (f) => truncateSync(f, Math.floor(statSync(f).size / 3)), true],
];

describe('a bad disk under one replica', () => {
  it('an intact disk after a crash is not refused: the replica restarts on it and votes at once', async () => {
    const leader = await fx.stableLeader();
    const victim = fx.fleet.replicas.find((r) => r !== leader)!;
    await enablePassword(fx.send('intact-disk', leader), fx.opts('intact-disk'), PW, K, 5);
    await fx.waitFor('the victim applied it', async () => (await fx.fleet.status()).find((s) => s.name === victim)!.lag === 0);
    await fx.fleet.crash(victim);
    await fx.fleet.restart(victim);
    const s = await fx.waitFor('the victim back', async () => {
      const x = (await fx.fleet.status()).find((y) => y.name === victim)!;
      return (x.role === 'follower' || x.role === 'leader') && x.lag === 0 ? x : undefined;
    }, 20_000);
    expect(s.stats?.rereplicated).toBe(false);
    expect(s.reason).toBe('');
  }, 60_000);

  for (const [what, corrupt, refused] of cases) {
    it(`${what}: ${refused ? 'that replica says TAMPERED and re-replicates' : 'that replica serves what it can vouch for or re-replicates'}; the others serve; counters intact`, async () => {
      const user = `disk-${cases.findIndex((c) => c[0] === what)}`;
      const leader = await fx.stableLeader();
      const victim = fx.fleet.replicas.find((r) => r !== leader)!;
      await enablePassword(fx.send(user, leader), fx.opts(user), PW, K, 5);
      await expect(recoverK(fx.send(user, leader), fx.opts(user), 'wrong')).rejects.toMatchObject({ code: 'WRONG_PASSWORD' });
      await fx.waitFor('the victim applied it', async () => (await fx.fleet.status()).find((s) => s.name === victim)!.lag === 0);
      await fx.fleet.crash(victim);
      const file = join(replicaDbDir(fx.tf.stateDir, victim), 'data.mdb');
      corrupt(file);
      await fx.fleet.restart(victim);
      if (refused) {
        const s = await fx.waitFor('the victim to refuse its disk', async () => {
          const x = (await fx.fleet.status()).find((y) => y.name === victim)!;
          return x.stats?.rereplicated ? x : undefined;
        }, 20_000);
        expect(s.reason === '' || /TAMPERED|ROLLED_BACK/.test(s.reason)).toBe(true);
      }
      // The others never stopped serving.
      expect((await status(fx.send(user, leader), fx.opts(user))).attemptsLeft).toBe(4);
      await fx.waitFor('the victim caught up', async () => {
        const x = (await fx.fleet.status()).find((y) => y.name === victim)!;
        return (x.role === 'follower' || x.role === 'leader') && x.lag === 0 ? x : undefined;
      }, 30_000);
      expect((await status(fx.send(user, victim), fx.opts(user))).attemptsLeft).toBe(4);
      expect(Buffer.from(await recoverK(fx.send(user, victim), fx.opts(user), PW)).equals(Buffer.from(K))).toBe(true);
    }, 90_000);
  }

  it('the status names the replica and the file when its disk did not read', async () => {
    const leader = await fx.stableLeader();
    const victim = fx.fleet.replicas.find((r) => r !== leader)!;
    await fx.fleet.crash(victim);
    const file = join(replicaDbDir(fx.tf.stateDir, victim), 'data.mdb');
    truncateSync(file, 100);
    await fx.fleet.restart(victim);
    const s = await fx.waitFor('a TAMPERED status line', async () => {
      const x = (await fx.fleet.status()).find((y) => y.name === victim)!;
      return /^TAMPERED: .*data\.mdb refused/.test(x.reason) ? x : undefined;
    }, 20_000);
    expect(s.reason).toContain(victim);
    await fx.waitFor('the victim caught up', async () => {
      const x = (await fx.fleet.status()).find((y) => y.name === victim)!;
      return (x.role === 'follower' || x.role === 'leader') && x.lag === 0 ? x : undefined;
    }, 30_000);
  }, 90_000);
});
