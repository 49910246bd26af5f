// The threaded fleet under faults: three replicas in worker threads with real tokens and LMDB.
// The leader dies in the middle of a recovery (after KE1, after KE2), partitions leave a majority or
// strand the leader with a minority, a replica comes back on a rolled-back disk, and concurrent
// attackers spread over replicas. An outside counter (the devices' view of the replies) checks the
// invariants: attempts charged exactly once, no K without a correct password, KE2s <= the limit.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { disable, enablePassword, recoverK, status, type Send } from '../../client/password.ts';
import { createOpaque, identityKsf } from '../../protocol/opaque/index.ts';
import { decodeVaultReply, encodeDeviceMessage, type DeviceMessage, type VaultReply } from '../../protocol/wire.ts';
import { DeviceSession, decodeSessionFrame, fleetIdentity } from '../../protocol/session.ts';
import { fastX25519 } from '../../protocol/opaque/group.ts';
import { randomBytes } from 'node:crypto';
import { RelayFailure, startFleetFixture, type FleetFixture } from './fleet-fixture.ts';

let fx: FleetFixture;
beforeAll(async () => { fx = await startFleetFixture(3); });
afterAll(async () => { await fx?.close(); });

const K = new Uint8Array(32).fill(42);
const PW = 'the right one';

/**
 * One device-vault session driven by hand (the inner messages are the test's own): first() sends its
 * Hello, second() its Next, the same bytes on every retry (a retrying device). Relay failures and the
 * vault's Refused frames come back as { failed: code }.
 */
function conversation(user: string) {
  const s = new DeviceSession(fastX25519(), user, fx.opts(user).sessionKey, (n) => new Uint8Array(randomBytes(n)));
  let next: Uint8Array | undefined;
  const call = async (send: Send, frame: Uint8Array, open: (b: Uint8Array) => Uint8Array): Promise<VaultReply | { failed: string }> => {
    try {
      const b = await send(frame);
      const f = decodeSessionFrame(b);
      if (f.kind === 'refused') return { failed: f.code };
      return decodeVaultReply(open(b));
    } catch (e) {
      if (e instanceof RelayFailure) return { failed: e.code };
      throw e;
    }
  };
  return {
    first: (send: Send, m: DeviceMessage) => call(send, s.hello(encodeDeviceMessage(m)), (b) => s.openWelcome(b)),
    second: (send: Send, m: DeviceMessage) => {
      next ??= s.next(encodeDeviceMessage(m));
      return call(send, next, (b) => s.openFinal(b));
    },
  };
}

/** A first message in a session of its own. */
const ask = (send: Send, user: string, m: DeviceMessage) => conversation(user).first(send, m);

/** The OPAQUE identities a device uses with this fleet. */
const ids = (user: string) => ({ expectedServerPublicKey: fx.opts(user).serverPublicKey, clientIdentity: new TextEncoder().encode(user), serverIdentity: fleetIdentity(fx.opts(user).sessionKey) });

/** Status through the fleet, retried while it has no leader (every answer is a committed view). */
async function statusOf(user: string, at?: string) {
  return fx.waitFor(`status of ${user}`, async () => {
    try { return await status(fx.send(user, at), fx.opts(user)); } catch { return undefined; }
  });
}

async function restartIfDown(): Promise<void> {
  for (const s of await fx.fleet.status()) if (s.role === 'down') await fx.fleet.restart(s.name);
  await fx.waitFor('every replica voting again', async () => (await fx.fleet.status()).every((s) => s.role === 'leader' || s.role === 'follower'));
  await fx.stableLeader();
}

describe('fleet under faults', () => {
  it('leader crash between KE1 and KE2: the attempt is charged exactly once, no KE2 and no K leave', async () => {
    // Followers get and store the Attempt, but their acknowledgements never reach the leader, so it
    // cannot commit; then it dies. Check-quorum may depose it before the KE1 even arrives (the run
    // is then inconclusive and repeated with a new user).
    for (let round = 0; ; round++) {
      const user = `ke1-crash-${round}`;
      const leader = await fx.stableLeader();
      const others = fx.fleet.replicas.filter((r) => r !== leader);
      await enablePassword(fx.send(user, others[0]), fx.opts(user), PW, K, 5);
      const c0 = (await fx.fleet.status()).find((s) => s.name === leader)!.commitIndex;
      for (const f of others) fx.fleet.blockLink(f, leader);
      const op = await createOpaque({ suite: 'ristretto255-SHA512', ksf: identityKsf });
      const start = op.clientStartLogin(new TextEncoder().encode(PW));
      const pending = ask(fx.send(user, leader), user, { t: 'RecoverStart', suite: 'ristretto255-SHA512', ke1: start.ke1 });
      // Until both followers stored the Attempt (or the leader gave up leading).
      let stillLeading = true;
      await fx.waitFor('the Attempt on the followers', async () => {
        const st = await fx.fleet.status();
        stillLeading = st.find((s) => s.name === leader)!.role === 'leader';
        return !stillLeading || st.filter((s) => others.includes(s.name)).every((s) => (s.lastIndex ?? 0) > c0);
      }, 3000);
      await fx.fleet.crash(leader);
      const r = await pending;
      expect('failed' in r || r.t === 'Error').toBe(true);
      expect('failed' in r || r.t !== 'KE2').toBe(true);
      fx.fleet.heal();
      const st = await statusOf(user, others[0]);
      await fx.fleet.restart(leader);
      if (!stillLeading && st.attemptsLeft === 5 && round < 3) { await restartIfDown(); continue; }
      expect(st.attemptsLeft).toBe(4);
      expect(Buffer.from(await recoverK(fx.send(user, others[1]), fx.opts(user), PW)).equals(Buffer.from(K))).toBe(true);
      expect((await statusOf(user, others[1])).attemptsLeft).toBe(5);
      await restartIfDown();
      return;
    }
  });

  it('leader crash between KE2 and KE3: the session dies with it, the attempt stays charged once, no K', async () => {
    const leader = await fx.stableLeader();
    const entry = fx.fleet.replicas.find((r) => r !== leader)!;
    await enablePassword(fx.send('ke2-crash', entry), fx.opts('ke2-crash'), PW, K, 5);
    const op = await createOpaque({ suite: 'ristretto255-SHA512', ksf: identityKsf });
    const start = op.clientStartLogin(new TextEncoder().encode(PW));
    const conv = conversation('ke2-crash');
    const r1 = await conv.first(fx.send('ke2-crash', entry), { t: 'RecoverStart', suite: 'ristretto255-SHA512', ke1: start.ke1 });
    if ('failed' in r1 || r1.t !== 'KE2') throw new Error(`expected KE2, got ${JSON.stringify(r1)}`);
    const fin = op.clientFinishLogin(start.state, r1.ke2, ids('ke2-crash'));
    await fx.fleet.crash(leader);
    // The device keeps trying its KE3 until some leader answers it: never with K. The session (and
    // the OPAQUE server state) died with the leader: the new leader has no such session.
    const r2 = await fx.waitFor('a definitive answer to KE3', async () => {
      const r = await conv.second(fx.send('ke2-crash', entry), { t: 'RecoverFinish', session: r1.session, ke3: fin.ke3 });
      if ('failed' in r) return r.failed === 'NO_SESSION' ? r : undefined;
      if (r.t === 'Error' && r.code !== 'NO_SESSION') return undefined;
      return r;
    });
    expect(r2).toEqual({ failed: 'NO_SESSION' });
    expect((await statusOf('ke2-crash', entry)).attemptsLeft).toBe(4);
    await restartIfDown();
  });

  it('a Hello resent to a new leader is a KE1 it never saw: charged again (so a live history counts every resend as a possible charge)', async () => {
    const user = 'resent-hello';
    const leader = await fx.stableLeader();
    const entry = fx.fleet.replicas.find((r) => r !== leader)!;
    await enablePassword(fx.send(user, entry), fx.opts(user), PW, K, 5);
    const op = await createOpaque({ suite: 'ristretto255-SHA512', ksf: identityKsf });
    const device = new DeviceSession(fastX25519(), user, fx.opts(user).sessionKey, (n) => new Uint8Array(randomBytes(n)));
    const hello = device.hello(encodeDeviceMessage({ t: 'RecoverStart', suite: 'ristretto255-SHA512', ke1: op.clientStartLogin(new TextEncoder().encode(PW)).ke1 }));
    // The Welcome is lost on the way; while the session lives, a copy is answered from memory for free.
    const welcome = await fx.send(user, entry)(hello);
    expect(Buffer.from(await fx.send(user, entry)(hello)).equals(Buffer.from(welcome))).toBe(true);
    expect((await statusOf(user, entry)).attemptsLeft).toBe(4);
    // Then the leader dies, and the device resends the same bytes: the new leader never saw them.
    await fx.fleet.crash(leader);
    const again = await fx.waitFor('a Welcome for the resent Hello', async () => {
      try {
        const b = await fx.send(user, entry)(hello);
        return decodeSessionFrame(b).kind === 'refused' ? undefined : b;
      } catch (e) {
        if (e instanceof RelayFailure) return undefined;
        throw e;
      }
    });
    const r = decodeVaultReply(device.openWelcome(again));
    expect(r.t).toBe('KE2');
    expect(Buffer.from(again).equals(Buffer.from(welcome))).toBe(false);
    expect((await statusOf(user, entry)).attemptsLeft).toBe(3);
    await restartIfDown();
  });

  it('a minority partition: the majority side keeps serving, the cut-off replica does not answer', async () => {
    const leader = await fx.stableLeader();
    const [f1, f2] = fx.fleet.replicas.filter((r) => r !== leader) as [string, string];
    await enablePassword(fx.send('minority', f1), fx.opts('minority'), PW, K, 5);
    // The front enters a request at its region only while that replica reports a live leader: let
    // its view of f2 be that before the cut, so the question below really reaches f2.
    await fx.waitFor('f2 following the leader', async () => (await fx.fleet.status()).find((s) => s.name === f2)?.leader === leader);
    await new Promise((r) => setTimeout(r, 300));
    fx.fleet.partition([[leader, f1], [f2]]);
    try {
      // Asked at once, while f2 still reports the leader (so the front enters there, not elsewhere):
      // its forward is lost in the partition and it answers nothing from replicated state.
      const cut = ask(fx.send('minority', f2), 'minority', { t: 'Status' });
      expect(Buffer.from(await recoverK(fx.send('minority', f1), fx.opts('minority'), PW)).equals(Buffer.from(K))).toBe(true);
      expect(Buffer.from(await recoverK(fx.send('minority', leader), fx.opts('minority'), PW)).equals(Buffer.from(K))).toBe(true);
      expect('failed' in (await cut)).toBe(true);
    } finally {
      fx.fleet.heal();
    }
    await fx.stableLeader();
  });

  it('the leader isolated with a minority stops serving instead of answering; the majority elects and serves', async () => {
    const leader = await fx.stableLeader();
    const others = fx.fleet.replicas.filter((r) => r !== leader);
    await enablePassword(fx.send('majority', others[0]), fx.opts('majority'), PW, K, 5);
    fx.fleet.isolate(leader);
    try {
      const op = await createOpaque({ suite: 'ristretto255-SHA512', ksf: identityKsf });
      const [st, ke] = await Promise.all([
        ask(fx.send('majority', leader), 'majority', { t: 'Status' }),
        ask(fx.send('majority', leader), 'majority', { t: 'RecoverStart', suite: 'ristretto255-SHA512', ke1: op.clientStartLogin(new TextEncoder().encode('guess')).ke1 }),
      ]);
      // No answer from replicated state, and above all no KE2: the attempt could not commit.
      expect('failed' in st || st.t === 'Error').toBe(true);
      expect('failed' in ke || ke.t === 'Error').toBe(true);
      const newLeader = await fx.stableLeader(others);
      expect(newLeader).not.toBe(leader);
      // A device resends what a replica could not place while the new term settles.
      const retrying = fx.deviceOpts('majority');
      expect(Buffer.from(await recoverK(fx.send('majority', others[0]), retrying, PW)).equals(Buffer.from(K))).toBe(true);
    } finally {
      fx.fleet.heal();
    }
    await fx.stableLeader();
    const all = await fx.waitFor('convergence after the heal', async () => {
      const s = await fx.fleet.status();
      return s.every((x) => x.lag === 0 && x.digest === s[0]!.digest) ? s : undefined;
    });
    expect(all.filter((s) => s.role === 'leader')).toHaveLength(1);
  });

  it('a replica restarted on a rolled-back disk re-replicates, and the counter never goes back', async () => {
    const leader = await fx.stableLeader();
    const [victim, other] = fx.fleet.replicas.filter((r) => r !== leader) as [string, string];
    await enablePassword(fx.send('rollback', other), fx.opts('rollback'), PW, K, 5);
    await fx.waitFor('victim applied the registration', async () => (await fx.fleet.status()).find((s) => s.name === victim)!.lag === 0);
    await fx.fleet.snapshotDisk(victim);
    for (let i = 0; i < 2; i++) {
      await expect(recoverK(fx.send('rollback', other), fx.opts('rollback'), 'wrong')).rejects.toMatchObject({ code: 'WRONG_PASSWORD' });
    }
    expect((await statusOf('rollback', other)).attemptsLeft).toBe(3);
    // Disabling a record erases its K, which makes every replica compact its log to a snapshot:
    // the victim will have to install the leader's snapshot.
    await enablePassword(fx.send('throwaway', other), fx.opts('throwaway'), PW, K, 5);
    await disable(fx.send('throwaway', other), fx.opts('throwaway'));
    await fx.waitFor('victim applied the attempts', async () => (await fx.fleet.status()).find((s) => s.name === victim)!.lag === 0);
    await fx.waitFor('victim compacted', async () => Number((await fx.fleet.status()).find((s) => s.name === victim)!.stats?.compactions) > 0);
    await fx.fleet.crash(victim);
    await fx.fleet.restart(victim, { disk: 'rollback' });
    const back = await fx.waitFor('victim caught up and voting', async () => {
      const s = (await fx.fleet.status()).find((x) => x.name === victim)!;
      return s.role === 'follower' && s.lag === 0 ? s : undefined;
    });
    // The token anchor saw the disk end below what it had anchored: re-replicated, not served.
    expect(back.stats?.rereplicated).toBe(true);
    expect(Number(back.stats?.snapshotsInstalled)).toBeGreaterThan(0);
    // Now the victim must carry the fleet: the old leader goes, the victim and `other` elect.
    await fx.fleet.crash(leader);
    const st = await statusOf('rollback', victim);
    expect(st.attemptsLeft).toBe(3);
    await restartIfDown();
    const all = await fx.waitFor('convergence', async () => {
      const s = await fx.fleet.status();
      return s.every((x) => x.lag === 0 && x.digest === s[0]!.digest) ? s : undefined;
    });
    expect(all.every((s) => s.healthy)).toBe(true);
  });

  it('a restarted replica on an intact disk votes at once: cut off from the leader, it and the other follower elect', async () => {
    const leader = await fx.stableLeader();
    const [victim, other] = fx.fleet.replicas.filter((r) => r !== leader) as [string, string];
    await enablePassword(fx.send('intact', other), fx.opts('intact'), PW, K, 5);
    await expect(recoverK(fx.send('intact', other), fx.opts('intact'), 'wrong')).rejects.toMatchObject({ code: 'WRONG_PASSWORD' });
    await fx.waitFor('the victim applied it', async () => (await fx.fleet.status()).find((s) => s.name === victim)!.lag === 0);
    await fx.fleet.crash(victim);
    // The victim comes back unable to reach the leader, then the leader is cut off from both.
    fx.fleet.blockLink(victim, leader);
    fx.fleet.blockLink(leader, victim);
    await fx.fleet.restart(victim);
    fx.fleet.partition([[victim, other], [leader]]);
    try {
      // Its disk is at its anchor: everything it acknowledged is still there, so its vote is safe.
      const next = await fx.stableLeader([victim, other]);
      expect(next).not.toBe(leader);
      const v = (await fx.fleet.status()).find((s) => s.name === victim)!;
      expect(v.stats?.rereplicated).toBe(false);
      expect((await statusOf('intact', other)).attemptsLeft).toBe(4);
    } finally {
      fx.fleet.heal();
    }
    await fx.stableLeader();
  });

  it('concurrent attackers spread over the replicas never get more KE2s than the limit', async () => {
    await fx.stableLeader();
    const limit = 4;
    await enablePassword(fx.send('target'), fx.opts('target'), PW, K, limit);
    const op = await createOpaque({ suite: 'ristretto255-SHA512', ksf: identityKsf });
    let ke2s = 0;
    let released = 0;
    const attacker = async (i: number) => {
      const at = fx.fleet.replicas[i % fx.fleet.replicas.length]!;
      for (let n = 0; n < 3; n++) {
        const start = op.clientStartLogin(new TextEncoder().encode(`guess-${i}-${n}`));
        const conv = conversation('target');
        const r1 = await conv.first(fx.send('target', at), { t: 'RecoverStart', suite: 'ristretto255-SHA512', ke1: start.ke1 });
        if ('failed' in r1 || r1.t !== 'KE2') continue;
        ke2s++;
        const r2 = await conv.second(fx.send('target', at), { t: 'RecoverFinish', session: r1.session, ke3: new Uint8Array(op.sizes.ke3).fill(i) });
        if (!('failed' in r2) && r2.t === 'Released') released++;
      }
    };
    await Promise.all(Array.from({ length: 9 }, (_, i) => attacker(i)));
    expect(ke2s).toBeGreaterThan(0);
    expect(ke2s).toBeLessThanOrEqual(limit);
    expect(released).toBe(0);
    const st = await statusOf('target');
    expect(st.state).toBe('locked');
    await expect(recoverK(fx.send('target'), fx.opts('target'), PW)).rejects.toMatchObject({ code: 'LOCKED' });
  });
});
