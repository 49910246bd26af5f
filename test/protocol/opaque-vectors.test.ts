// All nine RFC 9807 test vectors through the real code, on every backend that supports the suite.
import { beforeAll, describe, expect, it } from 'vitest';
import {
  identityKsf,
  makeOpaque,
  ready,
  softwareServerSecrets,
  type BackendId,
  type Opaque,
} from '../../protocol/opaque/index.ts';
import { OPAQUE_VECTORS, type FakeVector, type RealVector } from '../fixtures/opaque-vectors.ts';
import { hex, replayRng, unhex } from '../fixtures/opaque-helpers.ts';

beforeAll(async () => {
  await ready();
});

function backendsFor(suite: string): BackendId[] {
  // native must be built (scripts/setup.sh) unless BKV_NATIVE=off opts out explicitly
  return suite === 'P256-SHA256' ? ['noble'] : process.env.BKV_NATIVE === 'off' ? ['noble', 'libsodium'] : ['noble', 'libsodium', 'native'];
}

function opaqueFor(v: RealVector | FakeVector, backend: BackendId): Opaque {
  return makeOpaque({ suite: v.suite, backend, ksf: identityKsf, context: unhex(v.context) });
}

function ids(i: Record<string, string>) {
  return {
    ...(i.clientIdentity !== undefined ? { clientIdentity: unhex(i.clientIdentity) } : {}),
    ...(i.serverIdentity !== undefined ? { serverIdentity: unhex(i.serverIdentity) } : {}),
  };
}

it('has the nine RFC 9807 vectors', () => {
  expect(OPAQUE_VECTORS.length).toBe(9);
  expect(OPAQUE_VECTORS.filter((v) => v.fake).length).toBe(3);
});

for (const v of OPAQUE_VECTORS) {
  for (const backend of backendsFor(v.suite)) {
    describe(`${v.name} [${backend}]`, () => {
      if (!v.fake) {
        it('registration and login reproduce every output', () => {
          const op = opaqueFor(v, backend);
          const i = v.inputs;
          const secrets = softwareServerSecrets(v.suite, unhex(i.oprfSeed!), unhex(i.serverPrivateKey!));
          expect(hex(secrets.akeKeyPair.publicKey)).toBe(i.serverPublicKey);
          const password = unhex(i.password!);
          const credId = unhex(i.credentialIdentifier!);
          const identities = ids(i);

          const reg = op.clientStartRegistration(password, { blind: unhex(i.blindRegistration!) });
          expect(hex(reg.request)).toBe(v.outputs.registrationRequest);
          const response = op.serverRegistrationResponse(secrets, reg.request, credId);
          expect(hex(response)).toBe(v.outputs.registrationResponse);
          const fin = op.clientFinishRegistration(reg.state, response, { ...identities, rng: replayRng(i.envelopeNonce!) });
          expect(hex(fin.record)).toBe(v.outputs.registrationUpload);
          expect(hex(fin.exportKey)).toBe(v.outputs.exportKey);
          const rec = op.decodeRegistrationRecord(fin.record);
          expect(hex(rec.clientPublicKey)).toBe(v.intermediates.clientPublicKey);
          expect(hex(rec.maskingKey)).toBe(v.intermediates.maskingKey);
          expect(hex(rec.envelope)).toBe(v.intermediates.envelope);

          const oprfKey = op.oprf.deriveKey(
            secrets.oprfExpand(new Uint8Array([...credId, ...new TextEncoder().encode('OprfKey')])),
            new TextEncoder().encode('OPAQUE-DeriveKeyPair'),
          );
          expect(hex(oprfKey)).toBe(v.intermediates.oprfKey);

          const cRng = replayRng(i.clientNonce!, i.clientKeyshareSeed!);
          const start = op.clientStartLogin(password, { blind: unhex(i.blindLogin!), rng: cRng });
          expect(cRng.remaining()).toBe(0);
          expect(hex(start.ke1)).toBe(v.outputs.ke1);
          const sRng = replayRng(i.maskingNonce!, i.serverNonce!, i.serverKeyshareSeed!);
          const server = op.serverStartLogin(secrets, fin.record, start.ke1, credId, { ...identities, rng: sRng });
          expect(sRng.remaining()).toBe(0);
          expect(hex(server.ke2)).toBe(v.outputs.ke2);
          const client = op.clientFinishLogin(start.state, server.ke2, identities);
          expect(hex(client.ke3)).toBe(v.outputs.ke3);
          expect(hex(client.sessionKey)).toBe(v.outputs.sessionKey);
          expect(hex(client.exportKey)).toBe(v.outputs.exportKey);
          expect(hex(client.serverPublicKey)).toBe(i.serverPublicKey);
          expect(hex(op.serverFinishLogin(server.state, client.ke3).sessionKey)).toBe(v.outputs.sessionKey);
        });
      } else {
        it('the fake-record KE2 matches', () => {
          const op = opaqueFor(v, backend);
          const i = v.inputs;
          const secrets = softwareServerSecrets(v.suite, unhex(i.oprfSeed!), unhex(i.serverPrivateKey!));
          expect(hex(secrets.akeKeyPair.publicKey)).toBe(i.serverPublicKey);
          // The fake client key pair of the vector is consistent with this suite's DH group.
          expect(hex(op.dh.publicKey(unhex(i.clientPrivateKey!)))).toBe(i.clientPublicKey);
          // RFC 9807 §6.3.2.2: a fake record is (fake client public key, random masking key, zero envelope).
          const record = unhex(i.clientPublicKey! + i.maskingKey! + '00'.repeat(op.suite.Nenvelope));
          const sRng = replayRng(i.maskingNonce!, i.serverNonce!, i.serverKeyshareSeed!);
          const server = op.serverStartLogin(secrets, record, unhex(i.ke1!), unhex(i.credentialIdentifier!), { ...ids(i), rng: sRng });
          expect(hex(server.ke2)).toBe(v.outputs.ke2);
        });
      }
    });
  }
}
