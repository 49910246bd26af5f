// Every RecoverFinish reply waits for exactly one commit, whatever the outcome, so a network observer
// (ChatD) cannot tell a right password from a wrong one by latency; replies and entries keep one size,
// and so do the session frames ChatD actually relays.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { enablePassword, recoverK, type Send } from '../../client/password.ts';
import type { Token } from '../../hsm-adapter/token.ts';
import { createOpaque, identityKsf, tokenServerSecrets, type Opaque } from '../../protocol/opaque/index.ts';
import { fastX25519 } from '../../protocol/opaque/group.ts';
import { tokenSessionKey } from '../../protocol/opaque/secrets.ts';
import { FRAME_BYTES, decodeSessionFrame, fleetIdentity } from '../../protocol/session.ts';
import { FINISH_REPLY_SIZE, decodeVaultReply, encodeDeviceMessage, type VaultReply, type WireSuite } from '../../protocol/wire.ts';
import { Firmware, type Policy } from '../../vault/firmware/firmware.ts';
import { decodeEntry } from '../../vault/firmware/entries.ts';
import { provisionTestFleet, type TestFleet } from '../helpers/fleet.ts';
import { Harness, seededRng } from './firmware-harness.ts';

const SUITE: WireSuite = 'ristretto255-SHA512';
let fleet: TestFleet;
let token: Token;
let opaque: Partial<Record<WireSuite, Opaque>>;
let device: Opaque;
/** The vault's session key devices pin. */
let sessionKey: Uint8Array;

beforeAll(async () => {
  fleet = await provisionTestFleet({ replicas: 1 });
  token = fleet.openToken(fleet.replicas[0]!.tokenLabel);
  opaque = { [SUITE]: await createOpaque({ suite: SUITE }) };
  device = await createOpaque({ suite: SUITE, ksf: identityKsf });
  sessionKey = tokenSessionKey(token, fastX25519()).publicKey;
});
afterAll(async () => {
  await fleet?.cleanup();
});

const firmware = (seed: string, policy: Partial<Policy> = {}) =>
  new Firmware({ replicaId: 'r0', token, opaque, rng: seededRng(seed), policy: { minLimit: 3, defaultLimit: 5, ...policy } });
const client = (user: string, seed: string) => ({
  user,
  suite: SUITE,
  ksf: identityKsf,
  serverPublicKey: tokenServerSecrets(token, SUITE).akeKeyPair.publicKey,
  sessionKey,
  rng: seededRng(seed),
});
/** RFC 9807 identities a device binds against a gate-wrapped firmware (as client/password.ts does). */
const ids = (user: string) => ({ clientIdentity: new TextEncoder().encode(user), serverIdentity: fleetIdentity(sessionKey) });

/** A recovery session up to KE2 (commits flow); returns what the device needs for its KE3. */
async function session(h: Harness, user: string, password: string) {
  const start = device.clientStartLogin(new TextEncoder().encode(password));
  const ke2 = decodeVaultReply(await h.send(user)(encodeDeviceMessage({ t: 'RecoverStart', ke1: start.ke1 })));
  if (ke2.t !== 'KE2') throw new Error(`expected KE2, got ${ke2.t}`);
  let ke3: Uint8Array;
  try {
    ke3 = device.clientFinishLogin(start.state, ke2.ke2, ids(user)).ke3;
  } catch {
    ke3 = seededRng(`${user}-${password}`)(device.sizes.ke3); // as the device does after a failed envelope check
  }
  return { session: ke2.session, ke3 };
}

interface Cost {
  /** Outputs of the request step itself: a reply here would leave before any commit. */
  immediate: string[];
  /** Entries committed before the reply appeared. */
  commits: number;
  /** Proposals left over once the reply is out (a second round trip would show here). */
  leftover: number;
  entrySize: number;
  entryType: string;
  replySize: number;
  reply: VaultReply;
}

/** Sends one RecoverFinish with commits held back, then commits one entry at a time until the reply appears. */
function finishCost(h: Harness, user: string, s: { session: Uint8Array; ke3: Uint8Array }): Cost {
  h.autoCommit = false;
  const requestId = h.nextRequest++;
  const out = h.step({ kind: 'request', requestId, user, body: encodeDeviceMessage({ t: 'RecoverFinish', session: s.session, ke3: s.ke3 }) });
  const first = h.proposed[0];
  let commits = 0;
  while (!h.replies.has(requestId) && h.proposed.length > 0) {
    const p = h.proposed.shift()!;
    h.step({ kind: 'committed', index: ++h.index, entry: p.entry });
    commits++;
  }
  const leftover = h.proposed.length;
  h.autoCommit = true;
  h.commitAll();
  const body = h.replies.get(requestId);
  if (!body) throw new Error('no reply');
  return {
    immediate: out.map((o) => o.kind),
    commits,
    leftover,
    entrySize: first?.entry.length ?? 0,
    entryType: first ? decodeEntry(first.entry).t : 'none',
    replySize: body.length,
    reply: decodeVaultReply(body),
  };
}

describe('RecoverFinish costs one commit whatever the outcome', () => {
  it('correct / wrong / wrong at the limit / unknown user / locked / record gone: same commits, same sizes', async () => {
    const h = new Harness(firmware('timing'));
    h.step({ kind: 'tick', now: 5_000 });
    // user names of one length, so entry sizes are comparable across paths
    for (const u of ['u1', 'u2', 'u3', 'u5']) await enablePassword(h.send(u), client(u, `c-${u}`), 'right', new Uint8Array(32).fill(1), 3);

    const costs: Record<string, Cost> = {};
    costs.correct = finishCost(h, 'u1', await session(h, 'u1', 'right'));
    costs.wrong = finishCost(h, 'u2', await session(h, 'u2', 'wrong'));
    costs.unknownUser = finishCost(h, 'u4', await session(h, 'u4', 'anything'));

    // u3: three sessions use the whole budget; a wrong KE3 on the last locks, the first then finds it locked
    const s1 = await session(h, 'u3', 'right');
    await session(h, 'u3', 'x');
    const s3 = await session(h, 'u3', 'wrong');
    expect(h.fw.inspect('u3')).toMatchObject({ used: 3, hasK: true });
    costs.wrongAtLimit = finishCost(h, 'u3', s3);
    expect(h.fw.inspect('u3')).toMatchObject({ state: 'locked', hasK: false });
    costs.locked = finishCost(h, 'u3', s1); // the right password, too late

    // u5: disabled while its recovery is open
    const s5 = await session(h, 'u5', 'right');
    await h.send('u5')(encodeDeviceMessage({ t: 'Disable' }));
    costs.recordGone = finishCost(h, 'u5', s5);

    expect(costs.correct.reply.t).toBe('Released');
    expect(costs.wrong.reply).toEqual({ t: 'WrongPassword', attemptsLeft: 2 });
    expect(costs.unknownUser.reply).toEqual({ t: 'WrongPassword', attemptsLeft: 0 });
    expect(costs.wrongAtLimit.reply).toEqual({ t: 'Locked' });
    expect(costs.locked.reply).toEqual({ t: 'Locked' });
    expect(costs.recordGone.reply).toEqual({ t: 'WrongPassword', attemptsLeft: 0 });

    for (const [path, c] of Object.entries(costs)) {
      expect({ path, immediate: c.immediate, commits: c.commits, leftover: c.leftover, entryType: c.entryType }).toEqual({
        path,
        immediate: ['propose'],
        commits: 1,
        leftover: 0,
        entryType: 'Outcome',
      });
      expect(c.replySize, path).toBe(FINISH_REPLY_SIZE);
      expect(c.entrySize, path).toBe(costs.correct.entrySize);
    }
  });

  it('without reset-on-success a correct KE3 still waits for one (no-op) commit and leaves the counter alone', async () => {
    const h = new Harness(firmware('timing-noreset', { resetOnSuccess: false }));
    await enablePassword(h.send('u1'), client('u1', 'n1'), 'right', new Uint8Array(32).fill(2), 4);
    await h.send('u1')(encodeDeviceMessage({ t: 'RecoverStart', ke1: device.clientStartLogin(new TextEncoder().encode('x')).ke1 }));
    const right = finishCost(h, 'u1', await session(h, 'u1', 'right'));
    const wrong = finishCost(h, 'u1', await session(h, 'u1', 'wrong'));
    expect(right.reply.t).toBe('Released');
    expect(wrong.reply).toEqual({ t: 'WrongPassword', attemptsLeft: 1 });
    for (const c of [right, wrong]) expect([c.immediate, c.commits, c.leftover, c.entrySize]).toEqual([['propose'], 1, 0, right.entrySize]);
    expect(h.fw.inspect('u1')?.used).toBe(3); // 1 stray + 2 sessions, no reset
  });

  it('a non-leader answers NOT_LEADER and proposes nothing; the session is spent', async () => {
    const h = new Harness(firmware('timing-follower'));
    await enablePassword(h.send('u1'), client('u1', 'f1'), 'right', new Uint8Array(32).fill(3));
    const s = await session(h, 'u1', 'right');
    h.step({ kind: 'leadership', leader: false });
    const c = finishCost(h, 'u1', s);
    expect(c).toMatchObject({ immediate: ['reply'], commits: 0, reply: { t: 'Error', code: 'NOT_LEADER' } });
    h.step({ kind: 'leadership', leader: true });
    expect(finishCost(h, 'u1', s).reply).toEqual({ t: 'Error', code: 'NO_SESSION' });
  });

  it('through the gate: every Final ChatD relays has one size and waits for one commit, whatever the outcome', async () => {
    const h = new Harness(firmware('timing-gate'));
    for (const u of ['g1', 'g2', 'g3']) await enablePassword(h.send(u), client(u, `cg-${u}`), 'right', new Uint8Array(32).fill(4), 3);
    /** One device's frames with commits held back; per frame: what left at once, commits until the reply, its kind and size. */
    const watched = (user: string, seen: Array<[string, string[], number, number]>): Send => async (body) => {
      const { reply, immediate, commits } = h.held(user, body);
      seen.push([decodeSessionFrame(reply).kind, immediate, commits, reply.length]);
      return reply;
    };
    const outcome = async (user: string, password: string, seed: string) => {
      const seen: Array<[string, string[], number, number]> = [];
      const result = await recoverK(watched(user, seen), client(user, seed), password).then(
        () => 'released',
        (e: { code: string }) => e.code,
      );
      return { result, seen };
    };
    const runs = {
      correct: await outcome('g1', 'right', 'o1'),
      wrong: await outcome('g2', 'wrong', 'o2'),
      unknownUser: await outcome('g9', 'anything', 'o3'),
      wrongAtLimit: await (async () => {
        await outcome('g3', 'wrong', 'o4');
        await outcome('g3', 'wrong', 'o5');
        return outcome('g3', 'wrong', 'o6');
      })(),
    };
    expect(Object.fromEntries(Object.entries(runs).map(([k, r]) => [k, r.result]))).toEqual({
      correct: 'released',
      wrong: 'WRONG_PASSWORD',
      unknownUser: 'WRONG_PASSWORD',
      wrongAtLimit: 'LOCKED',
    });
    for (const [path, r] of Object.entries(runs)) {
      expect({ path, seen: r.seen }).toEqual({
        path,
        seen: [
          ['welcome', ['propose'], 1, FRAME_BYTES.welcome],
          ['final', ['propose'], 1, FRAME_BYTES.final],
        ],
      });
    }
    expect(h.fw.inspect('g3')).toMatchObject({ state: 'locked', hasK: false });
  });
});
