// Seeds of the deterministic vault simulator (vault/sim/, the production replica core on simulated
// tokens, disks, network and clocks) run in parallel worker threads, judged, and shrunk: behind
// `bkv chaos sim`. A failing seed's fault schedule is cut down (delta debugging over the steps at
// which the nemesis acted; each step draws from its own stream, so a subset replays the same
// choices) to a small one that still fails, and the command that replays it is printed.
import { Worker, isMainThread, parentPort, workerData } from 'node:worker_threads';
import { fileURLToPath } from 'node:url';
import { resolve } from 'node:path';
import { MUTATION_CASES } from './mutations.ts';
import { randomVaultRun, type FaultStep, type VaultRunOptions, type VaultRunResult, type VaultRunSettings } from './workload.ts';

export type Fault = 'net' | 'disk' | 'token' | 'clock' | 'membership';
export const FAULTS: readonly Fault[] = ['net', 'disk', 'token', 'clock', 'membership'];

/** What a campaign runs: which faults, which seeded bug (if any), and what counts as failing. */
export interface SimJob {
  faults: Fault[];
  mutation?: string;
  /** Liveness mode: a fleet that does not heal and serve once the faults stop fails too. */
  liveness: boolean;
}

export interface SeedVerdict {
  seed: number;
  ok: boolean;
  violations: string[];
  converged: boolean;
  settings: VaultRunSettings;
  /** How many steps of the faulty phase the nemesis acted at. */
  faultSteps: number;
  ms: number;
}

export function runOptions(job: SimJob, seed: number, extra: Partial<VaultRunOptions> = {}): VaultRunOptions {
  const m = job.mutation ? MUTATION_CASES.find((c) => c.name === job.mutation) : undefined;
  if (job.mutation && !m) throw new RangeError(`unknown mutation '${job.mutation}'`);
  return {
    seed,
    diskFaults: job.faults.includes('disk') || !!m?.run.diskFaults,
    tokenFaults: job.faults.includes('token'),
    clockFaults: job.faults.includes('clock'),
    membership: job.faults.includes('membership'),
    mutation: m?.run.mutation,
    wrapFirmware: m?.run.wrapFirmware,
    bias: m?.run.bias,
    ...extra,
  };
}

export function failed(job: SimJob, r: Pick<VaultRunResult, 'violations' | 'converged'>): boolean {
  return r.violations.length > 0 || (job.liveness && !r.converged);
}

export async function judgeSeed(job: SimJob, seed: number, extra: Partial<VaultRunOptions> = {}): Promise<{ verdict: SeedVerdict; result: VaultRunResult }> {
  const t0 = performance.now();
  const result = await randomVaultRun(runOptions(job, seed, extra));
  const verdict: SeedVerdict = {
    seed, ok: !failed(job, result), violations: result.violations.slice(0, 5), converged: result.converged,
    settings: result.settings, faultSteps: result.faults.length, ms: Math.round(performance.now() - t0),
  };
  return { verdict, result };
}

/**
 * Runs `seeds` on `workers` threads (each seed is independent and deterministic), calling `onVerdict`
 * as each finishes. Resolves with every verdict, in seed order.
 */
export async function runSeeds(job: SimJob, seeds: number[], workers: number, onVerdict: (v: SeedVerdict) => void): Promise<SeedVerdict[]> {
  const all: SeedVerdict[] = [];
  const n = Math.max(1, Math.min(workers, seeds.length));
  await Promise.all(Array.from({ length: n }, (_, w) => new Promise<void>((res, rej) => {
    const mine = seeds.filter((_, i) => i % n === w);
    const wk = new Worker(resolve(fileURLToPath(import.meta.url), '../../../bin/ts-worker.js'), {
      workerData: { __entry: import.meta.url, chaosSim: { job, seeds: mine } },
    });
    wk.on('message', (v: SeedVerdict) => { all.push(v); onVerdict(v); });
    wk.on('error', rej);
    wk.on('exit', (code) => (code === 0 ? res() : rej(new Error(`simulator worker ${w} exited with code ${code}`))));
  })));
  return all.sort((a, b) => a.seed - b.seed);
}

export interface Shrunk {
  /** The smallest schedule found that still fails, as the replay applied it. */
  steps: FaultStep[];
  /** The step times to pass to --steps. */
  times: number[];
  runs: number;
  /** False when the run budget ran out before the schedule was 1-minimal. */
  minimal: boolean;
  /** False when not even the whole schedule, replayed step by step, failed again (nothing to shrink). */
  reproduced: boolean;
  violations: string[];
}

/**
 * Delta debugging (ddmin) over the fault steps of a failing seed: drop chunks of the schedule while
 * the run still fails, down to a schedule from which no single step can be dropped (or the budget).
 * Deterministic: the same seed and schedule give the same answer.
 */
export async function shrink(job: SimJob, seed: number, schedule: number[], o: { maxRuns?: number; onRun?: (runs: number, size: number) => void } = {}): Promise<Shrunk> {
  const maxRuns = o.maxRuns ?? 300;
  let runs = 0;
  let best: { times: number[]; result: VaultRunResult } | null = null;
  const tryRun = async (times: number[]): Promise<boolean> => {
    runs++;
    const result = await randomVaultRun(runOptions(job, seed, { onlySteps: new Set(times) }));
    o.onRun?.(runs, best?.times.length ?? schedule.length);
    if (!failed(job, result)) return false;
    best = { times, result };
    return true;
  };
  let cur = [...schedule];
  let minimal = false;
  if (await tryRun([])) {
    cur = [];
    minimal = true;
  } else if (!(await tryRun(cur))) {
    // The full schedule replayed through the subset path passes: nothing to shrink against.
    return { steps: [], times: cur, runs, minimal: false, reproduced: false, violations: [] };
  } else {
    let parts = 2;
    while (runs < maxRuns) {
      if (cur.length < 2) { minimal = true; break; }
      const size = Math.ceil(cur.length / parts);
      let cut = false;
      let tried = 0;
      for (let i = 0; i < cur.length && runs < maxRuns; i += size) {
        tried++;
        const rest = [...cur.slice(0, i), ...cur.slice(i + size)];
        if (await tryRun(rest)) {
          cur = rest;
          parts = Math.max(parts - 1, 2);
          cut = true;
          break;
        }
      }
      if (cut) continue;
      if (tried < Math.ceil(cur.length / size)) break; // out of budget mid-round
      if (size === 1) { minimal = true; break; }
      parts = Math.min(cur.length, parts * 2);
    }
  }
  const b = best as { times: number[]; result: VaultRunResult } | null;
  return { steps: b?.result.faults ?? [], times: cur, runs, minimal, reproduced: true, violations: b?.result.violations.slice(0, 5) ?? [] };
}

/** The one command that replays a seed (and, when given, only the steps of a shrunk schedule). */
export function replayCommand(job: SimJob, seed: number, steps?: number[]): string {
  const parts = ['bkv chaos sim', `--seed ${seed}`];
  if (steps) parts.push(`--steps ${steps.length ? steps.join(',') : 'none'}`);
  parts.push(`--faults ${job.faults.join(',')}`);
  if (job.mutation) parts.push(`--mutation ${job.mutation}`);
  if (job.liveness) parts.push('--liveness');
  return parts.join(' ');
}

/** The settings a seed drew, in one line. */
export function describeSettings(s: VaultRunSettings): string {
  const pct = (x: number) => `${+(x * 100).toFixed(2)}%`;
  return `${s.replicas} replicas, snapshot every ${s.snapshotEvery} entries, network delay 1-${s.net.maxDelayMs} ms, loss ${pct(s.net.dropRate)}, duplication ${pct(s.net.dupRate)}, disk writes up to ${s.diskMaxMs} ms` +
    (s.tokenFailureRate === null ? '' : `, token call failures ${pct(s.tokenFailureRate)}`);
}

if (!isMainThread && (workerData as { chaosSim?: unknown } | undefined)?.chaosSim) {
  const { job, seeds } = (workerData as { chaosSim: { job: SimJob; seeds: number[] } }).chaosSim;
  for (const seed of seeds) parentPort!.postMessage((await judgeSeed(job, seed)).verdict);
}
