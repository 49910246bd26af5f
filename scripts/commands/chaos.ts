// `bkv chaos sim`: fault campaigns over the deterministic simulator (the production replica core on
// simulated tokens, disks, network and clocks), with a progress bar, verdicts, the settings each
// failing seed drew, a shrunk fault schedule and the one command that replays it. `bkv chaos live`:
// a seeded nemesis over a real fleet with real tokens and ChatD, a history, its checks and report.
// `bkv chaos fuzz`: the decoders under seeded mutations.
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseFlags, UsageError, wantsHelp, type Command } from '../cli.ts';
import { FAULTS, describeSettings, judgeSeed, replayCommand, runSeeds, shrink, type Fault, type SeedVerdict, type Shrunk, type SimJob } from '../chaos/campaign.ts';
import { MUTATION_CASES } from '../chaos/mutations.ts';
import { renderRunReport, simSettingsText } from '../chaos/report.ts';
import { latencyByOp } from '../chaos/latency.ts';
import { runLive, type LiveRun, type LiveTransport } from '../chaos/live.ts';
import { checkLiveRun, liveRunFromReport, liveRunHistory, type LiveVerdict } from '../chaos/live-check.ts';
import { MUTATIONS, type Mutation } from '../../vault/replica/core.ts';

const simHelp = `usage: bkv chaos sim --seeds N [--from S] [--faults LIST] [--workers K] [--liveness] [--json] [--report DIR]
       bkv chaos sim --seed S [--steps LIST|none] [--faults LIST] [--liveness] [--trace] [--json]

Runs seeds of the deterministic simulator: every replica is the production replica core (firmware,
Raft, sealing, token anchor and vote, rejoin) on a simulated token, disk, network and clock. Per seed:
two users with a limit of 3 guesses, their owners recovering with the right password and up to three
attackers per user guessing at once through random replicas, while a seeded nemesis injects faults;
then the faults stop and the fleet is healed. An outside oracle checks the guess budget (every KE2
that left the fleet), the counter, K release, Raft safety and convergence. A seed replays exactly.

  --seeds N         how many seeds to run (from --from, default 1)
  --from S          the first seed
  --faults LIST     comma-separated, from: ${FAULTS.join(', ')} (default: all). net is always on
                    (crashes at any step of a recovery, restarts, pauses, partitions of two groups, bridges,
                    rings and one-way links, leader isolation,
                    loss, duplication, reordering, forged peer frames); disk: rolled-back, blank, torn
                    and bit-flipped disks, whole-fleet restarts, staged rollback attacks, forks, swapped
                    disks; token: failing and slow token calls; clock: jumps and drift; membership: a
                    voter removed under load, re-added as a learner, promoted
  --workers K       worker threads (default 2)
  --liveness        liveness mode: a fleet that, once the faults stop, does not converge within 30 s
                    of virtual time and answer every user's Status within 5 s fails the
                    seed too (default: safety mode, invariants only)
  --mutation NAME   run with a deliberately seeded bug (test-only switch of the simulated core), to see
                    the campaign catch it: ${MUTATION_CASES.map((c) => c.name).join(', ')}
  --shrink-runs N   the run budget for shrinking a failing seed's fault schedule (default 300; 0: do
                    not shrink)
  --verbose         a line per seed as it finishes: its verdict, time, and the settings it drew
  --json            one summary document on stdout (progress stays on stderr)
  --report DIR      write DIR/index.html (a self-contained page: timeline of replica roles, faults,
                    partitions, device operations and attempts left, violations linked to operations,
                    latency histogram, throughput), DIR/history.jsonl, DIR/summary.json and, for the
                    first failing seed, DIR/seed-S.json and DIR/seed-S.trace.txt; the page pictures
                    that seed's shrunk run (with no failure: the first seed). Also with --seed.

  --seed S          replay one seed: its settings, the steps at which faults were applied, the verdict
  --steps LIST      with --seed: apply only the faults of these steps (a shrunk schedule, as printed)
  --trace           with --seed: print the fault trace (faults, starts, crashes, forgeries) as it runs

On a failure: the settings the seed drew, its violations, the fault schedule shrunk to a smallest
failing one, and the command that replays it. Exit 0 when every seed held, 1 when one failed, 2 on
a usage error. docs/chaos.md has campaign sizes, run times and how to turn a seed into a test.`;

const fuzzHelp = `usage: bkv chaos fuzz [--inputs N] [--target NAME[,NAME...]] [--seed S] [--workers K] [--json] [--out DIR]

Feeds every decoder that reads outside bytes or text (device messages, vault replies, session
frames, relay envelopes, ChatD frames and error bodies, peer frames, consensus messages, entries,
hard states, snapshots, membership changes, firmware entries and state snapshots, the process
protocol, backup headers, 64-digit keys, token URIs, host:port flags, WAN config files) with seeded
mutations of its kept corpus (the golden encodings). A decoder must return or throw a typed bkv
error; anything else is a finding, printed with its input.

  --inputs N      mutated inputs per decoder (default 1000000)
  --target LIST   only these decoders (default: all): ${'${TARGETS}'}
  --seed S        the mutation seed (default 1); a run replays exactly
  --workers K     worker threads (default 2)
  --json          one summary document on stdout
  --out DIR       write each finding's input to DIR/TARGET-K.bin (0600)

Exit 0 with no finding, 1 with findings, 2 on a usage error.`;

const liveHelp = `usage: bkv chaos live [--minutes M] [--seed S] [--transport thread|process|tcp] [--wan default|none|FILE]
                      [--replicas N] [--users N] [--attackers N] [--limit N] [--mutation NAME]
                      [--malicious-chatd] [--report DIR] [--json] [--verbose]
       bkv chaos live --recheck DIR [--json]

Provisions a fresh fleet in a temporary directory (real SoftHSM2 tokens, LMDB disks, the fleet
process, ChatD, devices over loopback HTTP) and runs it under a seeded nemesis for M minutes: kill -9
of replicas, of the leader and of the whole fleet, restarts on kept, rolled-back and blank disks,
and with threads also partitions (two groups, bridges, rings), isolation, one-way links into the
leader, slow and lossy data centers, failing and slow token calls, skewed and jumping clocks. Owners
recover with the right password, attackers guess wrong from several devices at once (with retries and
duplicated frames), and as many attack-only users are guessed at by attackers alone. The last part of
the run has no faults: the fleet must converge and serve. Every operation goes into a history
(invoke, then ok / fail / info; info may have taken effect and counts as used), checked afterwards:
per-user linearizability against the model of a record, the guess budget by the KE2s the devices
received, the counter never going down, K only to its owner, convergence and time to recover.

  --minutes M        run length, faults and healing (default 1; decimals allowed, at least 0.5)
  --seed S           seeds the nemesis, the workload and the malicious ChatD (default 1); real timing
                     still differs between runs
  --transport T      thread (default): replicas are worker threads through the WAN model;
                     process or tcp: each replica its own OS process over TCP on loopback (crash,
                     kill -9, restart, disk, token and clock faults; no network faults: the network
                     there is the real one)
  --wan MODEL        threads only: default (five data centers), none, or a WAN file (default none)
  --replicas N       replicas (3..7, default 5)
  --users N          users with an owner, and as many attack-only users (1..20, default 3)
  --attackers N      attacking devices per user (1..8, default 2)
  --limit N          the guess limit each user registers with (3..100, default 5)
  --mutation NAME    a deliberately seeded bug in every replica (test-only switch, BKV_TEST_MUTATION),
                     to see the checkers catch it: ${MUTATIONS.join(', ')}
  --malicious-chatd  devices talk through a malicious ChatD (holding the relay key) that flips bits
                     both ways, replays and duplicates frames, swaps users, drops and delays; adds the
                     check that nothing it saw holds a password or K
  --report DIR       DIR/index.html (timeline: replica roles and terms, faults, partitions, every
                     operation, attempts left, violations), DIR/history.jsonl, DIR/summary.json
  --json             one summary document on stdout (progress stays on stderr)
  --verbose          each fault as it is applied, on stderr
  --recheck DIR      judge the run saved in DIR (--report) again, without running anything

Exit 0 when every check held, 1 when one failed, 2 on a usage error. docs/chaos.md says how to read
the report and how long runs take.`;

const help = `usage: bkv chaos sim|live|fuzz [options]   (bkv chaos sim --help, bkv chaos live --help, bkv chaos fuzz --help)

Fault campaigns against the vault. sim: seeds of the deterministic simulator, with verdicts and
shrunk reproductions. live: a seeded nemesis over a real fleet, with a checked history and a report.
fuzz: seeded mutations of every decoder's inputs.`;

async function fuzz(argv: string[]): Promise<number> {
  const { fuzzTargets, fuzzTargetsInWorkers } = await import('../chaos/fuzz.ts');
  const all = (await fuzzTargets()).map((t) => t.name);
  if (wantsHelp(argv)) { console.log(fuzzHelp.replace('${TARGETS}', all.join(', '))); return 0; }
  const { values: f } = parseFlags(argv, { inputs: { type: 'string' }, target: { type: 'string' }, seed: { type: 'string' }, workers: { type: 'string' }, json: { type: 'boolean' }, out: { type: 'string' } });
  const inputs = wholeNumber(f.inputs, '--inputs', 1) ?? 1_000_000;
  const seed = wholeNumber(f.seed, '--seed') ?? 1;
  const workers = wholeNumber(f.workers, '--workers', 1) ?? 2;
  const names = f.target === undefined ? all : f.target.split(',').filter(Boolean);
  const unknown = names.filter((n) => !all.includes(n));
  if (names.length === 0 || unknown.length) throw new UsageError(`--target takes decoder names from: ${all.join(', ')}${unknown.length ? ` (not ${unknown.map((u) => `'${u.slice(0, 30)}'`).join(', ')})` : ''}`);
  const started = performance.now();
  let done = 0;
  const results = await fuzzTargetsInWorkers(names, inputs, seed, workers, (r) => {
    done++;
    process.stderr.write(`[${done}/${names.length}] ${r.target}: ${r.inputs} inputs, ${r.accepted} decoded, ${r.refused} refused (typed), ${r.findings.length} findings, ${(r.ms / 1000).toFixed(1)} s\n`);
  });
  const findings = results.flatMap((r) => r.findings);
  if (f.out) {
    mkdirSync(f.out, { recursive: true, mode: 0o700 });
    const per = new Map<string, number>();
    for (const x of findings) {
      const k = (per.get(x.target) ?? 0) + 1;
      per.set(x.target, k);
      writeFileSync(join(f.out, `${x.target}-${k}.bin`), Buffer.from(x.input, 'hex'), { mode: 0o600 });
    }
  }
  const summary = { seed, inputsPerDecoder: inputs, decoders: results.length, findings: findings.length, seconds: Math.round((performance.now() - started) / 1000), results };
  if (f.json) console.log(JSON.stringify(summary));
  else {
    console.log(`${results.length} decoders, ${inputs} mutated inputs each (seed ${seed}): ${findings.length} findings in ${duration(summary.seconds)}`);
    for (const x of findings) console.log(`  ${x.target}: ${x.error}\n    input (hex): ${x.input.slice(0, 400)}`);
  }
  return findings.length === 0 ? 0 : 1;
}

function parseFaults(v: string | undefined): Fault[] {
  if (v === undefined) return [...FAULTS];
  const list = v.split(',').map((x) => x.trim()).filter(Boolean);
  const bad = list.filter((f) => !FAULTS.includes(f as Fault));
  if (list.length === 0 || bad.length > 0) throw new UsageError(`--faults takes a comma-separated list of ${FAULTS.join(', ')}${bad.length ? ` (not ${bad.map((b) => `'${b.slice(0, 20)}'`).join(', ')})` : ''}`);
  return [...new Set<Fault>(['net', ...(list as Fault[])])].sort((a, b) => FAULTS.indexOf(a) - FAULTS.indexOf(b));
}

function wholeNumber(v: string | undefined, flag: string, min = 0): number | undefined {
  if (v === undefined) return undefined;
  if (!/^\d{1,9}$/.test(v) || Number(v) < min) throw new UsageError(`${flag} needs a whole number${min ? ` of at least ${min}` : ''} (got '${v.slice(0, 20)}')`);
  return Number(v);
}

function parseSteps(v: string | undefined): number[] | undefined {
  if (v === undefined) return undefined;
  if (v === 'none') return [];
  const list = v.split(',');
  if (!list.every((x) => /^\d{1,7}$/.test(x))) throw new UsageError(`--steps takes comma-separated step times (ms), as a failure prints them, or 'none'`);
  return list.map(Number);
}

function duration(s: number): string {
  if (s < 60) return `${Math.round(s)}s`;
  return `${Math.floor(s / 60)}m${String(Math.round(s % 60)).padStart(2, '0')}s`;
}

/** Progress on stderr: a redrawn bar on a terminal, a line per tenth otherwise. */
function progress(total: number) {
  const tty = process.stderr.isTTY;
  const started = performance.now();
  let done = 0, bad = 0, lastTenth = 0;
  const draw = () => {
    const s = (performance.now() - started) / 1000;
    const left = done ? duration(((total - done) * s) / done) : '?';
    const width = 24;
    const full = Math.round((done / total) * width);
    const line = `[${'#'.repeat(full)}${'.'.repeat(width - full)}] ${done}/${total} seeds  ${done - bad} passed  ${bad} failed  ${duration(s)}  ~${left} left`;
    process.stderr.write(tty ? `\r${line}  ` : `${line}\n`);
  };
  const timer = tty ? setInterval(draw, 250) : undefined;
  return {
    seed(ok: boolean) {
      done++;
      if (!ok) bad++;
      const tenth = Math.floor((done * 10) / total);
      if (!tty && tenth > lastTenth) { lastTenth = tenth; draw(); }
    },
    end() {
      if (timer) { clearInterval(timer); draw(); process.stderr.write('\n'); }
      return (performance.now() - started) / 1000;
    },
  };
}

interface FailureReport {
  seed: number;
  violations: string[];
  converged: boolean;
  settings: SeedVerdict['settings'];
  faultSteps: number;
  replay: string;
  shrunk?: { steps: { t: number; what: string }[]; times: number[]; runs: number; minimal: boolean; replay: string };
}

async function shrinkOne(job: SimJob, v: SeedVerdict, maxRuns: number, quiet: boolean): Promise<Shrunk | undefined> {
  if (maxRuns === 0) return undefined;
  const { result } = await judgeSeed(job, v.seed);
  const schedule = result.faults.map((f) => f.t);
  if (!quiet) process.stderr.write(`shrinking seed ${v.seed}: ${schedule.length} fault steps\n`);
  const tty = process.stderr.isTTY && !quiet;
  const s = await shrink(job, v.seed, schedule, {
    maxRuns,
    onRun: tty ? (runs, size) => process.stderr.write(`\r  run ${runs}/${maxRuns}: ${size} steps still failing   `) : undefined,
  });
  if (tty) process.stderr.write('\n');
  return s;
}

/**
 * Replays one seed (with its shrunk steps, when given) recording its history, and writes the page
 * (DIR/index.html), the history (DIR/history.jsonl: one operation per line, then roles, faults and
 * attempts) and the trace (DIR/seed-S.trace.txt).
 */
async function writeRunReport(dir: string, job: SimJob, seed: number, steps: number[] | undefined, summary: string[]): Promise<void> {
  const lines: string[] = [];
  const { verdict, result } = await judgeSeed(job, seed, {
    record: true, onlySteps: steps ? new Set(steps) : undefined, onNote: (l) => { if (!l.includes('|d|')) lines.push(l); },
  });
  const h = result.history!;
  const html = renderRunReport({
    title: `bkv chaos sim: seed ${seed}${steps ? ` (${steps.length} fault steps of a shrunk schedule)` : ''}${job.mutation ? `, mutation ${job.mutation}` : ''}`,
    seed, settingsText: simSettingsText(verdict.settings), ok: verdict.ok, violations: result.violations, history: h, replay: replayCommand(job, seed, steps), summary,
  });
  writeFileSync(join(dir, 'index.html'), html, { mode: 0o600 });
  const jsonl = [
    ...h.ops.map((o) => JSON.stringify({ type: o.end === null ? 'info' : o.outcome === 'ok' || o.outcome === 'released' ? 'ok' : o.outcome === 'unknown' ? 'info' : 'fail', ...o })),
    ...h.roles.map((r) => JSON.stringify({ type: 'role', ...r })),
    ...h.notes.map((n) => JSON.stringify({ type: 'trace', ...n })),
    ...h.attempts.map((a) => JSON.stringify({ type: 'attempts', ...a })),
  ];
  writeFileSync(join(dir, 'history.jsonl'), jsonl.join('\n') + '\n', { mode: 0o600 });
  writeFileSync(join(dir, `seed-${seed}.trace.txt`), lines.join('\n') + '\n', { mode: 0o600 });
}

async function simSeed(job: SimJob, seed: number, steps: number[] | undefined, trace: boolean, json: boolean, report: string | undefined): Promise<number> {
  const lines: string[] = [];
  const { verdict, result } = await judgeSeed(job, seed, {
    onlySteps: steps ? new Set(steps) : undefined,
    onNote: trace ? (l) => { if (!l.includes('|d|')) { if (json) lines.push(l); else console.log(l); } } : undefined,
  });
  const replicas = result.cluster.ids.map((id) => {
    const core = result.cluster.core(id);
    return { id, status: core ? core.status() : 'down' };
  });
  if (json) {
    console.log(JSON.stringify({ seed, steps: steps ?? null, ok: verdict.ok, converged: verdict.converged, violations: result.violations, settings: verdict.settings, faults: result.faults, outcomes: result.outcomes, traceHash: result.traceHash, replicas, ...(trace ? { trace: lines } : {}) }));
  } else {
    console.log(`seed ${seed}: ${describeSettings(verdict.settings)}`);
    console.log(`faults at ${result.faults.length} steps${steps ? ` (of --steps ${steps.length ? steps.join(',') : 'none'})` : ''}:`);
    for (const f of result.faults) console.log(`  t=${f.t} ${f.what}`);
    for (const r of replicas) console.log(`${r.id}: ${typeof r.status === 'string' ? r.status : JSON.stringify(r.status)}`);
    console.log(`outcomes: ${JSON.stringify(result.outcomes)}`);
    if (verdict.ok) console.log(`held every invariant${verdict.converged ? ', converged' : ' (did not converge after healing)'}; trace ${result.traceHash.slice(0, 16)}`);
    else console.log(`FAILED: ${result.violations.join('; ') || 'did not heal and converge within the bound'}`);
  }
  if (report) {
    mkdirSync(report, { recursive: true, mode: 0o700 });
    await writeRunReport(report, job, seed, steps, []);
    if (!json) console.log(`report: ${join(report, 'index.html')}`);
  }
  return verdict.ok ? 0 : 1;
}

async function sim(argv: string[]): Promise<number> {
  if (wantsHelp(argv)) { console.log(simHelp); return 0; }
  const { values: f } = parseFlags(argv, {
    seeds: { type: 'string' }, from: { type: 'string' }, faults: { type: 'string' }, workers: { type: 'string' },
    liveness: { type: 'boolean' }, json: { type: 'boolean' }, report: { type: 'string' }, mutation: { type: 'string' },
    'shrink-runs': { type: 'string' }, verbose: { type: 'boolean' }, seed: { type: 'string' }, steps: { type: 'string' }, trace: { type: 'boolean' },
  });
  const job: SimJob = { faults: parseFaults(f.faults), liveness: !!f.liveness };
  if (f.mutation !== undefined) {
    if (!MUTATION_CASES.some((c) => c.name === f.mutation)) throw new UsageError(`unknown mutation '${f.mutation.slice(0, 40)}' (${MUTATION_CASES.map((c) => c.name).join(', ')})`);
    job.mutation = f.mutation;
  }
  const seed = wholeNumber(f.seed, '--seed');
  const seeds = wholeNumber(f.seeds, '--seeds', 1);
  if (seed !== undefined) {
    if (seeds !== undefined || f.from !== undefined) throw new UsageError('--seed replays one seed: it does not take --seeds or --from');
    return simSeed(job, seed, parseSteps(f.steps), !!f.trace, !!f.json, f.report);
  }
  if (f.steps !== undefined || f.trace) throw new UsageError('--steps and --trace go with --seed S (one seed)');
  if (seeds === undefined) throw new UsageError('give --seeds N (a campaign) or --seed S (one seed)');
  const from = wholeNumber(f.from, '--from') ?? 1;
  const workers = wholeNumber(f.workers, '--workers', 1) ?? 2;
  const shrinkRuns = wholeNumber(f['shrink-runs'], '--shrink-runs') ?? 300;
  const report = f.report;
  if (report) mkdirSync(report, { recursive: true, mode: 0o700 });

  const list = Array.from({ length: seeds }, (_, i) => from + i);
  const bar = progress(list.length);
  const verdicts = await runSeeds(job, list, workers, (v) => {
    if (f.verbose) process.stderr.write(`${process.stderr.isTTY ? '\r' : ''}seed ${v.seed} ${v.ok ? 'held' : 'FAILED'} (${v.ms} ms, faults at ${v.faultSteps} steps): ${describeSettings(v.settings)}\n`);
    bar.seed(v.ok);
  });
  const seconds = bar.end();
  const bad = verdicts.filter((v) => !v.ok);
  const failures: FailureReport[] = bad.slice(0, 20).map((v) => ({
    seed: v.seed, violations: v.violations, converged: v.converged, settings: v.settings, faultSteps: v.faultSteps, replay: replayCommand(job, v.seed),
  }));
  // The first failure is shrunk (each is a campaign of its own); the others replay by seed.
  if (failures[0]) {
    const s = await shrinkOne(job, bad[0]!, shrinkRuns, !!f.json);
    if (s?.reproduced) {
      failures[0].shrunk = { steps: s.steps, times: s.times, runs: s.runs, minimal: s.minimal, replay: replayCommand(job, bad[0]!.seed, s.times) };
    }
  }
  const summary = {
    mode: job.liveness ? 'liveness' : 'safety', seeds: [from, from + seeds - 1], faults: job.faults, mutation: job.mutation ?? null, workers,
    passed: verdicts.length - bad.length, failed: bad.length, seconds: Math.round(seconds),
    slowestSeedMs: Math.max(...verdicts.map((v) => v.ms)),
    failures,
  };
  if (report) {
    writeFileSync(join(report, 'summary.json'), JSON.stringify(summary, null, 1) + '\n', { mode: 0o600 });
    const lines = [`${summary.passed} of ${verdicts.length} seeds (${from}-${from + seeds - 1}) held, ${summary.failed} failed; ${summary.mode} mode; faults ${job.faults.join(',')}; ${duration(seconds)} on ${workers} workers`];
    const first = failures[0];
    if (first) {
      writeFileSync(join(report, `seed-${first.seed}.json`), JSON.stringify(first, null, 1) + '\n', { mode: 0o600 });
      // The picture is of the smallest failing run found: the shrunk schedule when there is one.
      const steps = first.shrunk?.times;
      await writeRunReport(report, job, first.seed, steps, [...lines, `pictured: the first failing seed, ${first.seed}${steps ? ', replayed with its shrunk fault schedule' : ''}`]);
    } else {
      await writeRunReport(report, job, from, undefined, [...lines, `pictured: seed ${from} (no seed failed)`]);
    }
  }
  if (f.json) {
    console.log(JSON.stringify(summary));
  } else {
    console.log(`${summary.passed} of ${verdicts.length} seeds held every invariant${job.liveness ? ' and healed' : ''} (${summary.mode} mode; faults ${job.faults.join(',')}${job.mutation ? `; mutation ${job.mutation}` : ''}; ${duration(seconds)} on ${workers} workers)`);
    for (const x of failures) {
      console.log(`\nseed ${x.seed} FAILED: ${x.violations.join('; ') || 'did not heal and converge within the bound'}`);
      console.log(`  drew: ${describeSettings(x.settings)}`);
      console.log(`  faults applied at ${x.faultSteps} steps; replay: ${x.replay}`);
      if (x.shrunk) {
        console.log(`  shrunk to ${x.shrunk.steps.length} fault step${x.shrunk.steps.length === 1 ? '' : 's'} in ${x.shrunk.runs} runs${x.shrunk.minimal ? '' : ' (run budget reached; smaller may exist)'}:`);
        for (const s of x.shrunk.steps) console.log(`    t=${s.t} ${s.what}`);
        console.log(`  replay the shrunk run: ${x.shrunk.replay}`);
      }
    }
    if (bad.length > failures.length) console.log(`\n(${bad.length - failures.length} more failing seeds not listed)`);
    if (report) console.log(`report: ${join(report, 'summary.json')}`);
  }
  return bad.length === 0 ? 0 : 1;
}

/** The nemesis' faults in a live run's notes: not the heal, convergence, refusals or an operator's restart. */
function faultCount(run: LiveRun): number {
  return run.notes.filter((n) => !['heal', 'converged', 'heal (faults stop)'].includes(n.line) && !n.line.startsWith('refused') && !n.line.startsWith('operator ')).length;
}

/** The page of a live run (`--report`, and again after `--recheck`). */
function liveReportPage(run: LiveRun, verdict: LiveVerdict, rerun: string): string {
  const st = run.settings;
  const faults = faultCount(run);
  return renderRunReport({
    title: `bkv chaos live: seed ${st.seed}, ${st.minutes} min, ${st.transport}${st.mutation ? `, mutation ${st.mutation}` : ''}${st.maliciousChatd ? ', malicious ChatD' : ''}`,
    seed: st.seed, settingsText: `${st.replicas} replicas as ${st.transport === 'thread' ? 'worker threads' : 'processes over TCP'}, WAN ${st.wan}, ${st.users} users with owners and ${st.attackOnlyUsers} attack-only, ${st.attackersPerUser} attackers each, limit ${st.limit}; faults: ${st.faults.join(', ')}.`,
    ok: verdict.ok, violations: verdict.violations, history: liveRunHistory(run), replay: rerun,
    summary: [`${run.ops.length} operations, ${faults} faults over ${duration(run.end / 1000)}`, ...verdict.checks.map((c) => `${c.ok ? 'held' : 'FAILED'}: ${c.name} (${c.detail})`)],
  });
}

/** Judges a saved live run again (DIR/summary.json and DIR/history.jsonl), e.g. after a checker change. */
function recheckLive(dir: string, json: boolean): number {
  let run;
  try {
    run = liveRunFromReport(readFileSync(join(dir, 'summary.json'), 'utf8'), readFileSync(join(dir, 'history.jsonl'), 'utf8'));
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw new UsageError(code === 'ENOENT' ? `--recheck ${dir.slice(0, 80)}: no summary.json and history.jsonl there (a \`bkv chaos live --report DIR\`)` : `--recheck ${dir.slice(0, 80)}: ${(e as Error).message}`);
  }
  const verdict = checkLiveRun(run);
  // The page and the summary of DIR follow the new verdict.
  const saved = JSON.parse(readFileSync(join(dir, 'summary.json'), 'utf8')) as Record<string, unknown>;
  const summary = { ...saved, ok: verdict.ok, checks: verdict.checks, violations: verdict.violations };
  writeFileSync(join(dir, 'summary.json'), JSON.stringify(summary, null, 1) + '\n', { mode: 0o600 });
  writeFileSync(join(dir, 'index.html'), liveReportPage(run, verdict, String(saved.rerun ?? '')), { mode: 0o600 });
  if (json) console.log(JSON.stringify({ mode: 'recheck', ok: verdict.ok, operations: run.ops.length, checks: verdict.checks, violations: verdict.violations }));
  else {
    console.log(`${verdict.ok ? 'held every check' : `FAILED: ${verdict.violations.length} violation${verdict.violations.length === 1 ? '' : 's'}`}: ${run.ops.length} operations of ${dir}`);
    for (const c of verdict.checks) console.log(`  ${c.ok ? 'held  ' : 'FAILED'} ${c.name}: ${c.detail}`);
    for (const v of verdict.violations.slice(0, 20)) console.log(`  violation: ${v}`);
  }
  return verdict.ok ? 0 : 1;
}

function ranged(v: string | undefined, flag: string, lo: number, hi: number, dflt: number): number {
  if (v === undefined) return dflt;
  if (!/^\d{1,4}$/.test(v) || Number(v) < lo || Number(v) > hi) throw new UsageError(`${flag} must be a whole number ${lo}..${hi} (got '${v.slice(0, 20)}')`);
  return Number(v);
}

async function live(argv: string[]): Promise<number> {
  if (wantsHelp(argv)) { console.log(liveHelp); return 0; }
  const { values: f } = parseFlags(argv, {
    minutes: { type: 'string' }, seed: { type: 'string' }, transport: { type: 'string' }, wan: { type: 'string' }, replicas: { type: 'string' },
    users: { type: 'string' }, attackers: { type: 'string' }, limit: { type: 'string' }, mutation: { type: 'string' },
    'malicious-chatd': { type: 'boolean' }, report: { type: 'string' }, json: { type: 'boolean' }, verbose: { type: 'boolean' },
    recheck: { type: 'string' },
  });
  if (f.recheck !== undefined) return recheckLive(f.recheck, !!f.json);
  const minutes = f.minutes === undefined ? 1 : Number(f.minutes);
  if (f.minutes !== undefined && (!/^\d{1,4}(\.\d{1,2})?$/.test(f.minutes) || minutes < 0.5 || minutes > 1440)) throw new UsageError(`--minutes must be a number of minutes from 0.5 to 1440 (got '${f.minutes.slice(0, 20)}')`);
  const seed = wholeNumber(f.seed, '--seed') ?? 1;
  const transport = (f.transport ?? 'thread') as LiveTransport;
  if (!['thread', 'process', 'tcp'].includes(transport)) throw new UsageError(`--transport must be thread, process or tcp (got '${String(f.transport).slice(0, 20)}')`);
  if (transport !== 'thread' && f.wan !== undefined && f.wan !== 'none') throw new UsageError('--wan goes with --transport thread: replicas as processes talk over the real (loopback) network');
  const wan = f.wan ?? 'none';
  if (wan !== 'default' && wan !== 'none') {
    const { resolveWanConfig } = await import('../../vault/fleet/wan.ts');
    try { resolveWanConfig(wan); } catch (e) { throw new UsageError(`--wan ${wan.slice(0, 80)}: ${(e as Error).message}`); }
  }
  if (f.mutation !== undefined && !(MUTATIONS as readonly string[]).includes(f.mutation)) throw new UsageError(`unknown mutation '${f.mutation.slice(0, 40)}' (${MUTATIONS.join(', ')})`);
  const o = {
    minutes, seed, transport, wan, replicas: ranged(f.replicas, '--replicas', 3, 7, 5), users: ranged(f.users, '--users', 1, 20, 3),
    attackersPerUser: ranged(f.attackers, '--attackers', 1, 8, 2), limit: ranged(f.limit, '--limit', 3, 100, 5),
    mutation: f.mutation as Mutation | undefined, maliciousChatd: !!f['malicious-chatd'],
  };
  if (f.report) mkdirSync(f.report, { recursive: true, mode: 0o700 });
  const tty = process.stderr.isTTY;
  let lastLine = 0;
  const run = await runLive({
    ...o,
    log: f.verbose ? (l) => process.stderr.write(`${tty ? '\r' : ''}${l}\n`) : undefined,
    onProgress: (p) => {
      const width = 24, full = Math.min(width, Math.round((p.elapsedMs / p.totalMs) * width));
      const line = `[${'#'.repeat(full)}${'.'.repeat(width - full)}] ${duration(p.elapsedMs / 1000)}/${duration(p.totalMs / 1000)}  ${p.phase}  ${p.ops} operations  ${p.faults} faults`;
      if (tty) process.stderr.write(`\r${line}  `);
      else if (p.elapsedMs - lastLine >= 10_000 || p.phase === 'checking') { lastLine = p.elapsedMs; process.stderr.write(`${line}\n`); }
    },
  });
  if (tty) process.stderr.write('\n');
  const rerun = ['bkv chaos live', `--minutes ${minutes}`, `--seed ${seed}`, `--transport ${transport}`, ...(transport === 'thread' ? [`--wan ${wan}`] : []), `--replicas ${o.replicas}`, `--users ${o.users}`,
    `--attackers ${o.attackersPerUser}`, `--limit ${o.limit}`, ...(o.mutation ? [`--mutation ${o.mutation}`] : []), ...(o.maliciousChatd ? ['--malicious-chatd'] : [])].join(' ');
  const counts: Record<string, number> = {};
  for (const x of run.ops) {
    const k = `${x.input.f} ${x.type === 'ok' ? x.output!.r : x.type}`;
    counts[k] = (counts[k] ?? 0) + 1;
  }
  // Latency of what completed, per operation kind (ms, HDR percentiles; the page also plots them).
  const latency = Object.fromEntries(latencyByOp(run.ops.filter((x) => x.type === 'ok').map((x) => ({ op: x.input.f, start: x.call, end: x.ret })))
    .map(({ op, curve: _, ...row }) => [op, row]));
  const base = {
    mode: 'live', settings: run.settings, seconds: Math.round(run.durationMs / 1000), operations: run.ops.length,
    faults: faultCount(run),
    recoverySeconds: run.convergedAt === null ? null : (run.convergedAt - run.healedAt) / 1000,
    firstSuccessAfterHealSeconds: run.firstOkAfterHeal === null ? null : (run.firstOkAfterHeal - run.healedAt) / 1000,
    outcomes: counts, latency, rerun,
    // What --recheck needs to judge the saved history again (no secret in it).
    run: { users: run.users, healedAt: run.healedAt, convergedAt: run.convergedAt, firstOkAfterHeal: run.firstOkAfterHeal, end: run.end, foreignK: run.foreignK, leaks: run.leaks, tampering: run.tampering },
    replicas: run.finalStatus?.replicas.map((r) => ({ name: r.name, role: r.role, term: r.term, healthy: r.healthy, reason: r.reason, appliedIndex: r.appliedIndex, lag: r.lag })) ?? null,
  };
  // The history is on disk before it is judged: a long run survives a checker that is slow or fails.
  if (f.report) {
    const d = f.report;
    const lines = [
      ...run.ops.map((x) => JSON.stringify({ type: x.type, id: x.id, process: x.process, user: x.user, f: x.input.f, input: x.input, output: x.output ?? null, error: x.error ?? null, invoke: x.call, complete: x.ret, ...(x.gaveUp !== undefined ? { gaveUp: x.gaveUp } : {}) })),
      ...run.roles.map((r) => JSON.stringify({ type: 'role', ...r })),
      ...run.notes.map((n) => JSON.stringify({ type: 'fault', ...n })),
    ];
    writeFileSync(join(d, 'history.jsonl'), lines.join('\n') + '\n', { mode: 0o600 });
    writeFileSync(join(d, 'services.log'), run.serviceLog.join('\n') + '\n', { mode: 0o600 });
    writeFileSync(join(d, 'summary.json'), JSON.stringify({ ...base, ok: null, checks: 'not judged yet' }, null, 1) + '\n', { mode: 0o600 });
  }
  const verdict = checkLiveRun(run);
  const summary = { ...base, ok: verdict.ok, checks: verdict.checks, violations: verdict.violations };
  if (f.report) {
    const d = f.report;
    writeFileSync(join(d, 'index.html'), liveReportPage(run, verdict, rerun), { mode: 0o600 });
    writeFileSync(join(d, 'summary.json'), JSON.stringify(summary, null, 1) + '\n', { mode: 0o600 });
  }
  if (f.json) console.log(JSON.stringify(summary));
  else {
    console.log(`${verdict.ok ? 'held every check' : `FAILED: ${verdict.violations.length} violation${verdict.violations.length === 1 ? '' : 's'}`}: ${run.ops.length} operations, ${summary.faults} faults, ${duration(summary.seconds)} (${rerun})`);
    for (const c of verdict.checks) console.log(`  ${c.ok ? 'held  ' : 'FAILED'} ${c.name}: ${c.detail}`);
    for (const v of verdict.violations.slice(0, 20)) console.log(`  violation: ${v}`);
    if (verdict.violations.length > 20) console.log(`  (${verdict.violations.length - 20} more in the report)`);
    if (f.report) console.log(`report: ${join(f.report, 'index.html')}`);
  }
  return verdict.ok ? 0 : 1;
}

export const command: Command = {
  name: 'chaos',
  summary: 'fault campaigns: simulator seeds with shrunk reproductions, a nemesis over a real fleet, decoder fuzzing',
  help,
  async run(argv) {
    const [sub, ...rest] = argv;
    switch (sub) {
      case 'sim':
        return sim(rest);
      case 'fuzz':
        return fuzz(rest);
      case 'live':
        return live(rest);
      case undefined:
        console.error(help);
        return 2;
      default:
        throw new UsageError(`unknown chaos subcommand '${sub.slice(0, 40)}' (sim, live, fuzz)`);
    }
  },
};
