// Bootstrap for worker threads whose code is TypeScript. Node 20 does not hand the main thread's
// tsx hooks to workers, so each worker registers tsx itself, then loads workerData.__entry.
import { register } from 'tsx/esm/api';
import { workerData } from 'node:worker_threads';
register();
await import(workerData.__entry);
