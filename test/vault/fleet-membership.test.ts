// Membership changes on a running threaded fleet (real worker threads, SoftHSM2 tokens, LMDB): a
// spare token from the key ceremony added under load with a follower cut off, a change refused while
// another is in flight, a follower removed, the leader removed (leadership moved first) while
// attackers race a small limit, and a replace with the leader killed in the middle. Attackers count,
// from outside, every KE2 the fleet handed them: never more than the attempts the record charged,
// and the record never charged more than those plus the guesses whose outcome the device never saw.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { randomBytes } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { enablePassword, recoverK, status, type Send } from '../../client/password.ts';
import { createOpaque, identityKsf } from '../../protocol/opaque/index.ts';
import { decodeVaultReply, encodeDeviceMessage, type DeviceMessage, type VaultReply } from '../../protocol/wire.ts';
import { DeviceSession, decodeSessionFrame } from '../../protocol/session.ts';
import { fastX25519 } from '../../protocol/opaque/group.ts';
import { readManifest, statePaths } from '../../softhsm/state.ts';
import { FLEET_MEMBER_PATH, FLEET_STATUS_PATH, type FleetStatusReport } from '../../vault/fleet/fleet-types.ts';
import { replicaDbDir } from '../../vault/agent/replica.ts';
import { RelayFailure, startFleetFixture, type FleetFixture } from './fleet-fixture.ts';

const OPERATOR_KEY = randomBytes(24).toString('hex');
let fx: FleetFixture;
beforeAll(async () => {
  // Three founders (us-east, us-west, eu-west) and two spares made in the same key ceremony.
  fx = await startFleetFixture(3, { policy: { requestTtlMs: 4000, maxLimit: 1000 }, operatorKey: OPERATOR_KEY }, { spares: 2 });
  await fx.stableLeader();
  await enablePassword(fx.send('owner'), fx.deviceOpts('owner'), OWNER_PW, K, 10);
}, 120_000);
afterAll(async () => { await fx?.close(); });

const K = new Uint8Array(32).fill(7);
const PW = 'the attacker never guesses this';
const OWNER_PW = 'owner password';
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** One device-vault session by hand: the test sees exactly which replies were KE2s. */
function conversation(user: string) {
  const s = new DeviceSession(fastX25519(), user, fx.opts(user).sessionKey, (n) => new Uint8Array(randomBytes(n)));
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
    second: (send: Send, m: DeviceMessage) => call(send, s.next(encodeDeviceMessage(m)), (b) => s.openFinal(b)),
  };
}

async function statusOf(user: string) {
  return fx.waitFor(`status of ${user}`, async () => {
    try { return await status(fx.send(user), fx.opts(user)); } catch { return undefined; }
  }, 30_000);
}

/**
 * Load while a change runs: `attackers` devices guessing a fresh user's password (limit `limit`),
 * entering at every member in turn, and the owner recovering with the right password.
 */
async function underLoad(tag: string, limit: number, attackers = 2) {
  const user = `target-${tag}`;
  await enablePassword(fx.send(user), fx.deviceOpts(user), PW, K, limit);
  const op = await createOpaque({ suite: 'ristretto255-SHA512', ksf: identityKsf });
  const c = { ke2s: 0, unknown: 0, released: 0, ownerOk: 0, ownerFailed: 0 };
  let stop = false;
  const attacker = async (i: number) => {
    for (let n = 0; !stop; n++) {
      const members = fx.fleet.replicas;
      const at = members[(i + n) % members.length]!;
      const start = op.clientStartLogin(new TextEncoder().encode(`guess-${tag}-${i}-${n}`));
      const conv = conversation(user);
      const r1 = await conv.first(fx.send(user, at), { t: 'RecoverStart', suite: 'ristretto255-SHA512', ke1: start.ke1 });
      if ('failed' in r1) { c.unknown++; await sleep(50); continue; }
      if (r1.t === 'Locked') break;
      if (r1.t !== 'KE2') { c.unknown++; continue; }
      c.ke2s++;
      const r2 = await conv.second(fx.send(user, at), { t: 'RecoverFinish', session: r1.session, ke3: new Uint8Array(op.sizes.ke3).fill(i) });
      if (!('failed' in r2) && r2.t === 'Released') c.released++;
      await sleep(20);
    }
  };
  const owner = async () => {
    while (!stop) {
      try { await recoverK(fx.send('owner'), fx.deviceOpts('owner'), OWNER_PW); c.ownerOk++; } catch { c.ownerFailed++; }
      await sleep(50);
    }
  };
  const running = [...Array.from({ length: attackers }, (_, i) => attacker(i)), owner()];
  return {
    async finish() {
      stop = true;
      await Promise.all(running);
      const st = await statusOf(user);
      return { ...c, charged: st.limit - st.attemptsLeft, state: st.state, limit };
    },
  };
}

/** The outside count against the record: every KE2 was charged, nothing charged beyond what may have been. */
function expectBudget(r: Awaited<ReturnType<Awaited<ReturnType<typeof underLoad>>['finish']>>): void {
  expect(r.ke2s, JSON.stringify(r)).toBeGreaterThan(0);
  expect(r.ke2s, JSON.stringify(r)).toBeLessThanOrEqual(r.charged);
  expect(r.charged, JSON.stringify(r)).toBeLessThanOrEqual(r.ke2s + r.unknown);
  expect(r.ke2s).toBeLessThanOrEqual(r.limit);
  expect(r.released).toBe(0);
  expect(r.ownerOk, JSON.stringify(r)).toBeGreaterThan(0);
}

async function converged(): Promise<void> {
  await fx.waitFor('every member on one state digest', async () => {
    const st = await fx.fleet.status();
    const up = st.filter((s) => s.role !== 'down');
    return up.length === fx.fleet.replicas.length && up.every((s) => s.digest === up[0]!.digest && s.appliedIndex === up[0]!.appliedIndex && s.healthy);
  }, 30_000);
}

const manifest = () => readManifest(statePaths(fx.tf.stateDir).manifest)!;
const sorted = (a: readonly string[]) => [...a].sort();

async function operator(path: string, body?: unknown): Promise<Response> {
  return fetch(fx.fleet.operatorUrl + path, {
    method: body === undefined ? 'GET' : 'POST',
    headers: { authorization: `Bearer ${OPERATOR_KEY}`, 'content-type': 'application/json', 'x-bkv-actor': 'membership test' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
}

describe('fleet membership', () => {
  it('adds a spare under load with a follower cut off: learner, caught up, promoted; the counters hold', async () => {
    const leader = await fx.stableLeader();
    expect(manifest().standby?.map((r) => [r.name, r.standby])).toEqual([['ap-southeast', 'spare'], ['sa-east', 'spare']]);
    const cut = fx.fleet.replicas.find((n) => n !== leader)!;
    const keysBefore = fx.fleet.akePublicKeys();
    const load = await underLoad('add', 500);
    await sleep(300);
    fx.fleet.isolate(cut);
    const lines: string[] = [];
    const res = await fx.fleet.member({ op: 'add', name: 'ap-southeast' }, 'test', (l) => lines.push(l));
    fx.fleet.heal();
    await sleep(300);
    const r = await load.finish();
    expect(sorted(res.voters)).toEqual(['ap-southeast', 'eu-west', 'us-east', 'us-west']);
    expect(res.learners).toEqual([]);
    expect(lines.some((l) => /as a learner: proposed/.test(l))).toBe(true);
    expect(lines.some((l) => /catching up/.test(l))).toBe(true);
    expect(lines.some((l) => /promoting ap-southeast to voter: proposed/.test(l))).toBe(true);
    expect(lines.join('\n')).not.toMatch(/pin|password/i);
    expectBudget(r);
    // fleet.json follows the committed configuration; the founders stay what entry 1 of every log says.
    const m = manifest();
    expect(m.replicas.map((x) => x.name)).toEqual(['us-east', 'us-west', 'eu-west', 'ap-southeast']);
    expect(m.standby?.map((x) => x.name)).toEqual(['sa-east']);
    expect(m.founders).toEqual(['us-east', 'us-west', 'eu-west']);
    expect(m.replicas.find((x) => x.name === 'ap-southeast')!.identityFingerprint).toMatch(/^[0-9a-f]{32}$/);
    await converged();
    const st = await fx.fleet.status();
    expect(st.find((s) => s.name === 'ap-southeast')).toMatchObject({ member: 'voter', healthy: true });
    // Devices keep their pinned keys: the keys the new replica computed from its own token (the
    // fleet's keys are now its) are the ones devices pinned before (one fleet AKE seed).
    expect(fx.fleet.akePublicKeys()).toEqual(keysBefore);
    const got = await recoverK(fx.send('owner', 'ap-southeast'), fx.deviceOpts('owner'), OWNER_PW);
    expect(Buffer.from(got).equals(Buffer.from(K))).toBe(true);
  }, 120_000);

  it('refuses bad requests and a second change while one is in flight, changing nothing', async () => {
    await fx.stableLeader();
    const before = readFileSync(statePaths(fx.tf.stateDir).manifest, 'utf8');
    await expect(fx.fleet.member({ op: 'add', name: 'eu-central' }, 'test')).rejects.toMatchObject({ code: 'NO_SPARE_TOKEN' });
    await expect(fx.fleet.member({ op: 'add', name: 'us-east' }, 'test')).rejects.toMatchObject({ code: 'ALREADY_MEMBER' });
    await expect(fx.fleet.member({ op: 'remove', name: 'sa-east' }, 'test')).rejects.toMatchObject({ code: 'NOT_MEMBER' });
    let res = await operator(FLEET_MEMBER_PATH, { op: 'replace', old: 'us-east', name: 'us-east' });
    expect(res.status).toBe(400);
    expect(await res.json()).toMatchObject({ code: 'BAD_MEMBER' });
    res = await operator(FLEET_MEMBER_PATH, { op: 'add', name: '../etc' });
    expect(await res.json()).toMatchObject({ code: 'BAD_MEMBER' });
    expect(readFileSync(statePaths(fx.tf.stateDir).manifest, 'utf8')).toBe(before);
    expect(fx.fleet.replicas).toHaveLength(4);

    // The add streams its steps; while it runs, status shows it and another change is refused.
    const adding = operator(FLEET_MEMBER_PATH, { op: 'add', name: 'sa-east' });
    const report = await fx.waitFor('the change in flight in status', async () => {
      const r = (await (await operator(FLEET_STATUS_PATH)).json()) as FleetStatusReport;
      return r.change ? r : undefined;
    });
    expect(report.change).toMatchObject({ op: 'add', replicas: ['sa-east'], by: 'operator key (membership test)' });
    res = await operator(FLEET_MEMBER_PATH, { op: 'remove', name: 'us-west' });
    expect(res.status).toBe(409);
    expect(await res.json()).toMatchObject({ code: 'CHANGE_IN_FLIGHT' });
    await expect(fx.fleet.member({ op: 'remove', name: 'us-west' }, 'test')).rejects.toMatchObject({ code: 'CHANGE_IN_FLIGHT' });
    const stream = (await (await adding).text()).trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
    expect(stream.at(-1)).toMatchObject({ ok: true, op: 'add' });
    expect(sorted(stream.at(-1)!.voters as string[])).toEqual(['ap-southeast', 'eu-west', 'sa-east', 'us-east', 'us-west']);
    expect(stream.slice(0, -1).every((l) => typeof l.progress === 'string')).toBe(true);
    const after = (await (await operator(FLEET_STATUS_PATH)).json()) as FleetStatusReport;
    expect(after.change).toBeNull();
    expect(after.standby).toEqual([]);
    expect(sorted(after.members!.voters)).toEqual(['ap-southeast', 'eu-west', 'sa-east', 'us-east', 'us-west']);
    await converged();
  }, 120_000);

  it('removes a follower under load; its token and disk stay, as standby', async () => {
    const leader = await fx.stableLeader();
    const gone = ['us-west', 'eu-west', 'us-east'].find((n) => n !== leader)!;
    const load = await underLoad('remove', 500);
    await sleep(300);
    const res = await fx.fleet.member({ op: 'remove', name: gone }, 'test');
    const r = await load.finish();
    expect(res.voters).not.toContain(gone);
    expect(res.voters).toHaveLength(4);
    expectBudget(r);
    expect(fx.fleet.replicas).not.toContain(gone);
    expect(manifest().standby).toEqual([expect.objectContaining({ name: gone, standby: 'removed' })]);
    expect(existsSync(join(replicaDbDir(fx.tf.stateDir, gone)))).toBe(true);
    await converged();
  }, 120_000);

  it('removes the leader: the leadership moves first; attackers racing a limit of 4 get at most 4 KE2s', async () => {
    const leader = await fx.stableLeader();
    const load = await underLoad('leader', 4, 6);
    await sleep(200);
    const lines: string[] = [];
    const res = await fx.fleet.member({ op: 'remove', name: leader }, 'test', (l) => lines.push(l));
    expect(lines[0]).toMatch(new RegExp(`^${leader} leads: transferring the leadership to `));
    expect(res.leader).not.toBe(leader);
    expect(res.voters).not.toContain(leader);
    expect(res.voters).toHaveLength(3);
    const r = await load.finish();
    expect(r.ke2s, JSON.stringify(r)).toBeLessThanOrEqual(4);
    expect(r.ke2s).toBeLessThanOrEqual(r.charged);
    expect(r.charged).toBeLessThanOrEqual(Math.min(4, r.ke2s + r.unknown));
    expect(r.released).toBe(0);
    await converged();
  }, 120_000);

  it('replaces a replica (a data center move) with the leader killed mid-change; the counters hold', async () => {
    const leader = await fx.stableLeader();
    const back = manifest().standby!.find((r) => r.standby === 'removed' && r.name !== leader)!.name;
    const old = fx.fleet.replicas.find((n) => n !== leader)!;
    const load = await underLoad('replace', 500);
    let killed = false;
    const lines: string[] = [];
    const res = await fx.fleet.member({ op: 'replace', old, name: back }, 'test', (l) => {
      lines.push(l);
      // The learner is in; kill the leader before the promotion.
      if (!killed && /is a learner; catching up/.test(l)) { killed = true; void fx.fleet.crash(leader); }
    });
    expect(killed).toBe(true);
    expect(res.voters).toContain(back);
    expect(res.voters).not.toContain(old);
    expect(res.voters).toContain(leader);
    expect(res.leader).not.toBe(leader);
    await fx.fleet.restart(leader);
    const r = await load.finish();
    expectBudget(r);
    expect(manifest().replicas.map((x) => x.name)).toContain(back);
    expect(manifest().standby!.map((x) => x.name)).toContain(old);
    await converged();
    const st = await statusOf('owner');
    expect(st.state).toBe('registered');
  }, 180_000);

  it('refuses a removal that would leave the new configuration without a healthy quorum', async () => {
    const leader = await fx.stableLeader();
    const [down, other] = fx.fleet.replicas.filter((n) => n !== leader);
    await fx.fleet.crash(down!);
    const before = readFileSync(statePaths(fx.tf.stateDir).manifest, 'utf8');
    // Voters {leader, down, other}: without `other`, only the leader of {leader, down} is up.
    await expect(fx.fleet.member({ op: 'remove', name: other! }, 'test')).rejects.toMatchObject({ code: 'REMOVE_LOSES_QUORUM' });
    expect(readFileSync(statePaths(fx.tf.stateDir).manifest, 'utf8')).toBe(before);
    expect(fx.fleet.replicas).toContain(other);
    await fx.fleet.restart(down!);
    await converged();
  }, 60_000);
});
