// The cloud folder: a directory standing in for Google Drive or iCloud. It holds only ciphertext and
// is not trusted. Uploads are atomic: bytes go to a temporary name in the same directory, are fsynced,
// then renamed over the final name (and the directory fsynced), so a crash at any point leaves either
// the old object or the new one under the final name, never a part of one.
import { randomBytes } from 'node:crypto';
import { createReadStream, type ReadStream } from 'node:fs';
import { mkdir, open, readdir, rename, stat, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { finished, pipeline } from 'node:stream/promises';
import { BackupError } from './errors.ts';

// Object names: no path separators, no leading dot (dot-names are our temporaries).
const OBJECT_NAME = /^[A-Za-z0-9_@+=-][A-Za-z0-9._@+=-]{0,199}$/;
const TEMP_MARK = '.upload-';

export function checkObjectName(name: string): void {
  if (!OBJECT_NAME.test(name) || name.includes('..')) {
    throw new BackupError('CLOUD_BAD_NAME', `cloud object name ${JSON.stringify(name.slice(0, 80))} is not allowed (letters, digits, . _ @ + = -; no leading dot)`);
  }
}

export interface CloudFolderOptions {
  /**
   * Wraps the stream that writes an upload's temporary file. Tests use it to inject a write failure
   * (the only way to simulate a crash mid-upload in-process); production leaves it unset.
   */
  wrapUploadStream?: (w: Writable) => Writable;
}

export interface CloudObject {
  name: string;
  bytes: number;
  modified: Date;
}

export class CloudFolder {
  constructor(readonly dir: string, private readonly opts: CloudFolderOptions = {}) {}

  /** Stores `source` under `name`, atomically replacing any existing object. Returns bytes written. */
  async put(name: string, source: AsyncIterable<Uint8Array>): Promise<number> {
    checkObjectName(name);
    // The cloud stand-in sits in the private state directory by default; it stays as private.
    await mkdir(this.dir, { recursive: true, mode: 0o700 });
    const temp = join(this.dir, `.${name}${TEMP_MARK}${randomBytes(6).toString('hex')}`);
    const fh = await open(temp, 'wx', 0o600);
    let bytes = 0;
    let closed = false;
    let inflight: Promise<unknown> = Promise.resolve();
    const sink = new Writable({
      highWaterMark: 256 * 1024,
      write(chunk: Buffer, _enc, cb) {
        inflight = fh.write(chunk).then(() => {
          bytes += chunk.length;
          cb();
        }, cb);
      },
    });
    // Failures reach us through pipeline/finished; a wrapper may still write after we gave up.
    sink.on('error', () => {});
    try {
      await pipeline(source, this.opts.wrapUploadStream ? this.opts.wrapUploadStream(sink) : sink);
      await finished(sink); // a wrapper's pipeline may finish before the sink has every byte
      await fh.sync();
      await fh.close();
      closed = true;
      await rename(temp, join(this.dir, name));
      await syncDir(this.dir);
      return bytes;
    } catch (e) {
      sink.destroy();
      await inflight.catch(() => {});
      if (!closed) await fh.close().catch(() => {});
      await unlink(temp).catch(() => {});
      throw e;
    }
  }

  /** A read stream of the object; BACKUP_NOT_FOUND if there is none. */
  async get(name: string): Promise<{ stream: ReadStream; bytes: number }> {
    checkObjectName(name);
    const s = await this.stat(name);
    if (!s) throw new BackupError('BACKUP_NOT_FOUND', `no object ${JSON.stringify(name)} in cloud folder '${this.dir}'`);
    return { stream: createReadStream(join(this.dir, name), { highWaterMark: 64 * 1024 }), bytes: s.bytes };
  }

  async stat(name: string): Promise<CloudObject | undefined> {
    checkObjectName(name);
    try {
      const s = await stat(join(this.dir, name));
      return s.isFile() ? { name, bytes: s.size, modified: s.mtime } : undefined;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw e;
    }
  }

  /** Finished objects only; temporaries of running or crashed uploads are not listed. */
  async list(): Promise<CloudObject[]> {
    let names: string[];
    try {
      names = await readdir(this.dir);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return [];
      throw e;
    }
    const out: CloudObject[] = [];
    for (const n of names.sort()) {
      if (!OBJECT_NAME.test(n)) continue;
      const s = await this.stat(n);
      if (s) out.push(s);
    }
    return out;
  }

  /** Removes the object; false if there was none. */
  async delete(name: string): Promise<boolean> {
    checkObjectName(name);
    try {
      await unlink(join(this.dir, name));
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return false;
      throw e;
    }
    await syncDir(this.dir);
    return true;
  }
}

/** Makes a rename or unlink durable: fsync of the directory that holds the entry. */
export async function syncDir(dir: string): Promise<void> {
  const d = await open(dir, 'r');
  try {
    await d.sync();
  } finally {
    await d.close();
  }
}
