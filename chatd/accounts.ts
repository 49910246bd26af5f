// Device accounts: one bearer token per phone number. The store keeps only SHA-256(token), so a copy
// of the state directory does not let anyone act as a device. Writes are atomic (temp file, fsync,
// rename) under a lock file, so `bkv account ...` can run while ChatD is serving; ChatD re-reads the
// file when it changes, so a revocation takes effect on the next request.
import { createHash, randomBytes } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import { dirname, join } from 'node:path';
import {
  AccountExistsError,
  AccountNotFoundError,
  AccountStoreBusyError,
  AccountStoreError,
  InvalidPhoneError,
} from './errors.ts';

export const ACCOUNTS_FILE_VERSION = 1;

/** `<stateDir>/chatd/accounts.json` */
export function accountsPath(stateDir: string): string {
  return join(stateDir, 'chatd', 'accounts.json');
}

// E.164: '+', a non-zero country digit, at most 15 digits in all. The floor of 8 digits keeps out
// obvious junk; the result is also a valid relay user id (protocol/relay.ts).
const PHONE_RE = /^\+[1-9][0-9]{7,14}$/;

export function validatePhone(phone: unknown): string {
  if (typeof phone !== 'string' || !PHONE_RE.test(phone)) {
    throw new InvalidPhoneError('phone number must be E.164: + then 8 to 15 digits, e.g. +15551234567');
  }
  return phone;
}

const TOKEN_PREFIX = 'bkvt_';
const TOKEN_RE = /^bkvt_[A-Za-z0-9_-]{43}$/;

export function newToken(): string {
  return TOKEN_PREFIX + randomBytes(32).toString('base64url');
}

/** Whether a presented string is shaped like a token at all (checked before hashing it). */
export function isTokenShaped(s: string): boolean {
  return TOKEN_RE.test(s);
}

export function tokenHash(token: string): string {
  return createHash('sha256').update(token, 'utf8').digest('hex');
}

/** What logs may show of an account: a prefix of its token's hash, never the token or the phone. */
export function accountTag(hash: string): string {
  return hash.slice(0, 12);
}

export interface AccountRecord {
  phone: string;
  /** SHA-256 of the bearer token, hex. */
  tokenSha256: string;
  created: string;
  /** Set when revoked; a revoked account authenticates nothing. */
  revoked?: string;
}

interface AccountsFile {
  v: typeof ACCOUNTS_FILE_VERSION;
  accounts: AccountRecord[];
}

const HASH_RE = /^[0-9a-f]{64}$/;

function parseAccounts(text: string, path: string): AccountsFile {
  let m: unknown;
  try {
    m = JSON.parse(text);
  } catch (e) {
    throw new AccountStoreError(`account store ${path} is not valid JSON`, { cause: e });
  }
  const f = m as Partial<AccountsFile> | null;
  if (typeof f !== 'object' || f === null || f.v !== ACCOUNTS_FILE_VERSION || !Array.isArray(f.accounts)) {
    throw new AccountStoreError(`account store ${path} has an unknown format (want v${ACCOUNTS_FILE_VERSION})`);
  }
  const phones = new Set<string>();
  for (const a of f.accounts as unknown[]) {
    const r = a as Partial<AccountRecord> | null;
    if (
      typeof r !== 'object' || r === null ||
      typeof r.phone !== 'string' || !PHONE_RE.test(r.phone) ||
      typeof r.tokenSha256 !== 'string' || !HASH_RE.test(r.tokenSha256) ||
      typeof r.created !== 'string' ||
      (r.revoked !== undefined && typeof r.revoked !== 'string')
    ) {
      throw new AccountStoreError(`account store ${path} holds a malformed account entry`);
    }
    if (phones.has(r.phone)) throw new AccountStoreError(`account store ${path} lists ${r.phone} twice`);
    phones.add(r.phone);
  }
  return f as AccountsFile;
}

async function readAccounts(path: string): Promise<AccountsFile> {
  let text: string;
  try {
    text = await fsp.readFile(path, 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return { v: ACCOUNTS_FILE_VERSION, accounts: [] };
    throw new AccountStoreError(`cannot read account store ${path}: ${(e as Error).message}`, { cause: e });
  }
  return parseAccounts(text, path);
}

async function writeAtomic(path: string, data: string): Promise<void> {
  const tmp = `${path}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`;
  const fh = await fsp.open(tmp, 'wx', 0o600);
  try {
    await fh.writeFile(data, 'utf8');
    await fh.sync();
  } finally {
    await fh.close();
  }
  try {
    await fsp.rename(tmp, path);
  } catch (e) {
    await fsp.rm(tmp, { force: true });
    throw e;
  }
  // The rename is durable only once the directory entry is.
  const dh = await fsp.open(dirname(path), 'r');
  try {
    await dh.sync();
  } finally {
    await dh.close();
  }
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function withLock<T>(path: string, waitMs: number, fn: () => Promise<T>): Promise<T> {
  const lock = `${path}.lock`;
  await fsp.mkdir(dirname(path), { recursive: true, mode: 0o700 });
  for (let attempt = 0; ; attempt++) {
    try {
      const fh = await fsp.open(lock, 'wx', 0o600);
      await fh.writeFile(String(process.pid));
      await fh.close();
      break;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
      if (await lockIsStale(lock)) {
        await fsp.rm(lock, { force: true });
        continue;
      }
      if (attempt * 20 >= waitMs) throw new AccountStoreBusyError(lock);
      await sleep(20);
    }
  }
  try {
    return await fn();
  } finally {
    await fsp.rm(lock, { force: true });
  }
}

// A lock left by a process that died (crash, kill -9) must not wedge the store for good.
async function lockIsStale(lock: string): Promise<boolean> {
  let pid: number;
  try {
    pid = Number.parseInt(await fsp.readFile(lock, 'utf8'), 10);
  } catch {
    return false; // just released, or being written: retry
  }
  if (!Number.isInteger(pid) || pid <= 0) return false;
  try {
    process.kill(pid, 0);
    return false;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'ESRCH';
  }
}

/** The account store as the CLI uses it: every call reads, changes and atomically rewrites the file. */
export class AccountStore {
  readonly path: string;
  private readonly lockWaitMs: number;
  /** `lockWaitMs`: how long to wait for another writer's lock before AccountStoreBusyError (2 s). */
  constructor(stateDir: string, opts: { lockWaitMs?: number } = {}) {
    this.path = accountsPath(stateDir);
    this.lockWaitMs = opts.lockWaitMs ?? 2000;
  }

  /** Issues a token for `phone`. The token is returned once and stored only as its hash. */
  async create(phone: string, now = new Date()): Promise<{ phone: string; token: string; tag: string }> {
    validatePhone(phone);
    return withLock(this.path, this.lockWaitMs, async () => {
      const f = await readAccounts(this.path);
      const existing = f.accounts.find((a) => a.phone === phone);
      if (existing && !existing.revoked) throw new AccountExistsError(phone);
      const token = newToken();
      const rec: AccountRecord = { phone, tokenSha256: tokenHash(token), created: now.toISOString() };
      f.accounts = [...f.accounts.filter((a) => a.phone !== phone), rec];
      await writeAtomic(this.path, JSON.stringify(f, null, 2) + '\n');
      return { phone, token, tag: accountTag(rec.tokenSha256) };
    });
  }

  async revoke(phone: string, now = new Date()): Promise<void> {
    validatePhone(phone);
    await withLock(this.path, this.lockWaitMs, async () => {
      const f = await readAccounts(this.path);
      const rec = f.accounts.find((a) => a.phone === phone);
      if (!rec || rec.revoked) throw new AccountNotFoundError(phone);
      rec.revoked = now.toISOString();
      await writeAtomic(this.path, JSON.stringify(f, null, 2) + '\n');
    });
  }

  async list(): Promise<AccountRecord[]> {
    return (await readAccounts(this.path)).accounts;
  }
}

export interface AuthenticatedAccount {
  /** The user id ChatD forwards to the vault: the phone number, as registered. */
  user: string;
  /** accountTag(token hash), for logs. */
  tag: string;
  /** SHA-256 of the token, so a session can be re-checked without keeping the token. */
  hash: string;
}

/**
 * ChatD's read side: token hash -> account, re-read whenever the file changes (new inode after an
 * atomic rename, or new mtime/size). A store that cannot be read fails closed: it authenticates nobody.
 */
export class AccountIndex {
  readonly path: string;
  private byHash = new Map<string, AuthenticatedAccount>();
  private stamp = '';

  constructor(stateDir: string) {
    this.path = accountsPath(stateDir);
  }

  /** Loads the file now; throws AccountStoreError if it is malformed. */
  async load(): Promise<void> {
    await this.refresh();
  }

  async authenticate(token: string): Promise<AuthenticatedAccount | undefined> {
    await this.refresh();
    if (!isTokenShaped(token)) return undefined;
    // Looked up by hash: timing can reveal at most something about SHA-256(token), not the token.
    return this.byHash.get(tokenHash(token));
  }

  /** Whether an account authenticated earlier (e.g. at a WebSocket's open) is still active. */
  async stillActive(acct: AuthenticatedAccount): Promise<boolean> {
    await this.refresh();
    return this.byHash.has(acct.hash);
  }

  private async refresh(): Promise<void> {
    let stamp: string;
    try {
      const st = await fsp.stat(this.path);
      stamp = `${st.ino}:${st.size}:${st.mtimeMs}`;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') {
        this.fail();
        throw new AccountStoreError(`cannot stat account store ${this.path}`, { cause: e });
      }
      stamp = 'absent';
    }
    if (stamp === this.stamp) return;
    let f: AccountsFile;
    try {
      f = await readAccounts(this.path);
    } catch (e) {
      this.fail();
      throw e;
    }
    const next = new Map<string, AuthenticatedAccount>();
    for (const a of f.accounts) {
      if (!a.revoked) next.set(a.tokenSha256, { user: a.phone, tag: accountTag(a.tokenSha256), hash: a.tokenSha256 });
    }
    this.byHash = next;
    this.stamp = stamp;
  }

  private fail(): void {
    this.byHash = new Map();
    this.stamp = '';
  }
}
