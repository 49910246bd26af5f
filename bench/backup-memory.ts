// Peak memory of `bkv backup create` / `restore` as the backup grows: each step runs the real CLI code
// in a fresh process, and its peak RSS (getrusage maxrss) is compared with a plain streamed file copy
// of the same file in the same kind of process (the baseline: what any streaming tool must pay).
// Constant memory shows as a peak that stays flat from 64 MiB to 1 GiB.
//
//   node bin/run.js bench/backup-memory.ts [MiB ...]      (default 64 256 1024; JSON on stdout)
//
// Inputs are generated as a stream into os.tmpdir() and removed after each size.
import { spawn } from 'node:child_process';
import { createHash, randomFillSync } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import { mkdtemp, readFile, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { fileURLToPath } from 'node:url';

const MiB = 1024 * 1024;
const here = fileURLToPath(import.meta.url);
const runJs = fileURLToPath(new URL('../bin/run.js', import.meta.url));

interface Step {
  peakRssMiB: number;
  seconds: number;
  MiBps: number;
}

// ---- child side: run one step, record peak RSS -------------------------------------------------

async function child(kind: string, args: string[]): Promise<void> {
  const started = performance.now();
  let code = 0;
  if (kind === 'cli') {
    const { main } = await import('../scripts/bkv.ts');
    code = await main(args);
  } else if (kind === 'copy') {
    await pipeline(createReadStream(args[0]!), createWriteStream(args[1]!));
  } else if (kind === 'idle') {
    // Startup cost only: tsx plus the modules the CLI loads.
    await import('../scripts/commands/backup.ts');
  }
  const seconds = (performance.now() - started) / 1000;
  const { writeFile } = await import('node:fs/promises');
  await writeFile(process.env['BKV_BENCH_RSS_FILE']!, JSON.stringify({ maxRssKiB: process.resourceUsage().maxRSS, seconds, code }));
  process.exitCode = code;
}

function runChild(kind: string, args: string[], rssFile: string, stdin = ''): Promise<{ stdout: string; stderr: string; status: number | null }> {
  return new Promise((resolve, reject) => {
    const c = spawn(process.execPath, [runJs, here, '--child', kind, ...args], {
      env: { ...process.env, BKV_BENCH_RSS_FILE: rssFile },
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    c.stdout.on('data', (d) => (stdout += d));
    c.stderr.on('data', (d) => (stderr += d));
    c.on('error', reject);
    c.on('close', (status) => resolve({ stdout, stderr, status }));
    c.stdin.end(stdin);
  });
}

async function measure(kind: string, args: string[], dir: string, bytes: number, stdin = ''): Promise<Step & { stdout: string }> {
  const rssFile = join(dir, `rss-${kind}-${Date.now()}.json`);
  const r = await runChild(kind, args, rssFile, stdin);
  if (r.status !== 0) throw new Error(`${kind} ${args[0] ?? ''} ${args[1] ?? ''} failed (${r.status}): ${r.stderr.slice(0, 500)}`);
  const m = JSON.parse(await readFile(rssFile, 'utf8')) as { maxRssKiB: number; seconds: number };
  await rm(rssFile);
  return {
    peakRssMiB: +(m.maxRssKiB / 1024).toFixed(1),
    seconds: +m.seconds.toFixed(2),
    MiBps: bytes ? +(bytes / MiB / m.seconds).toFixed(1) : 0,
    stdout: r.stdout,
  };
}

// ---- parent side ---------------------------------------------------------------------------------

async function generate(path: string, bytes: number): Promise<string> {
  const hash = createHash('sha256');
  async function* chunks() {
    for (let left = bytes; left > 0; left -= MiB) {
      const b = randomFillSync(Buffer.allocUnsafe(Math.min(MiB, left))); // incompressible, fresh each time
      hash.update(b);
      yield b;
    }
  }
  await pipeline(chunks(), createWriteStream(path));
  return hash.digest('hex');
}

async function sha256(path: string): Promise<string> {
  const h = createHash('sha256');
  for await (const c of createReadStream(path)) h.update(c as Buffer);
  return h.digest('hex');
}

const strip = ({ stdout: _s, ...step }: Step & { stdout: string }): Step => step;

async function benchSize(mib: number) {
  const dir = await mkdtemp(join(tmpdir(), 'bkv-bench-'));
  try {
    const input = join(dir, 'chat.db');
    const bytes = mib * MiB;
    const digest = await generate(input, bytes);
    const baselineCopy = await measure('copy', [input, join(dir, 'copy.db')], dir, bytes);
    await rm(join(dir, 'copy.db'));
    const create = await measure('cli', ['backup', 'create', '--in', input, '--key64', '--state', join(dir, 'st')], dir, bytes);
    const key = [...create.stdout.matchAll(/^ {4}([0-9a-f]{4}(?: [0-9a-f]{4}){3})$/gm)].map((m) => m[1]).join(' ');
    const cloudBytes = (await stat(join(dir, 'st', 'cloud', 'default.bkv'))).size;
    await rm(input); // keep disk use at two copies
    const restore = await measure('cli', ['backup', 'restore', '--key64', '-', '--state', join(dir, 'st'), '--out', join(dir, 'out')], dir, bytes, key);
    const verified = (await sha256(join(dir, 'out', 'chat.db'))) === digest;
    return { MiB: mib, cloudBytes, overheadBytes: cloudBytes - bytes, verified, baselineCopy: strip(baselineCopy), create: strip(create), restore: strip(restore) };
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

async function parent(sizes: number[]): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), 'bkv-bench-'));
  let idle: Step;
  try {
    idle = strip(await measure('idle', [], dir, 0));
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
  const results = [];
  for (const mib of sizes) {
    process.stderr.write(`backup-memory: ${mib} MiB...\n`);
    results.push(await benchSize(mib));
  }
  const first = results[0]!;
  const last = results[results.length - 1]!;
  console.log(JSON.stringify({
    bench: 'backup-memory',
    node: process.version,
    segmentBytes: 65536,
    note: 'peak RSS per process (getrusage maxrss); each step is a fresh process running the real CLI code; baselineCopy = fs stream copy of the same file in the same kind of process',
    processStartupPeakRssMiB: idle.peakRssMiB,
    sizes: results,
    growthFromSmallestToLargestMiB: {
      create: +(last.create.peakRssMiB - first.create.peakRssMiB).toFixed(1),
      restore: +(last.restore.peakRssMiB - first.restore.peakRssMiB).toFixed(1),
      baselineCopy: +(last.baselineCopy.peakRssMiB - first.baselineCopy.peakRssMiB).toFixed(1),
    },
  }, null, 2));
}

const argv = process.argv.slice(2);
if (argv[0] === '--child') await child(argv[1]!, argv.slice(2));
else await parent(argv.length ? argv.map(Number) : [64, 256, 1024]);
