// Many seeds of the deterministic vault simulator, in parallel worker threads, with a progress line:
//   npm run sim -- --seeds 10000 [--from 1] [--workers 2] [--faults net,disk,token,clock,membership] [--mutation NAME] [--json]
//   npm run sim -- --trace 1234 [--faults ...]   one seed's trace (faults, starts, crashes, forgeries)
// Faults: net (crashes, restarts, pauses, partitions, isolation, loss, duplication, reordering,
// forged frames: always on), disk (rollbacks, blank disks, torn writes, bit flips, whole-fleet
// restarts, staged rollback attacks, forks, swapped disks), token (token calls failing), clock (host
// clocks jumping), membership (a voter removed, re-added as a learner and promoted, under load).
// Default: all of them. Exit 0 when every seed holds every invariant; on a
// failure, the seeds that failed and the command that replays one. (The chaos command of a later
// issue grows from this; the workload lives under test/ because it drives client/password.ts.)
import { Worker, isMainThread, parentPort, workerData } from 'node:worker_threads';
import { fileURLToPath } from 'node:url';
import { resolve } from 'node:path';
import { MUTATION_CASES } from './sim-mutations.ts';
import { randomVaultRun, type VaultRunOptions } from './sim-vault-workload.ts';

type Fault = 'net' | 'disk' | 'token' | 'clock' | 'membership';
const FAULTS: readonly Fault[] = ['net', 'disk', 'token', 'clock', 'membership'];
interface Job { seeds: number[]; faults: Fault[]; mutation?: string }
interface SeedResult { seed: number; ok: boolean; violations: string[]; ms: number }

function runOptions(j: { faults: Fault[]; mutation?: string }, seed: number): VaultRunOptions {
  const m = j.mutation ? MUTATION_CASES.find((c) => c.name === j.mutation) : undefined;
  return {
    seed, diskFaults: j.faults.includes('disk') || !!m?.run.diskFaults, tokenFaults: j.faults.includes('token'), clockFaults: j.faults.includes('clock'), membership: j.faults.includes('membership'),
    mutation: m?.run.mutation, wrapFirmware: m?.run.wrapFirmware,
  };
}

async function runSeed(j: Job, seed: number): Promise<SeedResult> {
  const t0 = performance.now();
  const r = await randomVaultRun(runOptions(j, seed));
  return { seed, ok: r.converged && r.violations.length === 0, violations: r.violations.slice(0, 3), ms: performance.now() - t0 };
}

function usage(msg?: string): never {
  if (msg) console.error(`sim: ${msg}`);
  console.error('usage: npm run sim -- --seeds N [--from S] [--workers K] [--faults net,disk,token,clock,membership] [--mutation NAME] [--json]\n       npm run sim -- --trace SEED [--faults ...] [--mutation NAME]');
  console.error(`mutations: ${MUTATION_CASES.map((c) => c.name).join(', ')}`);
  process.exit(2);
}

function parse(argv: string[]) {
  const o = { seeds: 0, from: 1, workers: 2, faults: [...FAULTS] as Fault[], json: false, mutation: undefined as string | undefined, trace: undefined as number | undefined };
  const int = (v: string | undefined, flag: string) => {
    if (v === undefined || !/^\d+$/.test(v)) usage(`${flag} needs a whole number`);
    return Number(v);
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    switch (a) {
      case '--seeds': o.seeds = int(argv[++i], a); break;
      case '--from': o.from = int(argv[++i], a); break;
      case '--workers': o.workers = Math.max(1, int(argv[++i], a)); break;
      case '--trace': o.trace = int(argv[++i], a); break;
      case '--faults': {
        const list = (argv[++i] ?? '').split(',').filter(Boolean);
        const bad = list.filter((f) => !FAULTS.includes(f as Fault));
        if (list.length === 0 || bad.length > 0) usage(`--faults takes a list of ${FAULTS.join(', ')}${bad.length ? ` (not ${bad.join(', ')})` : ''}`);
        o.faults = [...new Set(['net', ...list])] as Fault[];
        break;
      }
      case '--json': o.json = true; break;
      case '--mutation': o.mutation = argv[++i]; if (!MUTATION_CASES.some((c) => c.name === o.mutation)) usage(`unknown mutation '${o.mutation ?? ''}'`); break;
      case '--help': case '-h': usage();
      default: usage(`unknown argument '${a}'`);
    }
  }
  if (o.trace === undefined && o.seeds === 0) usage('give --seeds N or --trace SEED');
  return o;
}

async function main(): Promise<void> {
  const o = parse(process.argv.slice(2));
  if (o.trace !== undefined) {
    const lines: string[] = [];
    const r = await randomVaultRun({ ...runOptions(o, o.trace), onNote: (l) => { if (!l.includes('|d|')) lines.push(l); } });
    console.log(lines.join('\n'));
    for (const id of r.cluster.ids) {
      const core = r.cluster.core(id);
      console.log(`${id}: ${core ? JSON.stringify(core.status()) : 'down'}`);
    }
    console.log(JSON.stringify({ seed: o.trace, converged: r.converged, violations: r.violations, outcomes: r.outcomes, traceHash: r.traceHash }, null, 1));
    process.exit(r.converged && r.violations.length === 0 ? 0 : 1);
  }
  const seeds = Array.from({ length: o.seeds }, (_, i) => o.from + i);
  const workers = Math.min(o.workers, seeds.length);
  const started = performance.now();
  let done = 0;
  const failed: SeedResult[] = [];
  const progress = () => {
    if (o.json || !process.stderr.isTTY) return;
    const s = (performance.now() - started) / 1000;
    process.stderr.write(`\r${done}/${seeds.length} seeds, ${failed.length} failed, ${s.toFixed(0)} s, ~${done ? ((seeds.length - done) * s / done).toFixed(0) : '?'} s left   `);
  };
  const timer = setInterval(progress, 500);
  await Promise.all(Array.from({ length: workers }, (_, w) => new Promise<void>((res, rej) => {
    const mine = seeds.filter((_, i) => i % workers === w);
    const wk = new Worker(resolve(fileURLToPath(import.meta.url), '../../../bin/ts-worker.js'), {
      workerData: { __entry: import.meta.url, job: { seeds: mine, faults: o.faults, mutation: o.mutation } satisfies Job },
    });
    wk.on('message', (r: SeedResult) => {
      done++;
      if (!r.ok) failed.push(r);
      if (!o.json && !process.stderr.isTTY && done % 500 === 0) console.error(`${done}/${seeds.length} seeds, ${failed.length} failed`);
    });
    wk.on('error', rej);
    wk.on('exit', () => res());
  })));
  clearInterval(timer);
  progress();
  if (!o.json && process.stderr.isTTY) process.stderr.write('\n');
  const secs = (performance.now() - started) / 1000;
  failed.sort((a, b) => a.seed - b.seed);
  const summary = { seeds: [o.from, o.from + o.seeds - 1], faults: o.faults, mutation: o.mutation ?? null, passed: done - failed.length, failed: failed.length, seconds: Math.round(secs), failures: failed.slice(0, 20) };
  if (o.json) console.log(JSON.stringify(summary));
  else {
    console.log(`${summary.passed} of ${done} seeds held every invariant (faults ${o.faults.join(',')}; ${summary.seconds} s, ${workers} workers)${o.mutation ? `, mutation ${o.mutation}` : ''}`);
    for (const f of failed.slice(0, 20)) console.log(`seed ${f.seed}: ${f.violations.join('; ') || 'did not converge'}`);
    if (failed.length > 0) console.log(`replay one: npm run sim -- --trace ${failed[0]!.seed} --faults ${o.faults.join(',')}${o.mutation ? ` --mutation ${o.mutation}` : ''}`);
  }
  process.exit(failed.length === 0 ? 0 : 1);
}

if (isMainThread) {
  await main();
} else {
  const j = (workerData as { job: Job }).job;
  for (const seed of j.seeds) parentPort!.postMessage(await runSeed(j, seed));
}
