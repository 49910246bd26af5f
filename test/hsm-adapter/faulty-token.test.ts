// The seeded fault wrapper around a real SoftHSM2 token.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { provisionTestFleet, type TestFleet } from '../helpers/fleet.ts';
import { KeyLabels } from '../../hsm-adapter/token.ts';
import { FaultyToken, seededRandom, type FaultPlan } from '../../hsm-adapter/faulty-token.ts';
import { TokenError } from '../../hsm-adapter/errors.ts';
import type { Pkcs11Token } from '../../hsm-adapter/pkcs11-token.ts';

let fleet: TestFleet;
let real: Pkcs11Token;
const aad = Buffer.from('aad');
beforeAll(async () => {
  fleet = await provisionTestFleet({ replicas: 1 });
  real = fleet.openToken('us-east');
});
afterAll(async () => {
  await fleet?.cleanup();
});

/** A fixed workload; returns what happened to each call. */
function workload(t: FaultyToken, calls = 200): string[] {
  const out: string[] = [];
  for (let i = 0; i < calls; i++) {
    try {
      switch (i % 4) {
        case 0: {
          const s = t.seal(KeyLabels.recordKey, Buffer.from(`m${i}`), aad);
          out.push(Buffer.from(real.open(KeyLabels.recordKey, s, aad)).toString());
          break;
        }
        case 1:
          out.push(Buffer.from(t.hmac(KeyLabels.oprfSeed, 'sha256', Buffer.from(`m${i}`))).toString('hex').slice(0, 8));
          break;
        case 2:
          out.push(String(t.random(8).length));
          break;
        default:
          out.push(String(t.sign(KeyLabels.replicaIdentity, Buffer.from(`m${i}`)).length));
      }
    } catch (e) {
      expect(e).toBeInstanceOf(TokenError);
      out.push(`${(e as TokenError).code}/${(e as TokenError).ckr}`);
    }
  }
  return out;
}

const plan = (seed: number, extra: Partial<FaultPlan> = {}): FaultPlan => ({ seed, failureRate: 0.2, stickyRemoval: false, ...extra });

describe('FaultyToken', () => {
  it('is deterministic per seed and differs across seeds', () => {
    const a = new FaultyToken(real, plan(42));
    const b = new FaultyToken(real, plan(42));
    const c = new FaultyToken(real, plan(43));
    const ra = workload(a);
    expect(workload(b)).toEqual(ra);
    expect(b.events).toEqual(a.events);
    expect(c.events).not.toEqual(a.events);
    // Roughly the asked rate, all three faults drawn, and each fault a typed TokenError with its CKR.
    expect(a.events.length).toBeGreaterThan(20);
    expect(a.events.length).toBeLessThan(70);
    expect(new Set(a.events.map((e) => e.fault))).toEqual(new Set(['CKR_DEVICE_ERROR', 'CKR_SESSION_HANDLE_INVALID', 'CKR_TOKEN_NOT_PRESENT']));
    expect(ra).toContain('TOKEN_DEVICE_ERROR/CKR_DEVICE_ERROR');
    expect(ra).toContain('TOKEN_SESSION_LOST/CKR_SESSION_HANDLE_INVALID');
    expect(ra).toContain('TOKEN_NOT_PRESENT/CKR_TOKEN_NOT_PRESENT');
    // Calls that were not failed did the real work.
    ra.forEach((x, i) => {
      if (i % 4 === 0 && !x.includes('/')) expect(x).toBe(`m${i}`);
    });
    expect(ra.filter((x) => /^m\d+$/.test(x)).length).toBeGreaterThan(30);
  });

  it('fails exactly the calls it is told to, on the ops it is told to', () => {
    const t = new FaultyToken(real, { seed: 1, failCalls: [{ call: 1, fault: 'CKR_DEVICE_ERROR' }, { call: 3, fault: 'CKR_SESSION_HANDLE_INVALID' }] });
    const r = workload(t, 6);
    expect(r[1]).toBe('TOKEN_DEVICE_ERROR/CKR_DEVICE_ERROR');
    expect(r[3]).toBe('TOKEN_SESSION_LOST/CKR_SESSION_HANDLE_INVALID');
    expect([r[0], r[2], r[4], r[5]].every((x) => !x.includes('/'))).toBe(true);

    const onlyHmac = new FaultyToken(real, { seed: 9, failureRate: 1, ops: ['hmac'] });
    const r2 = workload(onlyHmac, 8);
    r2.forEach((x, i) => expect(x.includes('/')).toBe(i % 4 === 1));
  });

  it('a removed token stays removed until reinserted', () => {
    const t = new FaultyToken(real, { seed: 5, failCalls: [{ call: 0, fault: 'CKR_TOKEN_NOT_PRESENT' }] });
    expect(() => t.random(4)).toThrow(/CKR_TOKEN_NOT_PRESENT/);
    expect(() => t.hmac(KeyLabels.oprfSeed, 'sha256', aad)).toThrow(/CKR_TOKEN_NOT_PRESENT/);
    t.reinsert();
    expect(t.random(4).length).toBe(4);
  });

  it('adds latency on the seeded schedule through the given sleep', () => {
    const slept: number[] = [];
    const mk = () => new FaultyToken(real, { seed: 7, latencyRate: 0.5, latencyMs: [5, 50], sleep: (ms) => slept.push(ms) });
    workload(mk(), 40);
    const first = [...slept];
    slept.length = 0;
    workload(mk(), 40);
    expect(slept).toEqual(first);
    expect(first.length).toBeGreaterThan(5);
    expect(first.every((ms) => ms >= 5 && ms < 50)).toBe(true);
  });

  it('blocks for real with the default sleep', () => {
    const t = new FaultyToken(real, { seed: 3, latencyRate: 1, latencyMs: [30, 31] });
    const t0 = performance.now();
    t.random(1);
    expect(performance.now() - t0).toBeGreaterThanOrEqual(29);
  });

  it('rejects rates outside [0, 1]', () => {
    expect(() => new FaultyToken(real, { seed: 1, failureRate: 1.5 })).toThrow(TokenError);
  });

  it('the PRNG is a pure function of the seed', () => {
    const a = seededRandom(123);
    const b = seededRandom(123);
    const xs = Array.from({ length: 5 }, a);
    expect(Array.from({ length: 5 }, b)).toEqual(xs);
    expect(xs.every((x) => x >= 0 && x < 1)).toBe(true);
    expect(new Set(xs).size).toBe(5);
  });
});
