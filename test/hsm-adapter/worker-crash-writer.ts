// Worker for worker-crash.test.ts: rewrites a token data object (create-then-destroy, as the anchor
// and the vote are written) as fast as it can, yielding between bursts as a replica does, and dies
// on the crash message the way a replica worker does.
import { parentPort, workerData } from 'node:worker_threads';
import { openToken } from '../../hsm-adapter/pkcs11-token.ts';

const { modulePath, tokenLabel, pin } = workerData as { modulePath: string; tokenLabel: string; pin: string };
const t = openToken({ modulePath, token: tokenLabel, pin });
parentPort!.on('message', (m: { t?: string }) => { if (m.t === 'crash') process.exit(70); });
parentPort!.postMessage('ready');
let i = 0;
const burst = () => {
  for (let k = 0; k < 3; k++) t.writeData('bkv crash test', new TextEncoder().encode(`value ${i++}`));
  setImmediate(burst);
};
burst();
