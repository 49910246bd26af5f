// Worker for threads.test.ts: opens its own token in this thread and works it hard.
import { parentPort, workerData } from 'node:worker_threads';
import { openToken } from '../../hsm-adapter/pkcs11-token.ts';
import { KeyLabels } from '../../hsm-adapter/token.ts';

const { modulePath, tokenLabel, pin, rounds } = workerData as { modulePath: string; tokenLabel: string; pin: string; rounds: number };
const t = openToken({ modulePath, token: tokenLabel, pin });
try {
  const aad = Buffer.from(`aad ${tokenLabel}`);
  let ok = 0;
  let last: Uint8Array = new Uint8Array();
  for (let i = 0; i < rounds; i++) {
    const msg = Buffer.from(`${tokenLabel} message ${i}`);
    last = t.seal(KeyLabels.recordKey, msg, aad);
    if (Buffer.from(t.open(KeyLabels.recordKey, last, aad)).equals(msg)) ok++;
    t.hmac(KeyLabels.oprfSeed, 'sha512', msg);
  }
  const sig = t.sign(KeyLabels.replicaIdentity, aad);
  const kcv = Buffer.from(t.hmac(KeyLabels.oprfSeed, 'sha256', Buffer.from('bkv kcv'))).toString('hex');
  parentPort!.postMessage({ ok, sealed: Buffer.from(last).toString('hex'), sigValid: t.verify(t.publicKey(KeyLabels.replicaIdentity), aad, sig), kcv });
} catch (e) {
  const err = e as Error & { code?: string };
  parentPort!.postMessage({ error: `${err.code ?? ''} ${err.message}` });
} finally {
  t.close();
}
