// The host disk is untrusted: flipped bits, swapped or dropped entries, a tampered snapshot, another
// replica's disk, an older copy of the disk, or none at all must each be refused with a typed error,
// leave the replica unhealthy (serving nothing), and never yield K or a fresh counter.
import { randomBytes } from 'node:crypto';
import { cpSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { open as openLmdb } from 'lmdb';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { enablePassword, disable, recoverK, status } from '../../client/password.ts';
import { Replica } from '../../vault/agent/replica.ts';
import type { Token } from '../../hsm-adapter/token.ts';
import { deriveFleetKeys } from '../../vault/firmware/keys.ts';
import { SealedStorage } from '../../vault/firmware/storage.ts';
import { tokenServerSecrets } from '../../protocol/opaque/index.ts';
import { vaultFixture, type VaultFixture } from './agent-fixture.ts';

let fx: VaultFixture;
let good: string;
let newer: string;
const k = new Uint8Array(randomBytes(32));

beforeAll(async () => {
  fx = await vaultFixture({ replicas: 2 });
  good = join(fx.tmp, 'good-copy');
  newer = join(fx.tmp, 'newer-copy');
  const r = await fx.open();
  await enablePassword(fx.sendVia(r, 'alice'), fx.client('alice'), 'alice pw', k, 5);
  await enablePassword(fx.sendVia(r, 'bob'), fx.client('bob'), 'bob pw', new Uint8Array(randomBytes(32)), 5);
  await enablePassword(fx.sendVia(r, 'zed'), fx.client('zed'), 'zed pw', new Uint8Array(randomBytes(32)), 5);
  await disable(fx.sendVia(r, 'zed'), fx.client('zed')); // forces a snapshot (zed's K must leave the disk)
  await enablePassword(fx.sendVia(r, 'carl'), fx.client('carl'), 'carl pw', new Uint8Array(randomBytes(32)), 5);
  await recoverK(fx.sendVia(r, 'alice'), fx.client('alice'), 'wrong').catch(() => undefined);
  await r.close();
  cpSync(fx.dbDir, good, { recursive: true });
});
afterAll(async () => {
  await fx?.cleanup();
});

function restore(from: string): void {
  rmSync(fx.dbDir, { recursive: true, force: true });
  cpSync(from, fx.dbDir, { recursive: true });
}

/** Edits the stored LMDB directly, as a hostile host would. */
async function editDisk(edit: (log: { get(i: number): Uint8Array; put(i: number, v: Uint8Array): void; remove(i: number): void; keys(): number[] }, meta: { get(): Uint8Array; put(v: Uint8Array): void }) => void): Promise<void> {
  const root = openLmdb({ path: fx.dbDir, maxDbs: 4 });
  const log = root.openDB<Uint8Array, number>({ name: 'log' });
  const meta = root.openDB<Uint8Array, string>({ name: 'meta' });
  await root.transaction(() =>
    edit(
      {
        get: (i) => new Uint8Array(log.get(i)!),
        put: (i, v) => void log.put(i, v),
        remove: (i) => void log.remove(i),
        keys: () => [...log.getKeys({})] as number[],
      },
      { get: () => new Uint8Array(meta.get('snapshot')!), put: (v) => void meta.put('snapshot', v) },
    ),
  );
  await root.close();
}

async function expectRefused(r: Replica, code: string): Promise<void> {
  expect(r.health).toMatchObject({ healthy: false, code });
  // Nothing is served: not K, not a counter.
  await expect(recoverK(fx.sendVia(r, 'alice'), fx.client('alice'), 'alice pw')).rejects.toMatchObject({ code });
  await expect(status(fx.sendVia(r, 'alice'), fx.client('alice'))).rejects.toMatchObject({ code });
  await expect(r.handle('bob', new Uint8Array([0x80]))).rejects.toMatchObject({ code });
}

async function expectGood(attemptsLeft: number): Promise<void> {
  const r = await fx.open();
  expect(r.health.healthy).toBe(true);
  expect(await status(fx.sendVia(r, 'alice'), fx.client('alice'))).toMatchObject({ state: 'registered', attemptsLeft });
  expect(await status(fx.sendVia(r, 'zed'), fx.client('zed'))).toMatchObject({ state: 'none' });
  await r.close();
}

describe('tampering with the stored data', () => {
  it('the untouched disk is served (baseline for every case below)', async () => {
    restore(good);
    await expectGood(4);
  });

  it('a flipped bit in a log entry', async () => {
    restore(good);
    await editDisk((log) => {
      const i = log.keys().at(-1)!;
      const v = log.get(i);
      v[Math.floor(v.length / 2)]! ^= 0x04;
      log.put(i, v);
    });
    const r = await fx.open();
    await expectRefused(r, 'TAMPERED');
    await r.close();
  });

  it("two users' entries swapped", async () => {
    restore(good);
    await editDisk((log) => {
      const [a, b] = log.keys().slice(-3);
      const va = log.get(a!);
      log.put(a!, log.get(b!));
      log.put(b!, va);
    });
    const r = await fx.open();
    await expectRefused(r, 'TAMPERED');
    await r.close();
  });

  it('an entry dropped from the middle', async () => {
    restore(good);
    await editDisk((log) => log.remove(log.keys().at(-2)!));
    const r = await fx.open();
    await expectRefused(r, 'TAMPERED');
    await r.close();
  });

  it('a flipped bit in the snapshot', async () => {
    restore(good);
    await editDisk((_log, meta) => {
      const v = meta.get();
      v[v.length - 20]! ^= 0x01;
      meta.put(v);
    });
    const r = await fx.open();
    await expectRefused(r, 'TAMPERED');
    await r.close();
  });

  it('fleet-wide keys agree across tokens (entries replicate), per-replica seals do not', async () => {
    const t1 = fx.fleet.openToken(fx.fleet.replicas[1]!.tokenLabel);
    expect(Buffer.from(deriveFleetKeys(t1).entryKey).equals(Buffer.from(deriveFleetKeys(fx.token).entryKey))).toBe(true);
    const pk = (t: Token) => Buffer.from(tokenServerSecrets(t, 'ristretto255-SHA512').akeKeyPair.publicKey);
    expect(pk(t1).equals(pk(fx.token))).toBe(true);
    const sealed = new SealedStorage(fx.token, 'x').sealEntry(1, new Uint8Array(32), new Uint8Array([1]));
    expect(() => new SealedStorage(t1, 'x').verify({ entries: [{ index: 1, sealed: sealed.sealed }] })).toThrow(/does not open/);
  });

  it("another replica's token cannot open this disk", async () => {
    restore(good);
    const other = fx.fleet.replicas[1]!;
    const r = await Replica.open({ replicaId: other.name, token: fx.fleet.openToken(other.tokenLabel), dbDir: fx.dbDir, tickMs: 0 });
    await expectRefused(r, 'TAMPERED');
    await r.close();
  });

  it('an older copy of the disk restored after more attempts: rollback detected, no fresh counter', async () => {
    restore(good);
    let r = await fx.open();
    for (let i = 0; i < 3; i++) await recoverK(fx.sendVia(r, 'alice'), fx.client('alice'), `wrong ${i}`).catch(() => undefined);
    expect(await status(fx.sendVia(r, 'alice'), fx.client('alice'))).toMatchObject({ attemptsLeft: 1 });
    await r.close();
    cpSync(fx.dbDir, newer, { recursive: true });
    restore(good); // the host rolls its disk back to when alice had 4 attempts left
    r = await fx.open();
    await expectRefused(r, 'ROLLBACK_DETECTED');
    await r.close();
    // the current disk is still fine, with the counter where it was
    restore(newer);
    await expectGood(1);
  });

  it('a blank disk (amnesia) is a rollback too', async () => {
    rmSync(fx.dbDir, { recursive: true, force: true });
    const r = await fx.open();
    await expectRefused(r, 'ROLLBACK_DETECTED');
    await r.close();
    restore(newer);
    await expectGood(1);
  });
});
