// Staged faults on the deterministic vault cluster: the leader crashes at each step of a password
// recovery (after KE1 is proposed, after the KE2 left, after the KE3's Outcome is proposed, after K
// was released). Whatever the step, the attempt stays charged unless an Outcome reset committed,
// K leaves only for the right password, the fleet converges, and the owner can recover afterwards.
import { describe, expect, it } from 'vitest';
import { identityKsf } from '../../protocol/opaque/index.ts';
import { enablePassword, recoverK, type PasswordOptions } from '../../client/password.ts';
import { VaultCluster, type FirmwareLike } from '../../vault/sim/vault-cluster.ts';
import type { FirmwareInput, FirmwareOutput } from '../../vault/firmware/firmware.ts';
import type { SessionGate } from '../../vault/firmware/gate.ts';
import { decodeSessionFrame } from '../../protocol/session.ts';
import { SeededRng } from '../../vault/consensus/index.ts';


type Step = 'ke1-proposed' | 'ke2-out' | 'ke3-proposed' | 'released';

/**
 * Watches each replica's session gate from outside (frames only): a request frame it already took is
 * a copy, and the copy's reply must be byte-identical to the one its original got.
 */
function copyWatch() {
  const counts = { requests: 0, copies: 0, copiesAnswered: 0, copiesAnsweredAlike: 0, refused: 0 };
  const hex = (b: Uint8Array) => Buffer.from(b).toString('hex');
  const wrap = (gate: SessionGate): FirmwareLike => {
    const requestOf = new Map<number, { frame: string; copy: boolean }>();
    const seen = new Set<string>();
    const replyTo = new Map<string, string>();
    return {
      step(input: FirmwareInput): FirmwareOutput[] {
        if (input.kind === 'request') {
          const frame = hex(input.body);
          const copy = seen.has(frame);
          seen.add(frame);
          counts.requests++;
          if (copy) counts.copies++;
          requestOf.set(input.requestId, { frame, copy });
        }
        const out = gate.step(input);
        for (const o of out) {
          if (o.kind !== 'reply') continue;
          const q = requestOf.get(o.requestId);
          if (!q) continue;
          requestOf.delete(o.requestId);
          const body = hex(o.body);
          if (decodeSessionFrame(o.body).kind === 'refused') counts.refused++;
          const first = replyTo.get(q.frame);
          if (first === undefined) replyTo.set(q.frame, body);
          else {
            counts.copiesAnswered++;
            if (first === body) counts.copiesAnsweredAlike++;
          }
        }
        return out;
      },
      digest: () => gate.digest(),
      get appliedIndex() { return gate.appliedIndex; },
      inspect: (u: string) => gate.inspect(u),
    };
  };
  return { counts, wrap };
}

async function crashLeaderAt(step: Step, seed: number) {
  const c = await VaultCluster.create({ seed, policy: { requestTtlMs: 2_000 }, deviceTimeoutMs: 3_000 });
  const { serverPublicKey, sessionKey } = c.pins();
  c.knownUsers.add('olga');
  const rng = new SeededRng(seed + 1);
  const bytes = (n: number) => { const b = new Uint8Array(n); for (let i = 0; i < n; i++) b[i] = rng.int(256); return b; };
  const opts: PasswordOptions = { user: 'olga', serverPublicKey, sessionKey, ksf: identityKsf, rng: bytes };
  const k = bytes(32);
  const toLeader = () => c.leader() ?? c.ids[0]!;
  const send = c.deviceSend('phone', 'olga', toLeader, () => ({ correct: true }));
  await c.run(500);
  let done = false;
  void enablePassword(send, opts, 'pw', k, 3).then(() => { done = true; });
  expect(await c.runUntil(() => done, 5_000)).toBe(true);

  // The recovery whose leader dies at `step`.
  let first: string | null = null;
  void recoverK(send, opts, 'pw').then(() => { first = 'released'; }, (e: { code?: string; vaultCode?: string }) => { first = e.vaultCode ?? e.code ?? 'error'; });
  const reached = {
    'ke1-proposed': () => (c.proposed.Attempt ?? 0) >= 1,
    'ke2-out': () => (c.replied.KE2 ?? 0) >= 1,
    'ke3-proposed': () => (c.proposed.Outcome ?? 0) >= 1,
    released: () => (c.replied.Released ?? 0) >= 1,
  }[step];
  expect(await c.runUntil(reached, 5_000)).toBe(true);
  const dead = c.leader()!;
  c.crash(dead);
  await c.runUntil(() => first !== null, 10_000);
  c.restart(dead);
  expect(await c.quiesce()).toBe(true);
  const usedAfterCrash = c.firmware(c.leader()!)!.inspect('olga')!.used;

  // The owner tries again until K comes back (an attempt each time; the limit is 3).
  let recovered: Uint8Array | null = null;
  for (let i = 0; i < 3 && !recovered; i++) {
    let settled = false;
    void recoverK(send, opts, 'pw').then((x) => { recovered = x; }, () => undefined).finally(() => { settled = true; });
    await c.runUntil(() => settled, 10_000);
  }
  expect(await c.quiesce()).toBe(true);
  c.checkConverged();
  return { c, first, usedAfterCrash, recovered: recovered as Uint8Array | null, k, traceHash: c.traceHash() };
}

describe('leader crashes at each step of a recovery', () => {
  it.each([
    ['ke1-proposed', [0, 1]],
    ['ke2-out', [1]],
    ['ke3-proposed', [0, 1]],
    ['released', [0]],
  ] as const)('after %s: attempt charged as expected, no violation, owner recovers', async (step, allowedUsed) => {
    const r = await crashLeaderAt(step, 11);
    if (process.env.BKV_SIM_DEBUG) console.log(step, r.first, r.usedAfterCrash, r.c.proposed, r.c.replied);
    expect(r.c.violations()).toEqual([]);
    // Unknown outcome counts as used: only a committed reset (the Outcome of a right KE3) gives it back.
    expect(allowedUsed).toContain(r.usedAfterCrash);
    if (step === 'released') expect(r.first).toBe('released');
    else expect(r.first).not.toBe('released');
    expect(r.recovered && Buffer.from(r.recovered).equals(Buffer.from(r.k))).toBe(true);
    // The same seed stages the same run.
    const again = await crashLeaderAt(step, 11);
    expect(again.traceHash).toBe(r.traceHash);
  }, 60_000);
});

describe('a network that duplicates every message', () => {
  it('stays within the guess budget and charges each device guess once: copies get the original reply', async () => {
    const watch = copyWatch();
    const c = await VaultCluster.create({ seed: 5, deviceTimeoutMs: 3_000, wrapFirmware: watch.wrap });
    const { serverPublicKey, sessionKey } = c.pins();
    c.knownUsers.add('olga');
    const rng = new SeededRng(6);
    const bytes = (n: number) => { const b = new Uint8Array(n); for (let i = 0; i < n; i++) b[i] = rng.int(256); return b; };
    const opts: PasswordOptions = { user: 'olga', serverPublicKey, sessionKey, ksf: identityKsf, rng: bytes };
    const send = c.deviceSend('phone', 'olga', () => c.leader() ?? c.ids[0]!, () => ({ correct: false }));
    await c.run(500);
    c.net.dupRate = 1;
    let res = '';
    void enablePassword(send, opts, 'pw', bytes(32), 3).then(() => { res = 'registered'; }, (e: { code: string; vaultCode?: string }) => { res = e.vaultCode ?? e.code; });
    expect(await c.runUntil(() => res !== '', 5_000)).toBe(true);
    expect(res).toBe('registered');
    const outcomes: string[] = [];
    for (let i = 0; i < 3; i++) {
      res = '';
      void recoverK(send, opts, `guess ${i}`).then(() => { res = 'released'; }, (e: { code: string; vaultCode?: string }) => { res = e.vaultCode ?? e.code; });
      await c.runUntil(() => res !== '', 10_000);
      await c.run(500);
      outcomes.push(res);
    }
    expect(await c.quiesce()).toBe(true);
    c.checkConverged();
    expect(c.violations()).toEqual([]);
    expect(outcomes).not.toContain('released');
    if (process.env.BKV_SIM_DEBUG) console.log(outcomes, c.proposed, c.replied, c.oracle.counts, c.counts);
    // Every request was delivered twice, yet each guess is one Attempt and one Outcome, and the
    // device learns each outcome (no NO_SESSION from a copy): two wrong, then the third locks.
    expect(c.counts.duplicated).toBeGreaterThan(0);
    expect(c.proposed.Attempt).toBe(3);
    expect(c.proposed.Outcome).toBe(3);
    expect(c.proposed.Register).toBe(1);
    // The copies were answered by the session gate from its memory (the byte-identical Welcome or
    // Final), so the firmware itself answered each request once...
    expect(c.replied.Registered).toBe(1);
    expect(c.replied.KE2).toBe(3);
    // ...and each copy that reached a gate got exactly its original's reply, never a refusal.
    if (process.env.BKV_SIM_DEBUG) console.log(watch.counts);
    expect(watch.counts.copies).toBeGreaterThan(0);
    expect(watch.counts.copiesAnswered).toBeGreaterThan(0);
    expect(watch.counts.copiesAnsweredAlike).toBe(watch.counts.copiesAnswered);
    expect(watch.counts.refused).toBe(0);
    expect(outcomes).toEqual(['WRONG_PASSWORD', 'WRONG_PASSWORD', 'LOCKED']);
    expect(c.firmware(c.leader()!)!.inspect('olga')!.state).toBe('locked');
  }, 60_000);
});

describe('a rolled-back follower and a whole-fleet restart with the holders dark (issue #9)', () => {
  /** Registers, commits three wrong guesses with the leader and one follower only, rolls that follower's disk back, restarts the fleet without the leader. */
  async function attack(unsafeNoAnchor: boolean) {
    const c = await VaultCluster.create({ seed: 23, deviceTimeoutMs: 2_000, policy: { requestTtlMs: 1_500 }, mutation: unsafeNoAnchor ? 'skip-anchor' : undefined });
    const { serverPublicKey, sessionKey } = c.pins();
    c.knownUsers.add('vic');
    const rng = new SeededRng(24);
    const bytes = (n: number) => { const b = new Uint8Array(n); for (let i = 0; i < n; i++) b[i] = rng.int(256); return b; };
    const opts: PasswordOptions = { user: 'vic', serverPublicKey, sessionKey, ksf: identityKsf, rng: bytes };
    await c.run(500);
    const leader = c.leader()!;
    const [helper, bystander] = c.ids.filter((x) => x !== leader) as [string, string];
    let res = '';
    const at = (id: string, correct: boolean) => c.deviceSend(`d${rng.int(1e9)}`, 'vic', () => id, () => ({ correct }));
    void enablePassword(at(leader, true), opts, 'pw', bytes(32), 5).then(() => { res = 'ok'; }, (e: { code: string }) => { res = e.code; });
    await c.runUntil(() => res !== '', 5_000);
    expect(res).toBe('ok');
    await c.run(300);
    c.snapshotDisk(helper);
    c.partition([leader, helper], [bystander]);
    for (let i = 0; i < 3; i++) {
      res = '';
      void recoverK(at(leader, false), opts, `wrong ${i}`).then(() => { res = 'released'; }, (e: { code: string }) => { res = e.code; });
      await c.runUntil(() => res !== '', 5_000);
      expect(res).toBe('WRONG_PASSWORD');
    }
    await c.run(200);
    c.rollbackDisk(helper);
    c.heal();
    c.wholeFleetRestart([helper, bystander]);
    await c.run(2_000);
    const served: string[] = [];
    for (let i = 0; i < 4; i++) {
      res = '';
      void recoverK(at(bystander, false), opts, `again ${i}`).then(() => { res = 'released'; }, (e: { code: string }) => { res = e.code; });
      await c.runUntil(() => res !== '', 6_000);
      served.push(res);
    }
    return { c, helper, served };
  }

  it('with anchored acks: the helper re-replicates instead of voting, nothing is served, the holder brings the true counter back', async () => {
    const { c, helper, served } = await attack(false);
    expect(c.isRejoining(helper)).toBe(true);
    expect(c.leader()).toBeNull();
    expect(served.every((x) => x !== 'WRONG_PASSWORD' && x !== 'released')).toBe(true);
    c.wholeFleetRestart();
    expect(await c.quiesce(30_000)).toBe(true);
    c.checkConverged();
    expect(c.violations()).toEqual([]);
    expect(c.firmware(c.leader()!)!.inspect('vic')!.used).toBe(3);
  }, 60_000);

  it('mutation check: without the anchor the same attack breaks the fleet\'s promises, and the oracle says so', async () => {
    const { c } = await attack(true);
    c.wholeFleetRestart();
    await c.quiesce(30_000);
    if (process.env.BKV_SIM_DEBUG) console.log(c.violations());
    expect(c.violations().length).toBeGreaterThan(0);
  }, 60_000);
});

describe('a majority crashed and restarted one by one (issue #9)', () => {
  it('elects again as soon as a majority is back, with the counter intact', async () => {
    const c = await VaultCluster.create({ seed: 31, onNote: process.env.BKV_SIM_TRACE ? (l) => console.log(l) : undefined, deviceTimeoutMs: 2_000, policy: { requestTtlMs: 1_500 } });
    const { serverPublicKey, sessionKey } = c.pins();
    c.knownUsers.add('maj');
    const rng = new SeededRng(32);
    const bytes = (n: number) => { const b = new Uint8Array(n); for (let i = 0; i < n; i++) b[i] = rng.int(256); return b; };
    const opts: PasswordOptions = { user: 'maj', serverPublicKey, sessionKey, ksf: identityKsf, rng: bytes };
    await c.run(500);
    const at = () => c.deviceSend(`d${rng.int(1e9)}`, 'maj', () => c.leader() ?? c.ids[0]!, () => ({ correct: false }));
    let res = '';
    void enablePassword(at(), opts, 'pw', bytes(32), 5).then(() => { res = 'ok'; }, (e: { code: string }) => { res = e.code; });
    await c.runUntil(() => res !== '', 5_000);
    res = '';
    void recoverK(at(), opts, 'wrong').then(() => { res = 'released'; }, (e: { code: string }) => { res = e.code; });
    await c.runUntil(() => res !== '', 5_000);
    expect(res).toBe('WRONG_PASSWORD');
    await c.run(300);
    const leader = c.leader()!;
    const other = c.ids.find((x) => x !== leader)!;
    c.crash(leader);
    c.crash(other);
    await c.run(1_000);
    expect(c.leader()).toBeNull();
    c.restart(leader);
    // Intact disks vote at once: one back is a majority with the survivor.
    expect(await c.runUntil(() => c.leader() !== null, 3_000)).toBe(true);
    c.restart(other);
    expect(await c.quiesce(20_000)).toBe(true);
    c.checkConverged();
    expect(c.violations()).toEqual([]);
    expect(c.firmware(c.leader()!)!.inspect('maj')!.used).toBe(1);
  }, 60_000);
});

describe('a fork: a second instance of the leader on a copy of its disk and the same token', () => {
  async function forkRun(mutation?: 'ignore-fork') {
    const c = await VaultCluster.create({ seed: 41, deviceTimeoutMs: 2_000, policy: { requestTtlMs: 1_500 }, mutation });
    const { serverPublicKey, sessionKey } = c.pins();
    c.knownUsers.add('fox');
    const rng = new SeededRng(42);
    const bytes = (n: number) => { const b = new Uint8Array(n); for (let i = 0; i < n; i++) b[i] = rng.int(256); return b; };
    const opts: PasswordOptions = { user: 'fox', serverPublicKey, sessionKey, ksf: identityKsf, rng: bytes };
    await c.run(500);
    const at = (correct: boolean) => c.deviceSend(`d${rng.int(1e9)}`, 'fox', () => c.ids[rng.int(c.ids.length)]!, () => ({ correct }));
    let res = '';
    void enablePassword(at(true), opts, 'pw', bytes(32), 5).then(() => { res = 'ok'; }, (e: { code: string }) => { res = e.code; });
    await c.runUntil(() => res !== '', 5_000);
    expect(res).toBe('ok');
    c.fork(c.leader()!);
    // Guesses and elections while both instances run: a partition makes the others campaign.
    for (let i = 0; i < 6; i++) {
      if (i === 2) c.isolate(c.leader() ?? c.ids[0]!);
      if (i === 4) c.heal();
      let done = false;
      void recoverK(at(false), opts, `wrong ${i}`).finally(() => { done = true; }).catch(() => undefined);
      await c.runUntil(() => done, 4_000);
    }
    expect(await c.quiesce(30_000)).toBe(true);
    c.checkConverged();
    return c;
  }

  it('one of the two stops (FORKED) before it promises anything, and every invariant holds', async () => {
    const c = await forkRun();
    expect(c.counts.forks).toBe(1);
    expect(c.counts.forkedStops).toBeGreaterThan(0);
    expect(c.violations()).toEqual([]);
  }, 60_000);
});

describe('a slow token at the leader and clocks that drift', () => {
  // A token that takes 250 ms per anchor write blocks its replica as a slow PKCS#11 call blocks the
  // process: its heartbeats stop, followers campaign, leadership moves. Clocks run 30% slow and 50%
  // fast. The guess budget holds throughout and the fleet converges once healed.
  async function slowRun(slowMs: number) {
    const c = await VaultCluster.create({ seed: 51, deviceTimeoutMs: 4_000, policy: { requestTtlMs: 3_000 } });
    const { serverPublicKey, sessionKey } = c.pins();
    c.knownUsers.add('sal');
    const rng = new SeededRng(52);
    const bytes = (n: number) => { const b = new Uint8Array(n); for (let i = 0; i < n; i++) b[i] = rng.int(256); return b; };
    const opts: PasswordOptions = { user: 'sal', serverPublicKey, sessionKey, ksf: identityKsf, rng: bytes };
    await c.run(500);
    const at = (correct: boolean) => c.deviceSend(`d${rng.int(1e9)}`, 'sal', () => c.leader() ?? c.ids[rng.int(c.ids.length)]!, () => ({ correct }));
    const k = bytes(32);
    let res = '';
    void enablePassword(at(true), opts, 'pw', k, 4).then(() => { res = 'ok'; }, (e: { code: string }) => { res = e.code; });
    await c.runUntil(() => res !== '', 5_000);
    expect(res).toBe('ok');
    const first = c.leader()!;
    c.slowToken(first, slowMs);
    c.clockDrift(c.ids.find((x) => x !== first)!, -0.3);
    c.clockDrift(c.ids.filter((x) => x !== first)[1]!, 0.5);
    const answers: string[] = [];
    for (let i = 0; i < 6; i++) {
      let done = false;
      void recoverK(at(false), opts, `wrong ${i}`).then(() => answers.push('released'), (e: { code?: string; vaultCode?: string }) => answers.push(e.vaultCode ?? e.code ?? 'error')).finally(() => { done = true; });
      await c.runUntil(() => done, 8_000);
    }
    c.heal();
    expect(await c.quiesce(30_000)).toBe(true);
    c.checkConverged();
    return { c, first, answers };
  }

  it('moves leadership off a replica blocked in its token, keeps the budget, converges', async () => {
    const { c, first, answers } = await slowRun(250);
    expect(c.violations()).toEqual([]);
    expect(answers).not.toContain('released');
    // Four attempts at most were ever charged, whatever the slowness did to the outcomes.
    expect(c.firmware(c.leader()!)!.inspect('sal')!.used).toBeLessThanOrEqual(4);
    expect([...c.checker.leaders.values()].some((l) => l !== first)).toBe(true);
  }, 60_000);
});
