// Worker entry for opaque-native.test.ts: loads OPAQUE (and with it the native addon) in a worker
// thread, runs a registration and KE2s from fixed bytes, and posts the outputs and the backend
// status back. The test imports `fixedTranscript` to compute the same thing on other backends.
import { isMainThread, parentPort, workerData } from 'node:worker_threads';
import {
  backendStatus,
  identityKsf,
  makeOpaque,
  OpaqueError,
  ready,
  softwareServerSecretsFromSeed,
  type BackendId,
} from '../../protocol/opaque/index.ts';

export function fixedTranscript(backend: BackendId | undefined, seedHex: string, rounds: number): { backend: BackendId; record: string; ke2: string } {
  const op = makeOpaque({ ksf: identityKsf, ...(backend ? { backend } : {}) });
  const seed = Buffer.from(seedHex, 'hex');
  let o = 0;
  const rng = (n: number): Uint8Array => {
    const out = new Uint8Array(n);
    for (let i = 0; i < n; i++) out[i] = seed[(o + i) % seed.length]! ^ (o + i);
    o += n;
    return out;
  };
  const secrets = softwareServerSecretsFromSeed(op.suite.id, new Uint8Array(64).fill(5), new Uint8Array(32).fill(6));
  const pw = new TextEncoder().encode('worker pw');
  const id = new TextEncoder().encode('worker user');
  const reg = op.clientStartRegistration(pw, { rng });
  const fin = op.clientFinishRegistration(reg.state, op.serverRegistrationResponse(secrets, reg.request, id), { rng });
  const start = op.clientStartLogin(pw, { rng });
  // Several rounds so that two workers overlap inside the addon.
  let ke2: Uint8Array = new Uint8Array(0);
  for (let i = 0; i < rounds; i++) ke2 = op.serverStartLogin(secrets, fin.record, start.ke1, id, { rng: () => new Uint8Array(96).fill(i & 0xff) }).ke2;
  return { backend: op.backend, record: Buffer.from(fin.record).toString('hex'), ke2: Buffer.from(ke2).toString('hex') };
}

if (!isMainThread && parentPort && (workerData as { seedHex?: string })?.seedHex) {
  const { seedHex, rounds, tryNative } = workerData as { seedHex: string; rounds: number; tryNative?: boolean };
  await ready();
  const status = backendStatus();
  let explicitNative: string | undefined;
  if (tryNative) {
    try {
      makeOpaque({ backend: 'native', ksf: identityKsf });
      explicitNative = 'ok';
    } catch (e) {
      explicitNative = e instanceof OpaqueError ? `error ${e.code}` : `untyped ${String(e)}`;
    }
  }
  parentPort.postMessage({ status, explicitNative, ...fixedTranscript(undefined, seedHex, rounds) });
}
