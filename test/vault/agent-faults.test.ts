// Host and token failures while a request is in flight: the replica fails closed (no KE2, no K),
// reports itself unhealthy, and the disk it leaves behind restarts into a consistent counter.
// The fakes here wrap the real LMDB store and the real token, only to inject the failure.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { enablePassword, recoverK, status } from '../../client/password.ts';
import { TokenError } from '../../hsm-adapter/errors.ts';
import type { Token } from '../../hsm-adapter/token.ts';
import { SoloLog } from '../../vault/agent/log.ts';
import type { LogStore } from '../../vault/agent/store.ts';
import { sessionTap, vaultFixture, type VaultFixture } from './agent-fixture.ts';

let fx: VaultFixture;
beforeAll(async () => {
  fx = await vaultFixture();
});
afterAll(async () => {
  await fx?.cleanup();
});

/** The real token, except writeData fails while `broken` is set. */
function flakyAnchor(real: Token): { token: Token; set(b: boolean): void } {
  let broken = false;
  const token = Object.create(real) as Token;
  token.writeData = (label, value) => {
    if (broken) throw new TokenError('TOKEN_DEVICE_ERROR', 'injected CKR_DEVICE_ERROR', { operation: 'writeData', tokenLabel: real.label });
    real.writeData(label, value);
  };
  return { token, set: (b) => (broken = b) };
}

describe('faults under a request', () => {
  it('a failed disk write releases no KE2 and stops the replica', async () => {
    let r = await fx.open();
    await enablePassword(fx.sendVia(r, 'kim'), fx.client('kim'), 'pw', new Uint8Array(32).fill(1), 5);
    await r.close();
    let failWrites = true;
    r = await fx.open({
      makeLog: (store, sealed) => {
        const wrapped = Object.create(store) as LogStore;
        wrapped.append = async (batch) => {
          if (failWrites) throw new Error('EIO: injected write failure');
          return store.append(batch);
        };
        return new SoloLog(wrapped, sealed);
      },
    });
    // The tap reads what the firmware said inside the session: an error, never a KE2.
    const tap = sessionTap(fx.vaultSessionKey);
    const err = await recoverK(tap.wrap(fx.sendVia(r, 'kim'), 'kim'), { ...fx.client('kim'), rng: tap.rng }, 'pw').catch((e) => e);
    expect(tap.seen.map((t) => t.kind)).toEqual(['welcome']);
    expect(tap.replies()).toEqual([{ t: 'Error', code: 'UNHEALTHY' }]);
    expect(err).toMatchObject({ code: 'VAULT_ERROR', vaultCode: 'UNHEALTHY' });
    expect(r.health).toMatchObject({ healthy: false, code: 'STORE_WRITE_FAILED' });
    await expect(status(fx.sendVia(r, 'kim'), fx.client('kim'))).rejects.toMatchObject({ code: 'STORE_WRITE_FAILED' });
    failWrites = false;
    await r.close();
    r = await fx.open();
    expect(await status(fx.sendVia(r, 'kim'), fx.client('kim'))).toMatchObject({ attemptsLeft: 5 });
    await r.close();
  });

  it('a failed anchor write releases no KE2; after restart the durable attempt stays charged', async () => {
    const flaky = flakyAnchor(fx.token);
    let r = await fx.open({ token: flaky.token });
    flaky.set(true);
    const tap = sessionTap(fx.vaultSessionKey);
    await recoverK(tap.wrap(fx.sendVia(r, 'kim'), 'kim'), { ...fx.client('kim'), rng: tap.rng }, 'pw').catch(() => undefined);
    expect(tap.seen.map((t) => t.kind)).toEqual(['welcome']);
    expect(tap.replies().map((m) => m.t)).toEqual(['Error']);
    expect(r.health).toMatchObject({ healthy: false, code: 'TOKEN_DEVICE_ERROR' });
    flaky.set(false);
    await r.close();
    r = await fx.open();
    // The Attempt reached the disk but not the anchor: it is adopted (counted), never un-counted.
    expect(await status(fx.sendVia(r, 'kim'), fx.client('kim'))).toMatchObject({ attemptsLeft: 4 });
    expect(r.health.healthy).toBe(true);
    await r.close();
  });
});
