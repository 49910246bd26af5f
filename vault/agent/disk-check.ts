// Opens and reads a replica's LMDB disk in a child process before the replica maps it. LMDB maps its
// file into memory: a flipped byte in a meta page, or a truncated file, can crash the process that
// maps it. Fleet replicas are threads of one process, so a bad disk must not be touched there first:
// the child takes the risk, and its death or error only marks that disk TAMPERED.
//   checkDisk(dir)                       -> { ok: true } | { ok: false; why }   (from any thread)
//   node bin/run.js vault/agent/disk-check.ts DIR   (the child: exit 0 readable, 3 refused)
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { fileURLToPath, pathToFileURL } from 'node:url';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const SELF = fileURLToPath(import.meta.url);

export type DiskCheck = { ok: true } | { ok: false; why: string };

/** Whether the LMDB environment at `dir` opens and reads end to end (a missing directory is fine: a new disk). */
export function checkDisk(dir: string, timeoutMs = 60_000): DiskCheck {
  if (!existsSync(dir)) return { ok: true };
  const r = spawnSync(process.execPath, ['bin/run.js', SELF, dir], { cwd: ROOT, encoding: 'utf8', timeout: timeoutMs, stdio: ['ignore', 'ignore', 'pipe'] });
  if (r.status === 0) return { ok: true };
  const said = (r.stderr ?? '').trim().split('\n').pop()?.slice(0, 200) ?? '';
  if (r.signal) return { ok: false, why: `reading it killed the checking process (${r.signal})${said ? `: ${said}` : ''}` };
  return { ok: false, why: said || `the check exited ${String(r.status)}` };
}

async function child(dir: string): Promise<number> {
  const { open } = await import('lmdb');
  try {
    const root = open({ path: dir, readOnly: true, cache: false, maxDbs: 4 });
    // The named databases the replica uses (the root's own keys are those databases' records).
    for (const name of ['log', 'meta']) {
      const db = root.openDB({ name, cache: false });
      for (const { value } of db.getRange({})) {
        if (value === undefined) throw new Error(`an item of ${name} does not decode`);
      }
    }
    await root.close();
    return 0;
  } catch (e) {
    process.stderr.write(`${(e as Error)?.message ?? String(e)}\n`);
    return 3;
  }
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const dir = process.argv[2];
  process.exitCode = dir ? await child(dir) : 2;
}
