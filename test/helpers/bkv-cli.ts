// The `bkv` command as a user runs it (a child process), and the page of a report as headless
// Chromium draws it: for the tests of `bkv chaos sim` and `bkv chaos live`.
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { decodePng } from './png.ts';

const bkv = fileURLToPath(new URL('../../bin/bkv.js', import.meta.url));

export function runBkv(...args: string[]): Promise<{ status: number | null; stdout: string; stderr: string }> {
  const p = spawn(process.execPath, [bkv, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '', stderr = '';
  p.stdout.on('data', (b: Buffer) => { stdout += b.toString(); });
  p.stderr.on('data', (b: Buffer) => { stderr += b.toString(); });
  return new Promise((resolve) => p.once('exit', (status) => resolve({ status, stdout, stderr })));
}

const chromium = spawnSync('sh', ['-c', 'command -v chromium'], { encoding: 'utf8' }).stdout.trim();

/** The page as headless Chromium draws it, or undefined (and a stated skip) where there is no Chromium. */
export function screenshot(page: string) {
  if (!chromium) {
    console.log('skipped the headless screenshot: chromium is not installed (scripts/setup.sh --test installs it)');
    return undefined;
  }
  const png = page.replace(/\.html$/, '.png');
  execFileSync(chromium, ['--headless', '--no-sandbox', '--disable-gpu', '--hide-scrollbars', '--window-size=1280,900', `--screenshot=${png}`, `file://${page}`], { stdio: 'ignore', timeout: 60_000 });
  return decodePng(readFileSync(png));
}
