// Property tests: (1) the noble and libsodium backends give byte-identical results on random
// inputs; (2) random bytes fed to every decoder and every entry point that takes a peer's message
// produce a typed OpaqueError or a result, never a crash or another exception type.
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  OpaqueError,
  identityKsf,
  makeOpaque,
  ready,
  softwareServerSecretsFromSeed,
  type BackendId,
  type Opaque,
  type SuiteId,
} from '../../protocol/opaque/index.ts';
import { hex, unhex } from '../fixtures/opaque-helpers.ts';

// Top-level: describe bodies below build instances while the file is collected.
await ready();

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

describe('noble and libsodium agree byte for byte', () => {
  for (const suite of ['ristretto255-SHA512', 'ristretto255-SHA512-X25519'] as SuiteId[]) {
    it(suite, () => {
      const noble = makeOpaque({ suite, backend: 'noble', ksf: identityKsf });
      const sodium = makeOpaque({ suite, backend: 'libsodium', ksf: identityKsf });
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
            expect(transcript(sodium, a)).toEqual(transcript(noble, a));
          },
        ),
        { numRuns: 15 },
      );
    });
  }

  it('group operations agree on random scalars and elements', () => {
    const n = makeOpaque({ backend: 'noble', ksf: identityKsf }).oprf;
    const s = makeOpaque({ backend: 'libsodium', ksf: identityKsf }).oprf;
    const dst = new TextEncoder().encode('bkv-test');
    fc.assert(
      fc.property(fc.uint8Array({ minLength: 0, maxLength: 100 }), fc.uint8Array({ minLength: 64, maxLength: 64 }), (msg, wide) => {
        const k1 = n.group.randomScalar(() => wide);
        expect(hex(s.group.randomScalar(() => wide))).toBe(hex(k1));
        expect(hex(s.group.hashToScalar(msg, dst))).toBe(hex(n.group.hashToScalar(msg, dst)));
        const e = n.group.hashToGroup(msg, dst);
        expect(hex(s.group.hashToGroup(msg, dst))).toBe(hex(e));
        expect(hex(s.group.scalarMult(k1, e))).toBe(hex(n.group.scalarMult(k1, e)));
        expect(hex(s.group.scalarMultBase(k1))).toBe(hex(n.group.scalarMultBase(k1)));
        expect(hex(s.group.scalarInvert(k1))).toBe(hex(n.group.scalarInvert(k1)));
        expect(hex(s.deriveKey(msg, dst))).toBe(hex(n.deriveKey(msg, dst)));
      }),
      { numRuns: 40 },
    );
  });
});

const configs: Array<{ suite: SuiteId; backend: BackendId }> = [
  { suite: 'ristretto255-SHA512', backend: 'libsodium' },
  { suite: 'ristretto255-SHA512', backend: 'noble' },
  { suite: 'P256-SHA256', backend: 'noble' },
  { suite: 'ristretto255-SHA512-X25519', backend: 'libsodium' },
  { suite: 'ristretto255-SHA512-X25519', backend: 'noble' },
];

/** Runs fn; passes if it returns or throws an OpaqueError with a known code. Anything else fails. */
function typedOrOk(fn: () => unknown): void {
  try {
    fn();
  } catch (e) {
    if (!(e instanceof OpaqueError)) throw new Error(`untyped failure: ${String(e)}`, { cause: e });
    expect(['BAD_LENGTH', 'BAD_ELEMENT', 'BAD_SCALAR', 'AUTH_FAILED']).toContain(e.code);
  }
}

for (const { suite, backend } of configs) {
  describe(`random bytes never crash the ${suite} [${backend}] decoders`, () => {
    const op = makeOpaque({ suite, backend, ksf: identityKsf });
    const secrets = softwareServerSecretsFromSeed(suite, new Uint8Array(64).fill(3), new Uint8Array(32).fill(4));
    const pw = new TextEncoder().encode('pw');
    const id = new TextEncoder().encode('dave');
    const r = op.clientStartRegistration(pw);
    const { record } = op.clientFinishRegistration(r.state, op.serverRegistrationResponse(secrets, r.request, id));
    const login = op.clientStartLogin(pw);
    const serverState = op.serverStartLogin(secrets, record, login.ke1, id).state;
    const sz = op.sizes;

    // Mostly exact-length inputs (the interesting case), some of any length.
    const bytesNear = (len: number) =>
      fc.oneof(fc.uint8Array({ minLength: len, maxLength: len }), fc.uint8Array({ minLength: 0, maxLength: len + 40 }));

    const entries: Array<[string, number, (b: Uint8Array) => unknown]> = [
      ['decodeRegistrationRequest', sz.registrationRequest, (b) => op.decodeRegistrationRequest(b)],
      ['decodeRegistrationResponse', sz.registrationResponse, (b) => op.decodeRegistrationResponse(b)],
      ['decodeRegistrationRecord', sz.registrationRecord, (b) => op.decodeRegistrationRecord(b)],
      ['decodeKE1', sz.ke1, (b) => op.decodeKE1(b)],
      ['decodeKE2', sz.ke2, (b) => op.decodeKE2(b)],
      ['decodeKE3', sz.ke3, (b) => op.decodeKE3(b)],
      ['serverRegistrationResponse', sz.registrationRequest, (b) => op.serverRegistrationResponse(secrets, b, id)],
      ['serverStartLogin(ke1)', sz.ke1, (b) => op.serverStartLogin(secrets, record, b, id)],
      ['serverStartLogin(record)', sz.registrationRecord, (b) => op.serverStartLogin(secrets, b, login.ke1, id)],
      ['serverFinishLogin', sz.ke3, (b) => op.serverFinishLogin(serverState, b)],
      ['clientFinishRegistration', sz.registrationResponse, (b) => op.clientFinishRegistration(r.state, b)],
      ['clientFinishLogin', sz.ke2, (b) => op.clientFinishLogin(login.state, b)],
    ];
    for (const [name, len, fn] of entries) {
      it(name, () => {
        fc.assert(fc.property(bytesNear(len), (b) => typedOrOk(() => fn(b))), { numRuns: backend === 'noble' ? 60 : 150 });
      });
    }

    it('rejects the identity and non-canonical encodings as BAD_ELEMENT', () => {
      const g = op.oprf.group;
      const bad: string[] =
        g.name === 'P256'
          ? [
              '00'.repeat(33),
              '02' + 'ff'.repeat(32), // x >= p
              '04' + '11'.repeat(32), // wrong prefix for a 33-byte encoding
              '02' + '00'.repeat(31) + '01', // x = 1: not on the curve (1 - 3 + b is a non-residue mod p)
            ]
          : [
              '00'.repeat(32), // identity
              'ff'.repeat(31) + '7f', // >= p
              'edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f', // = p
              '01' + '00'.repeat(31), // odd ("negative") field element: non-canonical ristretto
              '00'.repeat(31) + '80', // high bit set
            ];
      for (const h of bad) {
        let code = 'NO_ERROR';
        try {
          g.checkElement(unhex(h));
        } catch (e) {
          code = (e as OpaqueError).code;
        }
        expect(code, h).toBe('BAD_ELEMENT');
      }
      // and a valid element passes
      g.checkElement(g.scalarMultBase(g.randomScalar((n) => new Uint8Array(n).fill(9))));
    });
  });
}
