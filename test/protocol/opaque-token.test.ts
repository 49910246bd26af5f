// Device/vault round trips with the vault's secrets in real SoftHSM2 tokens: the OPRF seed used
// only through token HMACs, the fleet AKE key opened from its sealed blob. Two replicas, so a
// record registered through one replica must log in through the other.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FLEET_AKE_AAD, KeyLabels, type Token } from '../../hsm-adapter/token.ts';
import {
  FLEET_AKE_AAD_V1,
  OpaqueError,
  TOKEN_OBJECTS,
  createOpaque,
  identityKsf,
  tokenServerSecrets,
  type Opaque,
  type ServerSecrets,
  type SuiteId,
} from '../../protocol/opaque/index.ts';
import { provisionTestFleet, type TestFleet } from '../helpers/fleet.ts';
import { hex, replayRng } from '../fixtures/opaque-helpers.ts';

let fleet: TestFleet;
let tokenA: Token;
let tokenB: Token;

beforeAll(async () => {
  fleet = await provisionTestFleet({ replicas: 2 });
  tokenA = fleet.openToken(fleet.replicas[0]!.tokenLabel);
  tokenB = fleet.openToken(fleet.replicas[1]!.tokenLabel);
});

afterAll(async () => {
  await fleet?.cleanup();
});

const enc = new TextEncoder();

function expectCode(fn: () => unknown, code: string): void {
  try {
    fn();
  } catch (e) {
    expect(e).toBeInstanceOf(OpaqueError);
    expect((e as OpaqueError).code).toBe(code);
    return;
  }
  throw new Error(`expected OpaqueError ${code}, nothing was thrown`);
}

it('uses the token object labels and seal AAD the provisioning uses', () => {
  expect(TOKEN_OBJECTS.oprfSeed).toBe(KeyLabels.oprfSeed);
  expect(TOKEN_OBJECTS.recordKey).toBe(KeyLabels.recordKey);
  expect(TOKEN_OBJECTS.fleetAkeSealed).toBe(KeyLabels.fleetAkeSealed);
  expect(hex(FLEET_AKE_AAD_V1)).toBe(hex(FLEET_AKE_AAD));
});

const cases: Array<{ suite: SuiteId; backend: 'libsodium' | 'noble' }> = [
  { suite: 'ristretto255-SHA512', backend: 'libsodium' },
  { suite: 'ristretto255-SHA512', backend: 'noble' },
  { suite: 'P256-SHA256', backend: 'noble' },
];

for (const { suite, backend } of cases) {
  describe(`${suite} [${backend}] through SoftHSM2`, () => {
    let op: Opaque;
    let a: ServerSecrets;
    let b: ServerSecrets;
    beforeAll(async () => {
      op = await createOpaque({ suite, backend, ksf: identityKsf });
      a = tokenServerSecrets(tokenA, suite);
      b = tokenServerSecrets(tokenB, suite);
    });

    it('every replica derives the same fleet AKE key and the same OPRF key material', () => {
      expect(hex(a.akeKeyPair.publicKey)).toBe(hex(b.akeKeyPair.publicKey));
      expect(a.akeKeyPair.publicKey.length).toBe(op.suite.Npk);
      const info = enc.encode('alice@example OprfKey');
      const x = a.oprfExpand(info);
      expect(x.length).toBe(op.suite.Nok);
      expect(hex(x)).toBe(hex(b.oprfExpand(info)));
      expect(hex(x)).not.toBe(hex(a.oprfExpand(enc.encode('bob@example OprfKey'))));
      // HKDF-Expand outputs are prefixes of longer ones, also across HMAC blocks done in the token.
      const long = a.oprfExpand(info, 100);
      expect(long.length).toBe(100);
      expect(hex(long.subarray(0, op.suite.Nok))).toBe(hex(x));
      expect(hex(long)).toBe(hex(b.oprfExpand(info, 100)));
    });

    it('registers through one replica and logs in through another', () => {
      const password = enc.encode('correct horse battery staple');
      const credId = enc.encode('alice');
      const reg = op.clientStartRegistration(password);
      const fin = op.clientFinishRegistration(reg.state, op.serverRegistrationResponse(a, reg.request, credId));
      expect(hex(fin.serverPublicKey)).toBe(hex(a.akeKeyPair.publicKey));

      const start = op.clientStartLogin(password);
      const server = op.serverStartLogin(b, fin.record, start.ke1, credId);
      const client = op.clientFinishLogin(start.state, server.ke2, { expectedServerPublicKey: b.akeKeyPair.publicKey });
      const done = op.serverFinishLogin(server.state, client.ke3);
      expect(hex(done.sessionKey)).toBe(hex(client.sessionKey));
      expect(hex(client.exportKey)).toBe(hex(fin.exportKey));

      // A wrong password fails on the device; a forged KE3 fails on the vault.
      const bad = op.clientStartLogin(enc.encode('correct horse battery stapler'));
      const badServer = op.serverStartLogin(a, fin.record, bad.ke1, credId);
      expectCode(() => op.clientFinishLogin(bad.state, badServer.ke2), 'AUTH_FAILED');
      expectCode(() => op.serverFinishLogin(badServer.state, new Uint8Array(op.suite.Nm)), 'AUTH_FAILED');
    });

    it('answers an unknown user with a same-size KE2 that is consistent across replicas and probes', () => {
      const start = op.clientStartLogin(enc.encode('guess'));
      const seeds = '11'.repeat(96);
      const k1 = op.serverStartLogin(a, null, start.ke1, enc.encode('mallory'), { rng: replayRng(seeds) }).ke2;
      const k2 = op.serverStartLogin(b, null, start.ke1, enc.encode('mallory'), { rng: replayRng(seeds) }).ke2;
      const k3 = op.serverStartLogin(a, null, start.ke1, enc.encode('trent'), { rng: replayRng(seeds) }).ke2;
      expect(k1.length).toBe(op.sizes.ke2);
      expect(hex(k1)).toBe(hex(k2));
      expect(hex(k1)).not.toBe(hex(k3));
      expectCode(() => op.clientFinishLogin(start.state, k1), 'AUTH_FAILED');
    });
  });
}
