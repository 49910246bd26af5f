// The encrypted backup file (docs/backup-format.md is the normative description; keep them in step):
// a 99-byte versioned header, then the body as a STREAM (Hoang, Reyhanitabar, Rogaway, Vizár 2015)
// of AES-256-GCM segments. Every check a reader makes is here, in the order the doc lists them.
import { createCipheriv, createDecipheriv, createHmac, hkdfSync, randomBytes, timingSafeEqual } from 'node:crypto';
import { BackupError } from './errors.ts';
import { ByteReader } from './byte-reader.ts';
import { KEY_BYTES } from './key64.ts';

export const MAGIC = Buffer.from('BKVBAK', 'ascii');
export const FORMAT_VERSION = 1;
export const HEADER_BYTES = 99;
const AUTHED_BYTES = 67; // header bytes covered by the header tag
export const TAG_BYTES = 16;
export const NONCE_PREFIX_BYTES = 7;
export const SALT_BYTES = 32;
export const KEY_ID_BYTES = 16;
export const DEFAULT_SEGMENT_BYTES = 64 * 1024;
export const MIN_SEGMENT_BYTES = 1024;
export const MAX_SEGMENT_BYTES = 16 * 1024 * 1024;
const MAX_SEGMENTS = 2 ** 32; // the counter is 32 bits

// HKDF-SHA256 (RFC 5869) info labels. Changing one is a format version change.
export const LABEL_KEY_ID = 'bkv backup v1 key id';
export const LABEL_ENCRYPTION = 'bkv backup v1 encryption';
export const LABEL_HEADER_MAC = 'bkv backup v1 header mac';

export type BackupMode = 'key64' | 'password';
const MODE_BYTE: Record<BackupMode, number> = { key64: 1, password: 2 };

export interface BackupHeader {
  version: number;
  /** 'unknown' only from parseHeader on a header not yet authenticated. */
  mode: BackupMode | 'unknown';
  keyId: Buffer;
  salt: Buffer;
  noncePrefix: Buffer;
  segmentBytes: number;
  /** The 99 bytes as stored: the AAD of every segment. */
  raw: Buffer;
}

function hkdf(ikm: Uint8Array, salt: Uint8Array, info: string, length: number): Buffer {
  return Buffer.from(hkdfSync('sha256', ikm, salt, Buffer.from(info, 'ascii'), length));
}

function checkKey(key: Uint8Array): void {
  if (key.length !== KEY_BYTES) throw new TypeError(`backup key must be ${KEY_BYTES} bytes`);
}

/** Names K without revealing it: HKDF-SHA256(K, salt = none, info = LABEL_KEY_ID), 16 bytes. */
export function backupKeyId(key: Uint8Array): Buffer {
  checkKey(key);
  return hkdf(key, Buffer.alloc(0), LABEL_KEY_ID, KEY_ID_BYTES);
}

function fileKeys(key: Uint8Array, salt: Buffer): { enc: Buffer; mac: Buffer } {
  return { enc: hkdf(key, salt, LABEL_ENCRYPTION, 32), mac: hkdf(key, salt, LABEL_HEADER_MAC, 32) };
}

/** nonce = prefix (7) || segment counter (u32 BE) || last-segment flag (0x00 / 0x01). */
export function segmentNonce(prefix: Buffer, counter: number, last: boolean): Buffer {
  const n = Buffer.alloc(12);
  prefix.copy(n, 0);
  n.writeUInt32BE(counter, 7);
  n[11] = last ? 1 : 0;
  return n;
}

export interface EncryptOptions {
  mode: BackupMode;
  segmentBytes?: number;
  /** Only for conformance tests that rebuild a file from the spec; real callers get fresh randomness. */
  salt?: Buffer;
  noncePrefix?: Buffer;
}

function buildHeader(key: Uint8Array, opts: EncryptOptions): { header: BackupHeader; enc: Buffer } {
  const segmentBytes = opts.segmentBytes ?? DEFAULT_SEGMENT_BYTES;
  if (!Number.isInteger(segmentBytes) || segmentBytes < MIN_SEGMENT_BYTES || segmentBytes > MAX_SEGMENT_BYTES) {
    throw new RangeError(`segment size must be ${MIN_SEGMENT_BYTES}..${MAX_SEGMENT_BYTES} bytes`);
  }
  const salt = opts.salt ?? randomBytes(SALT_BYTES);
  const noncePrefix = opts.noncePrefix ?? randomBytes(NONCE_PREFIX_BYTES);
  const raw = Buffer.alloc(HEADER_BYTES);
  MAGIC.copy(raw, 0);
  raw[6] = FORMAT_VERSION;
  raw[7] = MODE_BYTE[opts.mode];
  const keyId = backupKeyId(key);
  keyId.copy(raw, 8);
  salt.copy(raw, 24);
  noncePrefix.copy(raw, 56);
  raw.writeUInt32BE(segmentBytes, 63);
  const { enc, mac } = fileKeys(key, salt);
  createHmac('sha256', mac).update(raw.subarray(0, AUTHED_BYTES)).digest().copy(raw, AUTHED_BYTES);
  return { header: { version: FORMAT_VERSION, mode: opts.mode, keyId, salt, noncePrefix, segmentBytes, raw }, enc };
}

function sealSegment(enc: Buffer, header: BackupHeader, counter: number, last: boolean, plain: Buffer): Buffer {
  if (counter >= MAX_SEGMENTS) throw new BackupError('BACKUP_BAD_INPUT', 'backup too large for the segment counter');
  const c = createCipheriv('aes-256-gcm', enc, segmentNonce(header.noncePrefix, counter, last));
  c.setAAD(header.raw);
  const body = c.update(plain);
  c.final();
  return Buffer.concat([body, c.getAuthTag()]);
}

/**
 * Encrypts a plaintext stream into a backup file stream: the header, then segments. A full segment is
 * held back until the next byte arrives, because only then do we know it is not the last one.
 */
export async function* encryptBackup(
  source: AsyncIterable<Uint8Array>,
  key: Uint8Array,
  opts: EncryptOptions,
): AsyncGenerator<Buffer> {
  checkKey(key);
  const { header, enc } = buildHeader(key, opts);
  const size = header.segmentBytes;
  yield header.raw;
  let seg = Buffer.allocUnsafe(size);
  let fill = 0;
  let counter = 0;
  for await (const chunk of source) {
    let off = 0;
    while (off < chunk.length) {
      if (fill === size) {
        yield sealSegment(enc, header, counter++, false, seg);
        fill = 0;
      }
      const take = Math.min(size - fill, chunk.length - off);
      seg.set(chunk.subarray(off, off + take), fill);
      fill += take;
      off += take;
    }
  }
  yield sealSegment(enc, header, counter, true, seg.subarray(0, fill));
}

/** Reads and syntax-checks a header without a key: enough to tell the mode (an unauthenticated hint). */
export function parseHeader(raw: Buffer): BackupHeader {
  if (raw.length < HEADER_BYTES) {
    if (raw.length >= MAGIC.length && !raw.subarray(0, MAGIC.length).equals(MAGIC)) {
      throw new BackupError('BACKUP_BAD_HEADER', 'not a bkv backup file (bad magic)');
    }
    throw new BackupError('BACKUP_TRUNCATED', `backup file ends inside its header (${raw.length} of ${HEADER_BYTES} bytes)`);
  }
  if (!raw.subarray(0, MAGIC.length).equals(MAGIC)) {
    throw new BackupError('BACKUP_BAD_HEADER', 'not a bkv backup file (bad magic)');
  }
  if (raw[6] !== FORMAT_VERSION) {
    throw new BackupError('BACKUP_UNSUPPORTED_VERSION', `backup format version ${raw[6]} is not supported (this bkv reads version ${FORMAT_VERSION})`);
  }
  const modeByte = raw[7];
  const mode = (Object.keys(MODE_BYTE) as BackupMode[]).find((m) => MODE_BYTE[m] === modeByte);
  const segmentBytes = raw.readUInt32BE(63);
  return {
    version: raw[6]!,
    // An unknown mode or segment size is reported once the header tag proves it is not damage.
    mode: mode ?? 'unknown',
    keyId: Buffer.from(raw.subarray(8, 24)),
    salt: Buffer.from(raw.subarray(24, 56)),
    noncePrefix: Buffer.from(raw.subarray(56, 63)),
    segmentBytes,
    raw: Buffer.from(raw.subarray(0, HEADER_BYTES)),
  };
}

/** Checks the header against K: key id, then header tag, then field ranges. Returns the payload key. */
export function authenticateHeader(header: BackupHeader, key: Uint8Array): Buffer {
  checkKey(key);
  if (!timingSafeEqual(backupKeyId(key), header.keyId)) {
    throw new BackupError('BACKUP_WRONG_KEY', 'this key does not open this backup (key id mismatch)');
  }
  const { enc, mac } = fileKeys(key, header.salt);
  const want = createHmac('sha256', mac).update(header.raw.subarray(0, AUTHED_BYTES)).digest();
  if (!timingSafeEqual(want, header.raw.subarray(AUTHED_BYTES, HEADER_BYTES))) {
    throw new BackupError('BACKUP_CORRUPT', 'backup header failed authentication (damaged or altered)');
  }
  if (header.mode === 'unknown') {
    throw new BackupError('BACKUP_BAD_HEADER', `unknown protection mode byte ${header.raw[7]}`);
  }
  if (header.segmentBytes < MIN_SEGMENT_BYTES || header.segmentBytes > MAX_SEGMENT_BYTES) {
    throw new BackupError('BACKUP_BAD_HEADER', `segment size ${header.segmentBytes} out of range`);
  }
  return enc;
}

function openSegment(enc: Buffer, header: BackupHeader, counter: number, last: boolean, ct: Buffer): Buffer | undefined {
  if (ct.length < TAG_BYTES) return undefined;
  const d = createDecipheriv('aes-256-gcm', enc, segmentNonce(header.noncePrefix, counter, last));
  d.setAAD(header.raw);
  d.setAuthTag(ct.subarray(ct.length - TAG_BYTES));
  const plain = d.update(ct.subarray(0, ct.length - TAG_BYTES));
  try {
    d.final();
  } catch {
    return undefined;
  }
  return plain;
}

export interface DecryptOptions {
  /** Called once with the authenticated header, before any plaintext is yielded. */
  onHeader?: (header: BackupHeader) => void;
}

/**
 * Decrypts a backup file stream. Each yielded chunk is one authenticated segment, but the stream as a
 * whole is only proven complete when the generator returns: a consumer must not commit anything
 * before that (restore writes to a temporary directory for this reason).
 */
export async function* decryptBackup(
  source: AsyncIterable<Uint8Array>,
  key: Uint8Array,
  opts: DecryptOptions = {},
): AsyncGenerator<Buffer> {
  const reader = new ByteReader(source);
  try {
    const header = parseHeader(await reader.read(HEADER_BYTES));
    const enc = authenticateHeader(header, key);
    opts.onHeader?.(header);
    const ctSize = header.segmentBytes + TAG_BYTES;
    for (let counter = 0; ; counter++) {
      const ct = await reader.read(ctSize);
      // A segment is the last one exactly when nothing follows it.
      const last = ct.length < ctSize || (await reader.atEnd());
      if (last && ct.length === 0) {
        throw new BackupError('BACKUP_TRUNCATED', counter === 0
          ? 'backup file ends right after its header'
          : `backup file ends after segment ${counter - 1}, which is not marked last`);
      }
      if (counter >= MAX_SEGMENTS) throw new BackupError('BACKUP_CORRUPT', 'backup has more segments than the counter allows');
      const plain = openSegment(enc, header, counter, last, ct);
      if (!plain) {
        // Only to tell the user why: a final segment that opens as non-final means the file was cut
        // exactly at a segment boundary.
        if (last && ct.length === ctSize && openSegment(enc, header, counter, false, ct)) {
          throw new BackupError('BACKUP_TRUNCATED', `backup file ends after segment ${counter}, which is not marked last`);
        }
        throw new BackupError('BACKUP_CORRUPT', `segment ${counter} failed authentication (damaged, reordered, truncated or from another file)`);
      }
      if (plain.length > 0) yield plain;
      if (last) return;
    }
  } finally {
    await reader.close();
  }
}
