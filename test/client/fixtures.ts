// Shared by the client suites: temp dirs that are always removed, a small chat-backup-like folder,
// and an assertion that a failed restore left no trace beside or under --out.
import { mkdtemp, mkdir, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { expect } from 'vitest';

export async function withTemp<T>(fn: (dir: string) => Promise<T>): Promise<T> {
  const dir = await mkdtemp(join(tmpdir(), 'bkv-client-'));
  try {
    return await fn(dir);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

/** A folder shaped like a chat backup: nested dirs, an empty dir, an empty file, binary media. */
export async function makeChatFolder(root: string, mediaBytes = 20_000): Promise<void> {
  await mkdir(join(root, 'Databases'), { recursive: true });
  await mkdir(join(root, 'Media', 'Images'), { recursive: true });
  await mkdir(join(root, 'Media', 'Empty'), { recursive: true });
  await writeFile(join(root, 'Databases', 'msgstore.db'), randomBytes(7_777));
  await writeFile(join(root, 'Media', 'Images', 'IMG-0001 ü.jpg'), randomBytes(mediaBytes));
  await writeFile(join(root, 'Media', 'Images', 'IMG-0002.jpg'), randomBytes(1024)); // exactly one segment
  await writeFile(join(root, 'settings.json'), '{"theme":"dark"}');
  await writeFile(join(root, 'empty.txt'), '');
}

/** Every file and directory under root, with file contents as hex, for exact comparison. */
export async function snapshot(root: string): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  const walk = async (dir: string, prefix: string) => {
    for (const e of await readdir(dir, { withFileTypes: true })) {
      const rel = prefix ? `${prefix}/${e.name}` : e.name;
      if (e.isDirectory()) {
        out[`${rel}/`] = '';
        await walk(join(dir, e.name), rel);
      } else out[rel] = (await readFile(join(dir, e.name))).toString('hex');
    }
  };
  await walk(root, '');
  return out;
}

/** --out does not exist and nothing was left beside it (no temporary restore directory). */
export async function expectNoTrace(parent: string, outName: string, alsoExpected: string[]): Promise<void> {
  const names = (await readdir(parent)).sort();
  expect(names).toEqual([...alsoExpected].sort());
  expect(names).not.toContain(outName);
}
