// The native ristretto255 backend (native/, the bkv_native addon over the system libsodium):
// byte-identical to noble and libsodium on random inputs (group operations, scalar arithmetic,
// whole registrations and KE2s), the same typed errors on bad input, the default when it loads,
// loadable in several worker threads at once, and a clean fallback with a reason when it cannot load.
// (The RFC 9807 vectors run on it in opaque-vectors.test.ts.)
// It must be built (scripts/setup.sh does it); BKV_NATIVE=off opts out explicitly.
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Worker } from 'node:worker_threads';
import fc from 'fast-check';
import { bytesToNumberLE, numberToBytesLE } from '@noble/curves/utils.js';
import { describe, expect, it } from 'vitest';
import { nativeScalars } from '../../protocol/opaque/group.ts';
import {
  OpaqueError,
  backendStatus,
  identityKsf,
  makeOpaque,
  ready,
  softwareServerSecretsFromSeed,
  type BackendId,
  type Opaque,
  type PrimeGroup,
} from '../../protocol/opaque/index.ts';
import { hex, unhex } from '../fixtures/opaque-helpers.ts';
import { fixedTranscript } from './opaque-native-worker.ts';

await ready();
const optedOut = process.env.BKV_NATIVE === 'off';
const L = 2n ** 252n + 27742317777372353535851937790883648493n;

function outcome(fn: () => Uint8Array | void): string {
  try {
    const r = fn();
    return r ? hex(r) : 'ok';
  } catch (e) {
    if (e instanceof OpaqueError) return `error ${e.code}`;
    throw e;
  }
}

function streamRng(bytes: Uint8Array) {
  let o = 0;
  return (n: number) => {
    if (o + n > bytes.length) throw new Error('test rng exhausted');
    const out = bytes.slice(o, o + n);
    o += n;
    return out;
  };
}

function transcript(op: Opaque, a: { pw: Uint8Array; id: Uint8Array; seed: Uint8Array; ake: Uint8Array; rnd: Uint8Array }): string[] {
  const secrets = softwareServerSecretsFromSeed(op.suite.id, a.seed, a.ake);
  const rng = streamRng(a.rnd);
  const r = op.clientStartRegistration(a.pw, { rng });
  const resp = op.serverRegistrationResponse(secrets, r.request, a.id);
  const fin = op.clientFinishRegistration(r.state, resp, { rng });
  const s = op.clientStartLogin(a.pw, { rng });
  const v = op.serverStartLogin(secrets, fin.record, s.ke1, a.id, { rng });
  const c = op.clientFinishLogin(s.state, v.ke2);
  const done = op.serverFinishLogin(v.state, c.ke3);
  const fake = op.serverStartLogin(secrets, null, s.ke1, a.id, { rng });
  return [r.request, resp, fin.record, s.ke1, v.ke2, c.ke3, c.sessionKey, done.sessionKey, c.exportKey, fake.ke2].map(hex);
}

describe.skipIf(optedOut)('native backend', () => {
  it('loaded, and is the default for ristretto255', () => {
    const st = backendStatus();
    expect(st.native.loaded, st.native.loaded ? '' : st.native.reason).toBe(true);
    expect(st.defaultBackend).toBe('native');
    expect(makeOpaque({ ksf: identityKsf }).backend).toBe('native');
    expect(makeOpaque({ suite: 'P256-SHA256', ksf: identityKsf }).backend).toBe('noble');
    if (st.native.loaded) expect(st.native.sodiumVersion).toMatch(/^1\.0\.\d+/);
  });

  // (describe bodies run even when skipped: build nothing native when opted out)
  const backends: BackendId[] = optedOut ? [] : ['noble', 'libsodium', 'native'];
  const groups = Object.fromEntries(backends.map((b) => [b, makeOpaque({ backend: b, ksf: identityKsf }).oprf.group])) as Record<BackendId, PrimeGroup>;
  const oprfs = Object.fromEntries(backends.map((b) => [b, makeOpaque({ backend: b, ksf: identityKsf }).oprf]));
  const dst = new TextEncoder().encode('bkv-native-test');

  it('group operations are byte-identical to noble and libsodium on random inputs', () => {
    fc.assert(
      fc.property(fc.uint8Array({ minLength: 0, maxLength: 100 }), fc.uint8Array({ minLength: 64, maxLength: 64 }), fc.uint8Array({ minLength: 64, maxLength: 64 }), (msg, w1, w2) => {
        const same = (f: (g: PrimeGroup) => Uint8Array | void): string => {
          const r = backends.map((b) => outcome(() => f(groups[b])));
          expect(r[2], 'native vs noble').toBe(r[0]);
          expect(r[1], 'libsodium vs noble').toBe(r[0]);
          return r[0]!;
        };
        const k1 = unhex(same((g) => g.randomScalar(() => w1)));
        const k2 = unhex(same((g) => g.randomScalar(() => w2)));
        same((g) => g.hashToScalar(msg, dst));
        const e = unhex(same((g) => g.hashToGroup(msg, dst)));
        const e2 = unhex(same((g) => g.scalarMultBase(k2)));
        same((g) => g.scalarMult(k1, e));
        same((g) => g.scalarMult(k1, e2));
        same((g) => g.scalarMultBase(k1));
        same((g) => g.scalarInvert(k1));
        same((g) => g.checkElement(e));
        // (k1^-1 * (k1 * E)) = E: invert and multiply fit together on the native side
        const ne = groups.native;
        expect(hex(ne.scalarMult(ne.scalarInvert(k1), ne.scalarMult(k1, e)))).toBe(hex(e));
        const d = backends.map((b) => hex(oprfs[b]!.deriveKey(msg, dst)));
        expect(d[2]).toBe(d[0]);
      }),
      { numRuns: 60 },
    );
  });

  it('scalar arithmetic matches bigint arithmetic mod L', () => {
    const canon = fc.bigInt({ min: 0n, max: L - 1n }).map((v) => numberToBytesLE(v, 32));
    fc.assert(
      fc.property(canon, canon, fc.uint8Array({ minLength: 64, maxLength: 64 }), (a, b, wide) => {
        const x = bytesToNumberLE(a);
        const y = bytesToNumberLE(b);
        const le = (v: bigint) => hex(numberToBytesLE(((v % L) + L) % L, 32));
        expect(hex(nativeScalars.mul(a, b))).toBe(le(x * y));
        expect(hex(nativeScalars.add(a, b))).toBe(le(x + y));
        expect(hex(nativeScalars.sub(a, b))).toBe(le(x - y));
        expect(hex(nativeScalars.negate(a))).toBe(le(-x));
        expect(hex(nativeScalars.reduce(wide))).toBe(le(bytesToNumberLE(wide)));
        if (x !== 0n) expect(hex(groups.native.scalarInvert(a))).toBe(hex(groups.noble.scalarInvert(a)));
      }),
      { numRuns: 200 },
    );
    expect(outcome(() => nativeScalars.add(numberToBytesLE(L, 32), numberToBytesLE(1n, 32)))).toBe('error BAD_SCALAR');
    expect(outcome(() => nativeScalars.mul(new Uint8Array(31), new Uint8Array(32)))).toBe('error BAD_LENGTH');
  });

  it('whole registrations and KE2s (fixed rng) are byte-identical across the three backends', () => {
    const ops = backends.map((b) => makeOpaque({ backend: b, ksf: identityKsf }));
    fc.assert(
      fc.property(
        fc.record({
          pw: fc.uint8Array({ minLength: 0, maxLength: 64 }),
          id: fc.uint8Array({ minLength: 1, maxLength: 64 }),
          seed: fc.uint8Array({ minLength: 64, maxLength: 64 }),
          ake: fc.uint8Array({ minLength: 32, maxLength: 32 }),
          rnd: fc.uint8Array({ minLength: 512, maxLength: 512 }),
        }),
        (a) => {
          const [n, s, nat] = ops.map((op) => transcript(op, a));
          expect(nat).toEqual(n);
          expect(s).toEqual(n);
        },
      ),
      { numRuns: 15 },
    );
  });

  it('bad elements and scalars get the same typed errors as the other backends', () => {
    const good = groups.noble.scalarMultBase(numberToBytesLE(7n, 32));
    const k = numberToBytesLE(5n, 32);
    const badElements = [
      '00'.repeat(32), // identity
      'ff'.repeat(31) + '7f', // >= p
      'edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f', // = p
      '01' + '00'.repeat(31), // negative field element
      '00'.repeat(31) + '80', // high bit
      hex(good).slice(0, 62) + 'ff', // a valid element with its top byte changed
    ].map(unhex);
    const cases: Array<[string, (g: PrimeGroup) => Uint8Array | void]> = [];
    for (const e of badElements) {
      cases.push([`checkElement ${hex(e)}`, (g) => g.checkElement(e)]);
      cases.push([`scalarMult ${hex(e)}`, (g) => g.scalarMult(k, e)]);
    }
    cases.push(['element 31 bytes', (g) => g.scalarMult(k, good.subarray(0, 31))]);
    cases.push(['element 33 bytes', (g) => g.checkElement(new Uint8Array(33).fill(1))]);
    cases.push(['scalar 31 bytes, base', (g) => g.scalarMultBase(k.subarray(0, 31))]);
    cases.push(['scalar 31 bytes', (g) => g.scalarMult(k.subarray(0, 31), good)]);
    for (const [name, f] of cases) {
      const r = backends.map((b) => outcome(() => f(groups[b])));
      expect(r[0], name).toMatch(/^error /);
      expect(r[2], `${name} native`).toBe(r[0]);
      expect(r[1], `${name} libsodium`).toBe(r[0]);
    }
    // Scalars: native follows noble (libsodium's wasm backend checks fewer of them, e.g. it sees a
    // zero scalar in scalarMult as an identity result, and it looks at the scalar's length before
    // the element).
    const zero = new Uint8Array(32);
    const big = numberToBytesLE(L, 32);
    const scalarCases: Array<[string, (g: PrimeGroup) => Uint8Array | void]> = [
      ['base zero', (g) => g.scalarMultBase(zero)],
      ['base = L', (g) => g.scalarMultBase(big)],
      ['mult zero', (g) => g.scalarMult(zero, good)],
      ['mult = L', (g) => g.scalarMult(big, good)],
      ['mult = L, bad element', (g) => g.scalarMult(big, badElements[1]!)],
      ['mult zero, high-bit element', (g) => g.scalarMult(zero, badElements[4]!)],
      ['scalar 31 bytes, bad element', (g) => g.scalarMult(k.subarray(0, 31), badElements[0]!)],
      ['invert zero', (g) => g.scalarInvert(zero)],
      ['invert all-ones', (g) => g.scalarInvert(new Uint8Array(32).fill(255))],
    ];
    for (const [name, f] of scalarCases) {
      const r = [outcome(() => f(groups.noble)), outcome(() => f(groups.native))];
      expect(r[0], name).toMatch(/^error /);
      expect(r[1], name).toBe(r[0]);
    }
  });

  it('random 32-byte strings: native and noble accept and refuse the same ones', () => {
    const k = numberToBytesLE(123456789n, 32);
    fc.assert(
      fc.property(fc.uint8Array({ minLength: 32, maxLength: 32 }), (e) => {
        expect(outcome(() => groups.native.scalarMult(k, e))).toBe(outcome(() => groups.noble.scalarMult(k, e)));
        expect(outcome(() => groups.native.checkElement(e))).toBe(outcome(() => groups.noble.checkElement(e)));
      }),
      { numRuns: 300 },
    );
  });

  it('loads in two worker threads at once, with the same outputs as noble', async () => {
    const seedHex = 'a1'.repeat(17) + '5c';
    const results = await Promise.all([runWorker({ seedHex, rounds: 150 }), runWorker({ seedHex, rounds: 150 })]);
    const reference = fixedTranscript('noble', seedHex, 150);
    for (const r of results) {
      expect(r.status.native.loaded).toBe(true);
      expect(r.backend).toBe('native');
      expect(r.record).toBe(reference.record);
      expect(r.ke2).toBe(reference.ke2);
    }
    // and still works here, after the workers' instances are gone
    expect(fixedTranscript('native', seedHex, 150).ke2).toBe(reference.ke2);
  });
});

describe('fallback when the addon cannot load', () => {
  it('a missing addon: libsodium is the default and the reason says why', async () => {
    const r = await runWorker({ seedHex: '01', rounds: 1 }, { BKV_NATIVE_ADDON: join(tmpdir(), 'bkv-no-such-dir', 'bkv_native.node') });
    expect(r.status.native.loaded).toBe(false);
    expect(r.status.native.reason).toMatch(/^not built: /);
    expect(r.status.defaultBackend).toBe('libsodium');
    expect(r.backend).toBe('libsodium');
    expect(r.ke2).toBe(fixedTranscript('noble', '01', 1).ke2);
  });

  it('a file that is not an addon: load failed, with the loader message', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'bkv-native-'));
    try {
      const bogus = join(dir, 'bkv_native.node');
      writeFileSync(bogus, 'not an ELF file');
      const r = await runWorker({ seedHex: '02', rounds: 1 }, { BKV_NATIVE_ADDON: bogus });
      expect(r.status.native.loaded).toBe(false);
      expect(r.status.native.reason).toMatch(/^load failed: /);
      expect(r.backend).toBe('libsodium');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('BKV_NATIVE=off, and an explicit native backend then refuses with BAD_CONFIG', async () => {
    const r = await runWorker({ seedHex: '03', rounds: 1, tryNative: true }, { BKV_NATIVE: 'off' });
    expect(r.status.native.reason).toBe('disabled by BKV_NATIVE=off');
    expect(r.backend).toBe('libsodium');
    expect(r.explicitNative).toBe('error BAD_CONFIG');
  });
});

interface WorkerResult {
  status: ReturnType<typeof backendStatus> & { native: { loaded: boolean; reason?: string } };
  backend: BackendId;
  record: string;
  ke2: string;
  explicitNative?: string;
}

function runWorker(data: { seedHex: string; rounds: number; tryNative?: boolean }, env?: Record<string, string>): Promise<WorkerResult> {
  return new Promise((resolve, reject) => {
    const w = new Worker(new URL('../../bin/ts-worker.js', import.meta.url), {
      workerData: { __entry: new URL('./opaque-native-worker.ts', import.meta.url).href, ...data },
      ...(env ? { env: { ...process.env, BKV_NATIVE: '', ...env } } : {}),
    });
    w.once('message', (m: WorkerResult) => {
      resolve(m);
      void w.terminate();
    });
    w.once('error', reject);
    w.once('exit', (code) => reject(new Error(`worker exited with ${code} before answering`)));
  });
}
