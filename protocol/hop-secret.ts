// The shared secrets of the local hops that are not device traffic: ChatD -> vault (the relay key),
// operator -> fleet (the operator key: status and faults) and scraper -> /metrics of the vault, the
// fleet and ChatD (the metrics key: reading metrics only, so ChatD, which is not trusted, can hold
// it without being able to inject a fault). Each is 32 random bytes in a 0600 file in the state
// directory, made by whoever needs it first; anyone who can read the state directory is already
// the vault's host, so the file system is the boundary. Sent as `authorization: Bearer <hex>`.
import { randomBytes, timingSafeEqual } from 'node:crypto';
import { chmodSync, mkdirSync, openSync, readFileSync, writeSync, closeSync } from 'node:fs';
import { join } from 'node:path';
import { InputError } from './errors.ts';

export type HopSecretName = 'relay' | 'operator' | 'metrics';

export function hopSecretPath(stateDir: string, name: HopSecretName): string {
  return join(stateDir, `${name}.key`);
}

/** The secret (64 hex characters), created atomically with mode 0600 when missing. */
export function hopSecret(stateDir: string, name: HopSecretName): string {
  const path = hopSecretPath(stateDir, name);
  mkdirSync(stateDir, { recursive: true, mode: 0o700 });
  try {
    const fd = openSync(path, 'wx', 0o600);
    try {
      writeSync(fd, randomBytes(32).toString('hex') + '\n');
    } finally {
      closeSync(fd);
    }
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
  }
  chmodSync(path, 0o600);
  const v = readFileSync(path, 'utf8').trim();
  if (!/^[0-9a-f]{64}$/.test(v)) throw new InputError(`${path} is not a bkv hop secret (64 hex digits); remove it and start again`, 'STATE_CORRUPT');
  return v;
}

export function bearer(secret: string): string {
  return `Bearer ${secret}`;
}

/** Whether an Authorization header carries the secret (constant time in the secret). */
export function bearerMatches(header: string | string[] | undefined, secret: string): boolean {
  if (typeof header !== 'string' || !header.startsWith('Bearer ')) return false;
  const got = Buffer.from(header.slice(7));
  const want = Buffer.from(secret);
  return got.length === want.length && timingSafeEqual(got, want);
}
