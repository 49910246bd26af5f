// The process fleet behind the fleet's usual front (vault/fleet/process-fleet.ts, what
// `bkv fleet up --transport tcp` runs): the same `Fleet` interface and HTTP endpoints as the
// threaded runner, but every replica a real OS process over TcpTransport.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { enablePassword, recoverK, status, type PasswordOptions, type Send } from '../../client/password.ts';
import { identityKsf } from '../../protocol/opaque/index.ts';
import { decodeRelayReply, encodeRelayRequest, RELAY_PATH } from '../../protocol/relay.ts';
import { FLEET_FAULT_PATH, FLEET_MEMBER_PATH, REGION_HEADER, type Fleet } from '../../vault/fleet/fleet-types.ts';
import { startProcessFleet } from '../../vault/fleet/process-fleet.ts';
import { provisionTestFleet, type TestFleet } from '../helpers/fleet.ts';
import { waitFor } from './fleet-process-harness.ts';
import { hopSecret } from '../../protocol/hop-secret.ts';

let tf: TestFleet;
let fleet: Fleet;
let relayKey: string;
let operatorKey: string;
beforeAll(async () => {
  tf = await provisionTestFleet({ replicas: 3 });
  relayKey = hopSecret(tf.stateDir, 'relay');
  operatorKey = hopSecret(tf.stateDir, 'operator');
  fleet = await startProcessFleet({ stateDir: tf.stateDir, wan: 'none', electionTimeoutMs: 400, policy: { requestTtlMs: 4000 }, faultEndpoint: true, relayKey, operatorKey });
});
afterAll(async () => {
  await fleet?.close();
  await tf?.cleanup();
});

const send = (user: string, at?: string): Send => async (body) => {
  const res = await fetch(fleet.url + RELAY_PATH, { method: 'POST', body: encodeRelayRequest({ user, body }), headers: { authorization: `Bearer ${relayKey}`, ...(at ? { [REGION_HEADER]: at } : {}) } });
  const reply = decodeRelayReply(new Uint8Array(await res.arrayBuffer()));
  if (!reply.ok) throw new Error(`relay failed: ${reply.code}`);
  return reply.body;
};

const stable = () => waitFor('a stable leader', async () => {
  const st = (await fleet.status()).filter((s) => s.role !== 'down');
  const l = st.filter((s) => s.role === 'leader');
  return l.length === 1 && st.every((s) => s.leader === l[0]!.name && s.term === l[0]!.term) && l[0]!.commitIndex > 1 ? l[0]! : undefined;
}, 30_000);

describe('process fleet (supervisor)', () => {
  it('serves through its front, refuses network faults, and survives crash and restart of the leader', async () => {
    const keys = fleet.akePublicKeys();
    const opts: PasswordOptions = { user: 'bob', ksf: identityKsf, serverPublicKey: new Uint8Array(Buffer.from(keys['ristretto255-SHA512']!, 'hex')), sessionKey: new Uint8Array(Buffer.from(keys.session!, 'hex')) };
    const leader = await stable();
    const k = new Uint8Array(32).fill(9);
    await enablePassword(send('bob'), opts, 'pw', k, 4);
    await expect(recoverK(send('bob'), opts, 'nope')).rejects.toMatchObject({ code: 'WRONG_PASSWORD', attemptsLeft: 3 });

    // Operator routes are not on the relay front, and need the operator key on their own listener.
    const fault = JSON.stringify({ op: 'partition', groups: [[leader.name]] });
    expect((await fetch(fleet.url + FLEET_FAULT_PATH, { method: 'POST', body: fault, headers: { authorization: `Bearer ${relayKey}` } })).status).toBe(404);
    expect((await fetch(fleet.url + FLEET_FAULT_PATH, { method: 'POST', body: fault })).status).toBe(401);
    expect((await fetch(fleet.operatorUrl! + FLEET_FAULT_PATH, { method: 'POST', body: fault })).status).toBe(401);
    expect((await fetch(fleet.operatorUrl! + FLEET_FAULT_PATH, { method: 'POST', body: fault, headers: { authorization: `Bearer ${relayKey}` } })).status).toBe(401);
    // Relaying without the relay key reaches no replica.
    expect((await fetch(fleet.url + RELAY_PATH, { method: 'POST', body: encodeRelayRequest({ user: 'bob', body: new Uint8Array(8) }) })).status).toBe(401);
    const res = await fetch(fleet.operatorUrl! + FLEET_FAULT_PATH, { method: 'POST', body: fault, headers: { authorization: `Bearer ${operatorKey}` } });
    expect(res.status).toBe(400);
    expect(await res.json()).toMatchObject({ code: 'FAULT_UNSUPPORTED' });
    expect(() => fleet.isolate(leader.name)).toThrow(expect.objectContaining({ code: 'FAULT_UNSUPPORTED' }));
    // Membership changes are the threaded fleet's only: refused before anything changes.
    const member = await fetch(fleet.operatorUrl! + FLEET_MEMBER_PATH, { method: 'POST', body: JSON.stringify({ op: 'remove', name: leader.name }), headers: { authorization: `Bearer ${operatorKey}` } });
    expect(member.status).toBe(400);
    expect(await member.json()).toMatchObject({ code: 'MEMBER_UNSUPPORTED' });
    expect((await fleet.status()).find((s) => s.name === leader.name)).toMatchObject({ role: 'leader' });

    await fleet.crash(leader.name);
    expect((await fleet.status()).find((s) => s.name === leader.name)).toMatchObject({ role: 'down', reason: 'CRASHED' });
    const next = await stable();
    expect(next.name).not.toBe(leader.name);
    expect(next.term).toBeGreaterThan(leader.term);
    expect(await status(send('bob'), opts)).toEqual({ state: 'registered', attemptsLeft: 3, limit: 4 });

    await fleet.restart(leader.name);
    await waitFor('the restarted replica to catch up', async () => {
      const st = await fleet.status();
      const b = st.find((s) => s.name === leader.name)!;
      const l = st.find((s) => s.role === 'leader');
      return !!l && b.role === 'follower' && b.lag === 0 && b.digest === l.digest;
    }, 30_000);
    expect(Buffer.from(await recoverK(send('bob', leader.name), opts, 'pw')).equals(Buffer.from(k))).toBe(true);
  });

  it('reaches into a replica process for token and clock faults, with the operator key only', async () => {
    const post = (body: unknown, key = operatorKey) => fetch(fleet.operatorUrl! + FLEET_FAULT_PATH, { method: 'POST', body: JSON.stringify(body), headers: { authorization: `Bearer ${key}` } });
    const leader = await stable();
    // Every token call of the leader fails: it cannot anchor or seal, and the others take over.
    expect((await post({ op: 'token', replica: leader.name, failureRate: 1, latencyRate: 0 })).status).toBe(200);
    const keys = fleet.akePublicKeys();
    const opts: PasswordOptions = { user: 'bob', ksf: identityKsf, serverPublicKey: new Uint8Array(Buffer.from(keys['ristretto255-SHA512']!, 'hex')), sessionKey: new Uint8Array(Buffer.from(keys.session!, 'hex')) };
    // The first request that needs the token finds it failing: the leader stops serving and says why.
    await recoverK(send('bob', leader.name), opts, 'nope').catch(() => undefined);
    const next = await waitFor('another leader', async () => {
      const st = await fleet.status();
      const l = st.find((s) => s.role === 'leader' && s.name !== leader.name && s.term > leader.term);
      const old = st.find((s) => s.name === leader.name)!;
      return l && !old.healthy && /^TOKEN_\w+: .*\(injected\)$/.test(old.reason) ? l : undefined;
    }, 30_000);
    expect((await post({ op: 'token', replica: leader.name, failureRate: 0, latencyRate: 0 })).status).toBe(200);
    await fleet.crash(leader.name);
    await fleet.restart(leader.name);
    // A leader whose clock runs at a tenth of true time sends heartbeats ten times too seldom: the
    // followers time out and elect another.
    const slow = await stable();
    expect((await post({ op: 'clock', replica: slow.name, rate: 0.1, offsetMs: 0 })).status).toBe(200);
    await waitFor('a leader elected past the slow clock', async () => (await fleet.status()).some((s) => s.role === 'leader' && s.name !== slow.name && s.term > slow.term), 30_000);
    expect((await post({ op: 'clock', replica: slow.name, rate: 1, offsetMs: 0 })).status).toBe(200);
    const follower = slow.name;
    // Bad values are refused before anything reaches a replica.
    expect((await post({ op: 'token', replica: follower, failureRate: 2 })).status).toBe(400);
    expect((await post({ op: 'clock', replica: follower, rate: 1, offsetMs: 0 }, relayKey)).status).toBe(401);
    const back = await stable();
    expect(Buffer.from(await recoverK(send('bob', back.name), opts, 'pw')).equals(Buffer.from(new Uint8Array(32).fill(9)))).toBe(true);
  });
});
