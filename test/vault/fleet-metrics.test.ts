// The fleet's /metrics (prom-client text on the operator listener, behind the operator key) and its
// /v1/health, against a real three-replica fleet: a registration, a recovery and guesses to a
// lockout move exactly the counters they should; no user name reaches the text.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { enablePassword, recoverK } from '../../client/password.ts';
import { bearer } from '../../protocol/hop-secret.ts';
import { startFleetFixture, type FleetFixture } from './fleet-fixture.ts';
import { sample } from '../helpers/metrics.ts';

const KEY = 'operator-key-for-the-metrics-test-0123456789';
const SCRAPE = 'metrics-key-for-the-metrics-test-9876543210';
const USER = 'metrics-user-carol';
let fx: FleetFixture;
beforeAll(async () => { fx = await startFleetFixture(3, { operatorKey: KEY, metricsKey: SCRAPE, faultEndpoint: true }); });
afterAll(async () => { await fx?.close(); });

describe('fleet metrics', () => {
  it('counts requests by type and outcome, commits, attempts, a lockout, leader changes and token calls; needs the key; names no user', async () => {
    const leader = await fx.stableLeader();
    const url = `${fx.fleet.operatorUrl}/metrics`;
    expect((await fetch(url)).status).toBe(401);
    const health = await fetch(`${fx.fleet.url}/v1/health`);
    expect(health.status).toBe(200);
    expect(await health.json()).toMatchObject({ healthy: true, leader, serving: 3, replicas: 3, quorum: 2 });

    const k = new Uint8Array(32).fill(9);
    await enablePassword(fx.send(USER), fx.opts(USER), 'right password', k, 3);
    expect(Buffer.from(await recoverK(fx.send(USER), fx.opts(USER), 'right password')).equals(Buffer.from(k))).toBe(true);
    for (let i = 0; i < 3; i++) await recoverK(fx.send(USER), fx.opts(USER), `wrong ${i}`).catch(() => undefined);

    // Followers apply a commit at the leader's next heartbeat: wait until every replica has.
    await fx.waitFor('replicas to converge', async () => {
      const st = await fx.fleet.status();
      return st.every((x) => x.appliedIndex === st[0]!.appliedIndex && x.lag === 0);
    });
    const res = await fetch(url, { headers: { authorization: bearer(KEY) } });
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toMatch(/^text\/plain; version=0\.0\.4/);
    const text = await res.text();
    expect(text).not.toContain(USER);
    expect(text).not.toContain(KEY);
    // Every exchange is a hello then a next: 1 registration + 1 recovery + 3 guesses, two frames each at least.
    expect(sample(text, 'bkv_requests_total', { type: 'hello', outcome: 'ok' })).toBeGreaterThanOrEqual(5);
    expect(sample(text, 'bkv_requests_total', { type: 'next' })).toBeGreaterThanOrEqual(5);
    expect(sample(text, 'bkv_request_duration_seconds_count', { type: 'hello' })).toBe(sample(text, 'bkv_requests_total', { type: 'hello' }));
    // Four attempts charged (the right password, then three wrong ones), applied on every replica; one lockout each.
    for (const r of fx.fleet.replicas) {
      expect(sample(text, 'bkv_attempts_charged_total', { replica: r }), r).toBe(4);
      expect(sample(text, 'bkv_lockouts_total', { replica: r }), r).toBe(1);
    }
    expect(sample(text, 'bkv_commit_duration_seconds_count', { replica: leader })).toBeGreaterThanOrEqual(6);
    expect(sample(text, 'bkv_commit_duration_seconds_sum', { replica: leader })).toBeGreaterThan(0);
    expect(sample(text, 'bkv_leader_changes_total')).toBeGreaterThanOrEqual(1);
    expect(sample(text, 'bkv_token_call_duration_seconds_count', { replica: leader, op: 'seal' })).toBeGreaterThan(0);
    expect(sample(text, 'bkv_token_call_errors_total', { replica: leader, op: 'seal' })).toBe(0);
    expect(text).toContain('# TYPE bkv_snapshot_bytes gauge');

    // The metrics key reads /metrics, and nothing else of the operator listener: no status, no fault.
    expect((await fetch(url, { headers: { authorization: bearer(SCRAPE) } })).status).toBe(200);
    expect((await fetch(`${fx.fleet.operatorUrl}/v1/fleet/status`, { headers: { authorization: bearer(SCRAPE) } })).status).toBe(401);
    expect((await fetch(`${fx.fleet.operatorUrl}/v1/fleet/fault`, { method: 'POST', body: JSON.stringify({ op: 'heal' }), headers: { authorization: bearer(SCRAPE) } })).status).toBe(401);

    // A second scrape adds only what happened since: nothing, here.
    const again = await (await fetch(url, { headers: { authorization: bearer(KEY) } })).text();
    for (const r of fx.fleet.replicas) expect(sample(again, 'bkv_attempts_charged_total', { replica: r })).toBe(4);
    expect(sample(again, 'bkv_commit_duration_seconds_count', { replica: leader })).toBe(sample(text, 'bkv_commit_duration_seconds_count', { replica: leader }));
  });
});
