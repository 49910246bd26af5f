// A state directory where a solo vault (bkv serve) already ran on one replica's token and disk:
// its log is sealed in another domain, so the fleet treats that disk as foreign, re-replicates it
// from the others, and the replica ends up a voting follower with the fleet's state.
import { afterAll, describe, expect, it } from 'vitest';
import { enablePassword, recoverK } from '../../client/password.ts';
import { identityKsf } from '../../protocol/opaque/index.ts';
import { Replica, replicaDbDir } from '../../vault/agent/replica.ts';
import { startFleet, type Fleet } from '../../vault/fleet/fleet.ts';
import { provisionTestFleet, type TestFleet } from '../helpers/fleet.ts';

let tf: TestFleet | undefined;
let fleet: Fleet | undefined;
afterAll(async () => { await fleet?.close(); await tf?.cleanup(); });

describe('fleet on a state a solo vault used', () => {
  it('re-replicates the solo replica and serves', async () => {
    tf = await provisionTestFleet({ replicas: 3 });
    const solo = tf.replicas[0]!;
    const token = tf.openToken(solo.tokenLabel);
    const r = await Replica.open({ replicaId: solo.name, token, dbDir: replicaDbDir(tf.stateDir, solo.name), tickMs: 0 });
    const pinned = r.firmware.serverPublicKey('ristretto255-SHA512');
    const sessionKey = r.firmware.sessionPublicKey();
    const o = { user: 'solo', ksf: identityKsf, serverPublicKey: pinned, sessionKey };
    await enablePassword((b) => r.handle('solo', b), o, 'pw', new Uint8Array(32).fill(3), 5);
    await r.close();
    fleet = await startFleet({ stateDir: tf.stateDir, wan: 'none', electionTimeoutMs: 300 });
    const end = Date.now() + 15_000;
    let st = await fleet.status();
    while (!(st.every((s) => (s.role === 'leader' || s.role === 'follower') && s.lag === 0) && st.some((s) => s.role === 'leader'))) {
      if (Date.now() > end) throw new Error(`fleet did not settle: ${JSON.stringify(st.map((s) => [s.name, s.role, s.reason]))}`);
      await new Promise((res) => setTimeout(res, 50));
      st = await fleet.status();
    }
    expect(st.find((s) => s.name === solo.name)!.stats?.rereplicated).toBe(true);
    const f = fleet;
    const send = async (body: Uint8Array) => {
      const { RELAY_PATH, encodeRelayRequest, decodeRelayReply } = await import('../../protocol/relay.ts');
      const res = await fetch(f.url + RELAY_PATH, { method: 'POST', body: encodeRelayRequest({ user: 'fleetuser', body }), headers: { 'x-bkv-region': solo.name } });
      const rep = decodeRelayReply(new Uint8Array(await res.arrayBuffer()));
      if (!rep.ok) throw new Error(rep.code);
      return rep.body;
    };
    const fo = { user: 'fleetuser', ksf: identityKsf, serverPublicKey: pinned, sessionKey };
    await enablePassword(send, fo, 'pw2', new Uint8Array(32).fill(4), 5);
    expect(Buffer.from(await recoverK(send, fo, 'pw2'))).toEqual(Buffer.alloc(32, 4));
  });
});
