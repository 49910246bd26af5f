// Anchored acknowledgements (docs/fleet.md): no acknowledgement or vote leaves a replica before its
// token anchor covers it, so a restart can tell an intact disk (votes at once) from a rolled-back or
// blank one (re-replicates first, never votes before its commit passes the anchor). Real worker
// threads, real SoftHSM2 tokens, real LMDB; the attack and the outage from issue #9, performed.
import { cpSync, rmSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { enablePassword, recoverK, status, type Send } from '../../client/password.ts';
import { replicaDbDir } from '../../vault/agent/replica.ts';
import { startFleetFixture, type FleetFixture } from './fleet-fixture.ts';

let fx: FleetFixture;
beforeAll(async () => { fx = await startFleetFixture(3); }, 60_000);
afterAll(async () => { await fx?.close(); });

const K = new Uint8Array(32).fill(7);
const PW = 'the right one';

/** Counts the KE2s (one password evaluation each) a device receives, from the device's own view. */
function counted(user: string, at?: string): { send: Send; ke2s: () => number; o: ReturnType<FleetFixture['opts']> } {
  let n = 0;
  return { send: fx.send(user, at), ke2s: () => n, o: { ...fx.opts(user), onReply: (r) => { if (r.t === 'KE2') n++; } } };
}

async function statusOf(user: string, at?: string) {
  return fx.waitFor(`status of ${user}`, async () => {
    try { return await status(fx.send(user, at), fx.opts(user)); } catch { return undefined; }
  }, 20_000);
}

describe('anchored acknowledgements', () => {
  it('a follower whose disk is rolled back after its acks committed attempts, then a whole-fleet restart with the holders dark: serves nothing, says why, and never a lower counter', async () => {
    const leader = await fx.stableLeader();
    const [helper, bystander] = fx.fleet.replicas.filter((r) => r !== leader) as [string, string];
    await enablePassword(fx.send('victim', leader), fx.opts('victim'), PW, K, 5);
    await fx.waitFor('every replica has the registration', async () => (await fx.fleet.status()).every((s) => s.lag === 0 && s.appliedIndex >= 3));
    // The host copies the helper's disk now, before the attempts.
    const copy = await fx.fleet.snapshotDisk(helper);
    // The bystander is cut off from the leader: the attempts commit with the helper's acks alone.
    fx.fleet.blockLink(leader, bystander);
    fx.fleet.blockLink(bystander, leader);
    const a = counted('victim', leader);
    for (let i = 0; i < 3; i++) await expect(recoverK(a.send, a.o, 'wrong')).rejects.toMatchObject({ code: 'WRONG_PASSWORD' });
    expect(a.ke2s()).toBe(3);
    const used = 3;
    // The host rolls the helper's disk back to the copy and kills the whole fleet; it starts the
    // helper and the bystander again while the leader (the only other holder) stays dark.
    await fx.fleet.crash(helper);
    const db = replicaDbDir(fx.tf.stateDir, helper);
    rmSync(db, { recursive: true, force: true });
    cpSync(copy, db, { recursive: true });
    await fx.wholeFleetRestart([helper, bystander]);
    // Fail closed, visibly: the helper knows its disk is below what it promised, and does not vote.
    const st = await fx.waitFor('the helper to report itself rolled back', async () => {
      const s = (await fx.fleet.status()).find((x) => x.name === helper)!;
      return s.role === 'rejoining' && /^ROLLED_BACK/.test(s.reason) ? s : undefined;
    });
    expect(st.reason).toMatch(/below its anchor/);
    // Nothing is served: the device's recoveries fail without a single KE2, for several election timeouts.
    const b = counted('victim', bystander);
    for (let i = 0; i < 3; i++) {
      const e = await recoverK(b.send, b.o, 'another guess').catch((x: unknown) => x);
      expect(e).toBeInstanceOf(Error);
    }
    expect(b.ke2s()).toBe(0);
    expect((await fx.fleet.status()).some((s) => s.role === 'leader')).toBe(false);
    // The holder comes back: the fleet serves the true counter, the helper re-replicates past its anchor.
    await fx.wholeFleetRestart();
    const after = await statusOf('victim');
    expect(after.attemptsLeft).toBe(5 - used);
    await fx.waitFor('the helper caught up and voting', async () => {
      const s = (await fx.fleet.status()).find((x) => x.name === helper)!;
      return s.role === 'follower' || s.role === 'leader' ? s : undefined;
    }, 30_000);
    // And the guess budget holds end to end: the attacker gets exactly the attempts that were left.
    const c = counted('victim');
    for (let i = 0; i < 4; i++) await recoverK(c.send, c.o, `guess ${i}`).catch(() => undefined);
    expect(a.ke2s() + b.ke2s() + c.ke2s()).toBeLessThanOrEqual(5);
    expect((await statusOf('victim')).state).toBe('locked');
  }, 120_000);

  it('a majority crashed and restarted one by one elects again at once, counters intact', async () => {
    await fx.wholeFleetRestart();
    const leader = await fx.stableLeader();
    await enablePassword(fx.send('majority', leader), fx.opts('majority'), PW, K, 5);
    await expect(recoverK(fx.send('majority', leader), fx.opts('majority'), 'wrong')).rejects.toMatchObject({ code: 'WRONG_PASSWORD' });
    await fx.waitFor('every replica applied it', async () => { const s = await fx.fleet.status(); return s.every((x) => x.lag === 0 && x.digest === s[0]!.digest); });
    const others = fx.fleet.replicas.filter((r) => r !== leader);
    // Two of three down: no quorum.
    await fx.fleet.crash(leader);
    await fx.fleet.crash(others[0]!);
    await fx.fleet.restart(leader);
    // One back is a majority with the survivor: intact disks vote at once, a leader within a few timeouts.
    const t0 = Date.now();
    await fx.stableLeader([leader, others[1]!]);
    expect(Date.now() - t0).toBeLessThan(5 * 300 * 3);
    await fx.fleet.restart(others[0]!);
    await fx.stableLeader();
    expect((await statusOf('majority')).attemptsLeft).toBe(4);
    expect(Buffer.from(await recoverK(fx.send('majority'), fx.opts('majority'), PW)).equals(Buffer.from(K))).toBe(true);
  }, 90_000);

  it('a rolling restart of every replica under load: every correct recovery succeeds, counters intact', async () => {
    await fx.wholeFleetRestart();
    const leader = await fx.stableLeader();
    const o = fx.deviceOpts('rolling');
    await enablePassword(fx.send('rolling', leader), o, PW, K, 5);
    let stop = false;
    let ok = 0;
    const failures: string[] = [];
    const load = (async () => {
      while (!stop) {
        try {
          if (Buffer.from(await recoverK(fx.send('rolling'), o, PW)).equals(Buffer.from(K))) ok++;
        } catch (e) {
          failures.push((e as { code?: string }).code ?? String(e));
        }
      }
    })();
    for (const r of fx.fleet.replicas) {
      await fx.fleet.crash(r);
      await fx.fleet.restart(r);
      await fx.stableLeader();
      await fx.waitFor(`${r} caught up`, async () => (await fx.fleet.status()).find((s) => s.name === r)!.lag === 0);
    }
    stop = true;
    await load;
    expect(ok).toBeGreaterThan(5);
    // A recovery whose leader died mid-way may fail (its session died with it), never silently: a
    // typed code, and no lock, no lower counter.
    for (const f of failures) expect(['OUTCOME_UNKNOWN', 'VAULT_ERROR', 'SESSION_REFUSED']).toContain(f);
    const st = await statusOf('rolling');
    expect(st.state).toBe('registered');
    expect(st.attemptsLeft).toBeGreaterThanOrEqual(5 - failures.length);
    expect(Buffer.from(await recoverK(fx.send('rolling'), o, PW)).equals(Buffer.from(K))).toBe(true);
    expect((await statusOf('rolling')).attemptsLeft).toBe(5);
  }, 120_000);

  it('a whole-fleet restart on intact disks elects at once; a blank disk under a replica\'s identity re-replicates first', async () => {
    await fx.wholeFleetRestart();
    const leader = await fx.stableLeader();
    await enablePassword(fx.send('amnesia', leader), fx.opts('amnesia'), PW, K, 5);
    await expect(recoverK(fx.send('amnesia', leader), fx.opts('amnesia'), 'wrong')).rejects.toMatchObject({ code: 'WRONG_PASSWORD' });
    const victim = fx.fleet.replicas.find((r) => r !== leader)!;
    await fx.waitFor('the victim applied it', async () => (await fx.fleet.status()).find((s) => s.name === victim)!.lag === 0);
    await fx.fleet.crash(victim);
    rmSync(replicaDbDir(fx.tf.stateDir, victim), { recursive: true, force: true });
    await fx.fleet.restart(victim);
    const s = await fx.waitFor('the blank replica to say so', async () => {
      const x = (await fx.fleet.status()).find((y) => y.name === victim)!;
      return x.role === 'rejoining' || x.stats?.rereplicated ? x : undefined;
    });
    expect(s.stats?.rereplicated).toBe(true);
    await fx.waitFor('the blank replica caught up', async () => {
      const x = (await fx.fleet.status()).find((y) => y.name === victim)!;
      return (x.role === 'follower' || x.role === 'leader') && x.lag === 0 ? x : undefined;
    }, 30_000);
    expect((await statusOf('amnesia', victim)).attemptsLeft).toBe(4);
  }, 90_000);
});
