// The account store on real files: only token hashes on disk, atomic rewrites under a lock, typed
// errors that leave the file as it was.
import { afterEach, describe, expect, it } from 'vitest';
import { existsSync, mkdirSync, readFileSync, readdirSync, statSync, writeFileSync } from 'node:fs';
import { spawnSync } from 'node:child_process';
import { AccountIndex, AccountStore, accountsPath, tokenHash, validatePhone } from '../../chatd/accounts.ts';
import {
  AccountExistsError,
  AccountNotFoundError,
  AccountStoreBusyError,
  AccountStoreError,
  InvalidPhoneError,
} from '../../chatd/errors.ts';
import { tempState } from './fixtures.ts';

const cleanups: (() => void)[] = [];
afterEach(() => cleanups.splice(0).forEach((c) => c()));
function state() {
  const s = tempState();
  cleanups.push(s.cleanup);
  return s.dir;
}

describe('phone numbers', () => {
  it('accepts E.164 and refuses everything else with BAD_PHONE', () => {
    for (const ok of ['+15551234567', '+447700900123', '+12345678', '+123456789012345']) expect(validatePhone(ok)).toBe(ok);
    for (const bad of ['15551234567', '+0555123456', '+1555', '+1234567890123456', '+1 555 123 4567', '+1555123456a', '', ' +15551234567', 15551234567]) {
      expect(() => validatePhone(bad)).toThrow(InvalidPhoneError);
    }
  });
});

describe('AccountStore', () => {
  it('stores only the SHA-256 of each token, in a 0600 file, and authenticates by it', async () => {
    const dir = state();
    const store = new AccountStore(dir);
    const { token } = await store.create('+15551234567');
    expect(token).toMatch(/^bkvt_[A-Za-z0-9_-]{43}$/);
    const text = readFileSync(accountsPath(dir), 'utf8');
    expect(text).not.toContain(token.slice(5));
    expect(text).toContain(tokenHash(token));
    expect(statSync(accountsPath(dir)).mode & 0o777).toBe(0o600);
    expect(readdirSync(`${dir}/chatd`)).toEqual(['accounts.json']); // no temp or lock file left
    const index = new AccountIndex(dir);
    expect(await index.authenticate(token)).toMatchObject({ user: '+15551234567' });
    expect(await index.authenticate(token + 'x')).toBeUndefined();
  });

  it('keeps one active token per phone; revoke, then create issues a new one', async () => {
    const dir = state();
    const store = new AccountStore(dir);
    const index = new AccountIndex(dir);
    const first = (await store.create('+15551234567')).token;
    const before = readFileSync(accountsPath(dir), 'utf8');
    await expect(store.create('+15551234567')).rejects.toBeInstanceOf(AccountExistsError);
    expect(readFileSync(accountsPath(dir), 'utf8')).toBe(before);
    await store.revoke('+15551234567');
    expect(await index.authenticate(first)).toBeUndefined();
    await expect(store.revoke('+15551234567')).rejects.toBeInstanceOf(AccountNotFoundError);
    await expect(store.revoke('+15550000000')).rejects.toBeInstanceOf(AccountNotFoundError);
    const second = (await store.create('+15551234567')).token;
    expect(second).not.toBe(first);
    expect(await index.authenticate(second)).toMatchObject({ user: '+15551234567' });
    expect(await index.authenticate(first)).toBeUndefined();
    expect((await store.list()).map((a) => [a.phone, a.revoked === undefined])).toEqual([['+15551234567', true]]);
  });

  it('refuses a corrupt store with a typed error and does not overwrite it', async () => {
    const dir = state();
    mkdirSync(`${dir}/chatd`, { recursive: true });
    for (const junk of ['{not json', '{"v":2,"accounts":[]}', '{"v":1,"accounts":[{"phone":"+15551234567"}]}']) {
      writeFileSync(accountsPath(dir), junk);
      const store = new AccountStore(dir);
      await expect(store.create('+15551234567')).rejects.toBeInstanceOf(AccountStoreError);
      await expect(store.list()).rejects.toBeInstanceOf(AccountStoreError);
      await expect(new AccountIndex(dir).load()).rejects.toBeInstanceOf(AccountStoreError);
      expect(readFileSync(accountsPath(dir), 'utf8')).toBe(junk);
    }
  });

  it('fails closed when the store goes bad under a running index', async () => {
    const dir = state();
    const store = new AccountStore(dir);
    const { token } = await store.create('+15551234567');
    const index = new AccountIndex(dir);
    expect(await index.authenticate(token)).toBeDefined();
    writeFileSync(accountsPath(dir), '{broken');
    await expect(index.authenticate(token)).rejects.toBeInstanceOf(AccountStoreError);
  });

  it('serialises concurrent writers through the lock: no create is lost', async () => {
    const dir = state();
    const phones = Array.from({ length: 12 }, (_, i) => `+1555000${String(i).padStart(4, '0')}`);
    // Separate store objects, as separate CLI processes would have.
    await Promise.all(phones.map((p) => new AccountStore(dir).create(p)));
    expect((await new AccountStore(dir).list()).map((a) => a.phone).sort()).toEqual(phones);
  });

  it('steals a lock left by a dead process, but waits out a live one', async () => {
    const dir = state();
    const store = new AccountStore(dir);
    mkdirSync(`${dir}/chatd`, { recursive: true });
    const dead = spawnSync(process.execPath, ['-e', 'process.stdout.write(String(process.pid))'], { encoding: 'utf8' }).stdout;
    writeFileSync(`${accountsPath(dir)}.lock`, dead);
    await store.create('+15551234567');
    expect(existsSync(`${accountsPath(dir)}.lock`)).toBe(false);
    writeFileSync(`${accountsPath(dir)}.lock`, String(process.pid)); // alive: us
    await expect(new AccountStore(dir, { lockWaitMs: 200 }).create('+15557654321')).rejects.toBeInstanceOf(AccountStoreBusyError);
    expect((await store.list()).map((a) => a.phone)).toEqual(['+15551234567']);
  });
});
