// The guess budget, end to end over real sockets and real processes: lockout after exactly the limit,
// many devices guessing one user at once, and vault restarts (clean and killed) between attempts.
// The outside counter is the number of KE2 replies (each one OPRF evaluation = one guess) that reach
// the devices (counted where each device opens them: on the wire every session frame looks alike).
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { PasswordBackupError } from '../../scripts/commands/backup-password.ts';
import { cli, ke2Counter, makeChats, startRig, treeDigest, writeSecret, type Rig } from './fixture.ts';

let rig: Rig;
beforeAll(async () => {
  // Many devices share one account and one loopback address: lift ChatD's per-account rate limit so
  // the vault, not ChatD, is what stops them.
  rig = await startRig({ chatdArgs: ['--account-burst', '100000', '--account-rate', '100000'] });
});
afterAll(async () => {
  await rig?.cleanup();
});

async function codeOf(p: Promise<unknown>): Promise<string> {
  try {
    await p;
    return 'OK';
  } catch (e) {
    if (e instanceof PasswordBackupError) return e.code;
    throw e;
  }
}

describe('the guess budget, end to end', () => {
  it('locks after exactly the limit; then the right password fails and the backup is unrecoverable', async () => {
    const a = await rig.account('+15552220001');
    const owner = rig.device(a);
    await owner.enable('the real password of this user');
    // A backup made under this K, to show it cannot be restored afterwards.
    const chats = join(rig.dir, 'locked-chats');
    makeChats(chats);
    const pwFile = writeSecret(rig.dir, 'pw-locked', 'the real password of this user');
    const args = ['--state', rig.stateDir, '--chatd', rig.chatd.url, '--token-file', a.tokenFile, '--ksf', 'identity'];
    let r = await cli(['backup', 'create', '--in', chats, '--password-file', pwFile, ...args]);
    expect(r.status, r.err).toBe(0);

    const ke2 = ke2Counter();
    const attacker = rig.device(a, { onReply: ke2.onReply });
    const seen: string[] = [];
    for (let i = 1; i <= 9; i++) {
      try {
        await attacker.recover(`wrong guess ${i}`);
        seen.push('released');
      } catch (e) {
        expect(e).toBeInstanceOf(PasswordBackupError);
        seen.push(`${(e as PasswordBackupError).code}:${(e as PasswordBackupError).attemptsLeft}`);
      }
    }
    expect(seen).toEqual([9, 8, 7, 6, 5, 4, 3, 2, 1].map((n) => `WRONG_PASSWORD:${n}`));
    expect(await owner.status()).toMatchObject({ state: 'registered', attemptsLeft: 1 });
    // The tenth wrong guess is the last one the vault evaluates; it locks the record.
    expect(await codeOf(attacker.recover('wrong guess 10'))).toBe('LOCKED');
    expect(ke2.count()).toBe(10);
    // Locked forever: the right password gets no KE2 (no evaluation), status says locked.
    const honest = ke2Counter();
    const owner2 = rig.device(a, { onReply: honest.onReply });
    expect(await codeOf(owner2.recover('the real password of this user'))).toBe('LOCKED');
    expect(honest.count()).toBe(0);
    expect(await owner.status()).toMatchObject({ state: 'locked', attemptsLeft: 0 });
    // ...and stays locked across a restart of the vault.
    await rig.restartVault('SIGTERM');
    expect(await owner.status()).toMatchObject({ state: 'locked' });
    r = await cli(['backup', 'restore', '--out', join(rig.dir, 'locked-out'), '--password-file', pwFile, ...args]);
    expect(r.status).toBe(1);
    expect(r.err).toContain('[LOCKED]');
    expect(r.err).toContain('can no longer be restored');
    expect(existsSync(join(rig.dir, 'locked-out'))).toBe(false);
    expect(honest.count()).toBe(0);
    // Starting over is possible (a new K), but the old backup stays unrecoverable.
    r = await cli(['backup', 'enable-password', '--password-file', pwFile, ...args]);
    expect(r.status, r.err).toBe(0);
    expect(await owner.status()).toMatchObject({ state: 'registered', attemptsLeft: 10 });
    r = await cli(['backup', 'restore', '--out', join(rig.dir, 'locked-out'), '--password-file', pwFile, ...args]);
    expect(r.status).toBe(1);
    expect(r.err).toContain('[BACKUP_WRONG_KEY]');
    expect(r.err).toContain('not the one this backup was made under');
    expect(existsSync(join(rig.dir, 'locked-out'))).toBe(false);
    for (const d of [owner, owner2, attacker]) d.close();
  });

  it('many devices guessing one user at once never get more than the limit of KE2s', async () => {
    const a = await rig.account('+15552220002');
    const owner = rig.device(a);
    await owner.enable('correct password for the race', 5);
    const ke2 = ke2Counter();
    const attackers = Array.from({ length: 24 }, () => rig.device(a, { onReply: ke2.onReply }));
    const outcomes = await Promise.all(
      attackers.map(async (d, i) => {
        const codes: string[] = [];
        // Each device guesses until the vault says locked (or a few rounds pass).
        for (let round = 0; round < 4; round++) {
          const c = await codeOf(d.recover(`device ${i} guess ${round}`));
          codes.push(c);
          if (c === 'LOCKED') break;
        }
        return codes;
      }),
    );
    const all = outcomes.flat();
    expect(all).not.toContain('OK');
    expect(ke2.count()).toBeLessThanOrEqual(5);
    // Every charged attempt was one KE2; the rest were refused without an evaluation.
    expect(ke2.count()).toBe(5);
    expect(all.filter((c) => c === 'WRONG_PASSWORD').length).toBeLessThanOrEqual(4);
    expect(await owner.status()).toMatchObject({ state: 'locked' });
    expect(await codeOf(owner.recover('correct password for the race'))).toBe('LOCKED');
    for (const d of [owner, ...attackers]) d.close();
  });

  it('a restart of the vault (clean or killed) between attempts does not reset the counter', async () => {
    const a = await rig.account('+15552220003');
    const owner = rig.device(a);
    await owner.enable('survives restarts, this password');
    const ke2 = ke2Counter();
    const attacker = rig.device(a, { onReply: ke2.onReply });
    for (let i = 0; i < 3; i++) expect(await codeOf(attacker.recover(`wrong ${i}`))).toBe('WRONG_PASSWORD');
    expect((await owner.status()).attemptsLeft).toBe(7);

    await rig.restartVault('SIGKILL');
    expect((await owner.status()).attemptsLeft).toBe(7);
    expect(await codeOf(attacker.recover('wrong 3'))).toBe('WRONG_PASSWORD');
    await rig.restartVault('SIGTERM');
    expect((await owner.status()).attemptsLeft).toBe(6);

    // The vault dies after handing out a KE2 and before the KE3: that attempt stays charged.
    let killed = false;
    const dying = rig.device(a, {
      // Awaited before the device goes on: the KE3 meets a vault that is gone.
      onReply: async (reply) => {
        if (!killed && reply.t === 'KE2') {
          killed = true;
          await rig.stopVault('SIGKILL');
        }
      },
    });
    // The KE2 came, so the device says plainly that an attempt was spent and the outcome is unknown.
    expect(await codeOf(dying.recover('the guess whose answer never comes'))).toBe('OUTCOME_UNKNOWN');
    // While it is down, devices get a clear error.
    expect(await codeOf(owner.status())).toBe('VAULT_UNAVAILABLE');
    await rig.startVaultAgain();
    expect((await owner.status()).attemptsLeft).toBe(5);

    // The right password still works and resets the counter; K survived it all.
    const k = await owner.recover('survives restarts, this password');
    expect(k.length).toBe(32);
    expect((await owner.status()).attemptsLeft).toBe(10);
    expect(ke2.count()).toBe(4);
    for (const d of [owner, attacker, dying]) d.close();
  });

  it('a backup survives a vault restart and restores on a new device', async () => {
    const a = await rig.account('+15552220004');
    const pw = writeSecret(rig.dir, 'pw-restart', 'restart-proof password');
    const args = ['--state', rig.stateDir, '--chatd', rig.chatd.url, '--token-file', a.tokenFile, '--ksf', 'identity'];
    const chats = join(rig.dir, 'restart-chats');
    makeChats(chats);
    expect((await cli(['backup', 'enable-password', '--password-file', pw, ...args])).status).toBe(0);
    expect((await cli(['backup', 'create', '--in', chats, '--password-file', pw, ...args])).status).toBe(0);
    await rig.restartVault('SIGKILL');
    const out = join(rig.dir, 'restart-out');
    const r = await cli(['backup', 'restore', '--out', out, '--password-file', pw, ...args]);
    expect(r.status, r.err).toBe(0);
    expect(treeDigest(out)).toEqual(treeDigest(chats));
  });
});
