// /metrics of the single vault and of ChatD, as processes (vault/main.ts, chatd/main.ts) on a real
// state directory: readable with the metrics key only (not the relay key ChatD holds, not without a
// key), counting the requests a device made through ChatD to the vault, and naming no user, token
// or address.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { bearer, hopSecret } from '../../protocol/hop-secret.ts';
import { startRig, type Rig } from './fixture.ts';
import { sample } from '../helpers/metrics.ts';

let rig: Rig;
beforeAll(async () => { rig = await startRig(); });
afterAll(async () => { await rig?.cleanup(); });

const PHONE = '+15557770042';

describe('/metrics of the vault and ChatD', () => {
  it('count what a device did, need the metrics key, and name no one', async () => {
    const a = await rig.account(PHONE);
    const d = rig.device(a);
    await d.enable('a metrics test password', 3);
    await d.recover('not the password').catch(() => undefined);
    await d.status();
    const key = hopSecret(rig.stateDir, 'metrics');
    const relay = hopSecret(rig.stateDir, 'relay');
    for (const base of [rig.vault.url, rig.chatd.url]) {
      expect((await fetch(`${base}/metrics`)).status, base).toBe(401);
      expect((await fetch(`${base}/metrics`, { headers: { authorization: bearer(relay) } })).status, base).toBe(401);
    }
    const vault = await (await fetch(`${rig.vault.url}/metrics`, { headers: { authorization: bearer(key) } })).text();
    const chatd = await (await fetch(`${rig.chatd.url}/metrics`, { headers: { authorization: bearer(key) } })).text();
    for (const text of [vault, chatd]) {
      expect(text).not.toContain(PHONE);
      expect(text).not.toContain(a.token.slice(5, 20));
      expect(text).not.toContain('127.0.0.1');
    }
    // The vault: hellos and nexts, ok; one attempt charged by the wrong password; token calls timed.
    expect(sample(vault, 'bkv_requests_total', { type: 'hello', outcome: 'ok' })).toBeGreaterThanOrEqual(3);
    expect(sample(vault, 'bkv_requests_total', { type: 'next', outcome: 'ok' })).toBeGreaterThanOrEqual(2);
    expect(sample(vault, 'bkv_attempts_charged_total')).toBe(1);
    expect(sample(vault, 'bkv_lockouts_total')).toBe(0);
    // Its commits: the registration, the charged attempt (each one sealed, flushed and anchored write).
    expect(sample(vault, 'bkv_commit_duration_seconds_count')).toBeGreaterThanOrEqual(2);
    expect(sample(vault, 'bkv_token_call_duration_seconds_count', { op: 'seal' })).toBeGreaterThan(0);
    // ChatD: the same requests, as it relayed them (200s on /v1/vault), and the scrapes it refused (401).
    expect(sample(chatd, 'bkv_chatd_requests_total', { via: 'http', route: '/v1/vault', status: '200', code: '' })).toBe(sample(vault, 'bkv_requests_total'));
    expect(sample(chatd, 'bkv_chatd_requests_total', { route: '/metrics', status: '401', code: 'UNAUTHORIZED' })).toBe(2);
    expect(sample(chatd, 'bkv_chatd_request_duration_seconds_count')).toBeGreaterThan(0);
  });
});
