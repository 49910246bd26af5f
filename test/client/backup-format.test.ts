import { describe, expect, it } from 'vitest';
import { createCipheriv, createHmac, hkdfSync } from 'node:crypto';
import { readFile, writeFile, mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import {
  backupKeyId, decryptBackup, encryptBackup, HEADER_BYTES, LABEL_ENCRYPTION, LABEL_HEADER_MAC, LABEL_KEY_ID, TAG_BYTES,
} from '../../client/backup-format.ts';
import { createBackup, restoreBackup } from '../../client/backup.ts';
import { CloudFolder } from '../../client/cloud.ts';
import { BackupError } from '../../client/errors.ts';
import { expectNoTrace, makeChatFolder, snapshot, withTemp } from './fixtures.ts';

const K = Uint8Array.from({ length: 32 }, (_, i) => i + 1);
const K2 = Uint8Array.from({ length: 32 }, (_, i) => 200 - i);
const SEG = 1024;

async function collect(gen: AsyncIterable<Uint8Array>): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const c of gen) parts.push(Buffer.from(c));
  return Buffer.concat(parts);
}

async function* once(b: Uint8Array): AsyncGenerator<Uint8Array> {
  yield b;
}

async function* chunked(b: Buffer, size: number): AsyncGenerator<Uint8Array> {
  for (let i = 0; i < b.length; i += size) yield b.subarray(i, i + size);
}

describe('HKDF-SHA256 (node:crypto) against RFC 5869', () => {
  it('matches test case A.1', () => {
    const okm = hkdfSync('sha256', Buffer.alloc(22, 0x0b), Buffer.from('000102030405060708090a0b0c', 'hex'),
      Buffer.from('f0f1f2f3f4f5f6f7f8f9', 'hex'), 42);
    expect(Buffer.from(okm).toString('hex')).toBe(
      '3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865');
  });
});

describe('backup file layout (as docs/backup-format.md specifies it)', () => {
  it('is byte-for-byte what the document describes', async () => {
    const salt = Buffer.alloc(32, 0x5a);
    const prefix = Buffer.from('01020304050607', 'hex');
    const plain = Buffer.alloc(2 * SEG + 10, 0x61);
    const ours = await collect(encryptBackup(once(plain), K, { mode: 'key64', segmentBytes: SEG, salt, noncePrefix: prefix }));

    // Rebuilt independently from the document.
    const h = Buffer.alloc(99);
    h.write('BKVBAK', 0, 'ascii');
    h[6] = 1;
    h[7] = 1;
    Buffer.from(hkdfSync('sha256', K, Buffer.alloc(0), Buffer.from(LABEL_KEY_ID), 16)).copy(h, 8);
    salt.copy(h, 24);
    prefix.copy(h, 56);
    h.writeUInt32BE(SEG, 63);
    const macKey = Buffer.from(hkdfSync('sha256', K, salt, Buffer.from(LABEL_HEADER_MAC), 32));
    createHmac('sha256', macKey).update(h.subarray(0, 67)).digest().copy(h, 67);
    const encKey = Buffer.from(hkdfSync('sha256', K, salt, Buffer.from(LABEL_ENCRYPTION), 32));
    const segs = [plain.subarray(0, SEG), plain.subarray(SEG, 2 * SEG), plain.subarray(2 * SEG)].map((p, i, all) => {
      const nonce = Buffer.concat([prefix, Buffer.from([0, 0, 0, i]), Buffer.from([i === all.length - 1 ? 1 : 0])]);
      const c = createCipheriv('aes-256-gcm', encKey, nonce);
      c.setAAD(h);
      return Buffer.concat([c.update(p), c.final(), c.getAuthTag()]);
    });
    expect(LABEL_KEY_ID).toBe('bkv backup v1 key id');
    expect(LABEL_ENCRYPTION).toBe('bkv backup v1 encryption');
    expect(LABEL_HEADER_MAC).toBe('bkv backup v1 header mac');
    expect(ours.toString('hex')).toBe(Buffer.concat([h, ...segs]).toString('hex'));
  });

  it('round-trips empty input, exact multiples of the segment and odd chunking', async () => {
    for (const n of [0, 1, SEG - 1, SEG, SEG + 1, 3 * SEG, 3 * SEG + 17]) {
      const plain = Buffer.from(Array.from({ length: n }, (_, i) => (i * 7) & 0xff));
      const ct = await collect(encryptBackup(chunked(plain, 100), K, { mode: 'password', segmentBytes: SEG }));
      // Segments: a full one is held until more data comes, so a multiple of SEG ends in a full last one.
      const segments = Math.max(1, Math.ceil(n / SEG));
      expect(ct.length).toBe(HEADER_BYTES + n + segments * TAG_BYTES);
      const back = await collect(decryptBackup(chunked(ct, 333), K));
      expect(back.equals(plain)).toBe(true);
    }
  });

  it('streams: output starts after a few input chunks, not after the whole input', async () => {
    const chunk = Buffer.alloc(SEG, 1);
    let pulled = 0;
    async function* source(n: number, of: Buffer[] | Buffer) {
      for (let i = 0; i < n; i++) {
        pulled++;
        yield Array.isArray(of) ? of[i]! : of;
      }
    }
    const enc = encryptBackup(source(200, chunk), K, { mode: 'key64', segmentBytes: SEG });
    const parts: Buffer[] = [];
    for await (const p of enc) {
      parts.push(p);
      if (parts.length === 3) expect(pulled).toBeLessThanOrEqual(3); // header + 2 segments
    }
    expect(pulled).toBe(200);
    // Feed the file back one stored segment per chunk.
    const pieces = [parts[0]!, ...parts.slice(1)];
    pulled = 0;
    let seen = 0;
    for await (const p of decryptBackup(source(pieces.length, pieces), K)) {
      seen++;
      if (seen === 2) expect(pulled).toBeLessThanOrEqual(4); // one segment of look-ahead
      expect(p.equals(chunk)).toBe(true);
    }
    expect(seen).toBe(200);
  });

  it('derives the key id from K alone and reveals nothing else', () => {
    expect(backupKeyId(K).equals(backupKeyId(Uint8Array.from(K)))).toBe(true);
    expect(backupKeyId(K).equals(backupKeyId(K2))).toBe(false);
    expect(backupKeyId(K).length).toBe(16);
  });
});

// ---- tampering: every attack on the file, through the real restore path --------------------------

interface Env {
  dir: string;
  cloud: CloudFolder;
  file: string;
  good: Buffer;
  other: Buffer; // another backup, same K
}

async function setup(dir: string): Promise<Env> {
  const input = join(dir, 'in');
  await mkdir(input);
  await makeChatFolder(input, 6_000);
  const cloud = new CloudFolder(join(dir, 'cloud'));
  await createBackup({ input, key: K, mode: 'key64', cloud, account: 'other', segmentBytes: SEG });
  await createBackup({ input, key: K, mode: 'key64', cloud, account: 'alice', segmentBytes: SEG });
  const file = join(dir, 'cloud', 'alice.bkv');
  return { dir, cloud, file, good: await readFile(file), other: await readFile(join(dir, 'cloud', 'other.bkv')) };
}

const CT = SEG + TAG_BYTES;
const segAt = (i: number) => HEADER_BYTES + i * CT;

async function expectRestoreFails(env: Env, bytes: Buffer, code: string, key = K): Promise<void> {
  await writeFile(env.file, bytes);
  const outParent = join(env.dir, 'restore');
  await mkdir(outParent, { recursive: true });
  const err = await restoreBackup({ key, cloud: env.cloud, account: 'alice', out: join(outParent, 'out') }).then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err, `expected ${code}`).toBeInstanceOf(BackupError);
  expect((err as BackupError).code).toBe(code);
  await expectNoTrace(outParent, 'out', []);
}

describe('restore detects every kind of tampering and writes nothing', () => {
  it('restores the untouched file (control)', async () => {
    await withTemp(async (dir) => {
      const env = await setup(dir);
      const r = await restoreBackup({ key: K, cloud: env.cloud, account: 'alice', out: join(dir, 'out') });
      expect(r.mode).toBe('key64');
      expect(await snapshot(join(dir, 'out'))).toEqual(await snapshot(join(dir, 'in')));
      expect(env.good.length).toBeGreaterThan(segAt(10)); // enough segments for the cases below
    });
  });

  it('wrong key: BACKUP_WRONG_KEY', async () => {
    await withTemp(async (dir) => {
      const env = await setup(dir);
      await expectRestoreFails(env, env.good, 'BACKUP_WRONG_KEY', K2);
    });
  });

  it('truncation at every segment boundary: BACKUP_TRUNCATED; inside the header too', async () => {
    await withTemp(async (dir) => {
      const env = await setup(dir);
      const segments = Math.ceil((env.good.length - HEADER_BYTES) / CT);
      for (let i = 0; i < segments; i++) await expectRestoreFails(env, env.good.subarray(0, segAt(i)), 'BACKUP_TRUNCATED');
      for (const n of [0, 1, 50, HEADER_BYTES - 1]) await expectRestoreFails(env, env.good.subarray(0, n), 'BACKUP_TRUNCATED');
    });
  });

  it('truncation inside a segment, or appended bytes: BACKUP_CORRUPT', async () => {
    await withTemp(async (dir) => {
      const env = await setup(dir);
      for (const cut of [segAt(0) + 1, segAt(3) + 500, segAt(3) + CT - 1, env.good.length - 1]) {
        await expectRestoreFails(env, env.good.subarray(0, cut), 'BACKUP_CORRUPT');
      }
      await expectRestoreFails(env, Buffer.concat([env.good, Buffer.from([0])]), 'BACKUP_CORRUPT');
      await expectRestoreFails(env, Buffer.concat([env.good, env.good.subarray(segAt(1), segAt(2))]), 'BACKUP_CORRUPT');
    });
  });

  it('reordered, dropped or duplicated segments: BACKUP_CORRUPT', async () => {
    await withTemp(async (dir) => {
      const env = await setup(dir);
      const g = env.good;
      const seg = (i: number) => g.subarray(segAt(i), segAt(i + 1));
      const swapped = Buffer.concat([g.subarray(0, segAt(2)), seg(3), seg(2), g.subarray(segAt(4))]);
      expect(swapped.length).toBe(g.length);
      await expectRestoreFails(env, swapped, 'BACKUP_CORRUPT');
      await expectRestoreFails(env, Buffer.concat([g.subarray(0, segAt(2)), g.subarray(segAt(3))]), 'BACKUP_CORRUPT');
      await expectRestoreFails(env, Buffer.concat([g.subarray(0, segAt(3)), seg(2), g.subarray(segAt(3))]), 'BACKUP_CORRUPT');
    });
  });

  it('a segment (or header, or body) from another backup under the same key: BACKUP_CORRUPT', async () => {
    await withTemp(async (dir) => {
      const env = await setup(dir);
      const { good: g, other: o } = env;
      expect(o.length).toBe(g.length); // same input, same layout: only the keys and nonces differ
      const spliced = Buffer.concat([g.subarray(0, segAt(4)), o.subarray(segAt(4), segAt(5)), g.subarray(segAt(5))]);
      await expectRestoreFails(env, spliced, 'BACKUP_CORRUPT');
      await expectRestoreFails(env, Buffer.concat([o.subarray(0, HEADER_BYTES), g.subarray(HEADER_BYTES)]), 'BACKUP_CORRUPT');
      const lastFromOther = Buffer.concat([g.subarray(0, segAt(10)), o.subarray(segAt(10))]);
      await expectRestoreFails(env, lastFromOther, 'BACKUP_CORRUPT');
    });
  });

  it('a flipped byte anywhere in the header is caught, with the code its field implies', async () => {
    await withTemp(async (dir) => {
      const env = await setup(dir);
      for (let pos = 0; pos < HEADER_BYTES; pos++) {
        const b = Buffer.from(env.good);
        b[pos]! ^= 0x01;
        const code = pos < 6 ? 'BACKUP_BAD_HEADER' : pos === 6 ? 'BACKUP_UNSUPPORTED_VERSION' : pos >= 8 && pos < 24 ? 'BACKUP_WRONG_KEY' : 'BACKUP_CORRUPT';
        await expectRestoreFails(env, b, code);
      }
    });
  });

  it('a flipped byte in the body (ciphertext or tag, any segment): BACKUP_CORRUPT', async () => {
    await withTemp(async (dir) => {
      const env = await setup(dir);
      for (const pos of [segAt(0), segAt(0) + 5, segAt(1) - 1, segAt(7) + 100, env.good.length - TAG_BYTES - 1, env.good.length - 1]) {
        const b = Buffer.from(env.good);
        b[pos]! ^= 0x80;
        await expectRestoreFails(env, b, 'BACKUP_CORRUPT');
      }
    });
  });
});
