// Child process of worker-crash.test.ts (a segfault must not take the test runner down): kills a
// token-writing worker thread many times, at random moments, the way the thread fleet's crash fault
// does (`crashWorker`), or with a bare worker.terminate() (argv[2] = 'terminate').
import { Worker } from 'node:worker_threads';
import { crashWorker } from '../../vault/fleet/fleet.ts';
import { provisionTestFleet } from '../helpers/fleet.ts';

const how = process.argv[2] === 'terminate' ? 'terminate' : 'crash';
const rounds = Number(process.argv[3] ?? 40);
const fleet = await provisionTestFleet({ replicas: 1 });
const r = fleet.replicas[0]!;
const held = fleet.openToken(r.tokenLabel); // the main thread keeps the module loaded, as the fleet does
for (let n = 0; n < rounds; n++) {
  const w = new Worker(new URL('../../bin/ts-worker.js', import.meta.url), {
    workerData: { __entry: new URL('./worker-crash-writer.ts', import.meta.url).href, modulePath: fleet.state.modulePath, tokenLabel: r.tokenLabel, pin: fleet.state.pinFor(r.tokenLabel) },
  });
  const exited = new Promise<void>((res) => w.once('exit', () => res()));
  await new Promise((res) => w.once('message', res));
  await new Promise((res) => setTimeout(res, 2 + Math.random() * 25));
  if (how === 'terminate') await w.terminate();
  else await crashWorker(w, exited);
}
console.log(`survived ${rounds} kills`);
held.close();
await fleet.cleanup();
