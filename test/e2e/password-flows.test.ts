// Every password flow through the real `bkv backup` command code, over real sockets:
// device (CLI) -> ChatD process -> vault process -> SoftHSM2 token + LMDB.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { BKV, cli, closedPort, makeChats, startRig, treeDigest, writeSecret, type Rig } from './fixture.ts';

let rig: Rig;
beforeAll(async () => {
  rig = await startRig();
});
afterAll(async () => {
  await rig?.cleanup();
});

function dev(a: { tokenFile: string }, extra: string[] = []): string[] {
  return ['--state', rig.stateDir, '--chatd', rig.chatd.url, '--token-file', a.tokenFile, '--ksf', 'identity', ...extra];
}

async function statusJson(a: { tokenFile: string }): Promise<{ state: string; attemptsLeft: number; limit: number; cloud: { mode: string } | null }> {
  const r = await cli(['backup', 'status', '--json', ...dev(a)]);
  expect(r.status, r.err).toBe(0);
  return JSON.parse(r.out);
}

describe('password backups end to end (CLI -> ChatD -> vault -> SoftHSM2)', () => {
  it('enable, create, restore on a new device, change password, disable, status', async () => {
    const alice = await rig.account('+15551110001');
    const pw1 = writeSecret(rig.dir, 'pw1', 'first password of alice, long enough');
    const pw2 = writeSecret(rig.dir, 'pw2', 'a second, different password for alice');
    const chats = join(rig.dir, 'alice-chats');
    makeChats(chats);

    expect((await statusJson(alice)).state).toBe('none');

    // enable
    let r = await cli(['backup', 'enable-password', '--password-file', pw1, ...dev(alice)]);
    expect(r.status, r.err).toBe(0);
    expect(r.out).toContain('Password backup enabled for +15551110001');
    expect(await statusJson(alice)).toMatchObject({ state: 'registered', attemptsLeft: 10, limit: 10 });
    // A second enable would replace K (and orphan the backups): refused.
    r = await cli(['backup', 'enable-password', '--password-file', pw2, ...dev(alice)]);
    expect(r.status).toBe(1);
    expect(r.err).toContain('[ALREADY_ENABLED]');

    // create
    r = await cli(['backup', 'create', '--in', chats, '--password-file', pw1, ...dev(alice)]);
    expect(r.status, r.err).toBe(0);
    expect(r.out).toContain('protected by your password backup');
    expect((await statusJson(alice)).cloud?.mode).toBe('password');

    // restore on a new device: nothing but the token, the password and the cloud folder
    const out1 = join(rig.dir, 'new-phone-1');
    r = await cli(['backup', 'restore', '--out', out1, '--password-file', pw1, ...dev(alice)]);
    expect(r.status, r.err).toBe(0);
    expect(treeDigest(out1)).toEqual(treeDigest(chats));

    // a wrong password costs an attempt, leaves --out alone; the right one resets the counter
    const out2 = join(rig.dir, 'new-phone-2');
    r = await cli(['backup', 'restore', '--out', out2, '--password-file', pw2, ...dev(alice)]);
    expect(r.status).toBe(1);
    expect(r.err).toContain('wrong password: 9 attempts left');
    expect(r.err).toContain('[WRONG_PASSWORD]');
    expect(existsSync(out2)).toBe(false);
    expect((await statusJson(alice)).attemptsLeft).toBe(9);

    // change password: the old one then fails, the new one restores the same backup
    r = await cli(['backup', 'change-password', '--old-password-file', pw1, '--password-file', pw2, ...dev(alice)]);
    expect(r.status, r.err).toBe(0);
    expect(await statusJson(alice)).toMatchObject({ state: 'registered', attemptsLeft: 10, limit: 10 });
    r = await cli(['backup', 'restore', '--out', out2, '--password-file', pw1, ...dev(alice)]);
    expect(r.status).toBe(1);
    expect(r.err).toContain('[WRONG_PASSWORD]');
    expect(existsSync(out2)).toBe(false);
    r = await cli(['backup', 'restore', '--out', out2, '--password-file', pw2, ...dev(alice)]);
    expect(r.status, r.err).toBe(0);
    expect(treeDigest(out2)).toEqual(treeDigest(chats));

    // change-password with a wrong old password changes nothing
    r = await cli(['backup', 'change-password', '--old-password-file', pw1, '--password-file', pw1, ...dev(alice)]);
    expect(r.status).toBe(1);
    expect(r.err).toContain('[WRONG_PASSWORD]');
    const out3 = join(rig.dir, 'new-phone-3');
    r = await cli(['backup', 'restore', '--out', out3, '--password-file', pw2, ...dev(alice)]);
    expect(r.status, r.err).toBe(0);

    // status, human form
    r = await cli(['backup', 'status', ...dev(alice)]);
    expect(r.status).toBe(0);
    expect(r.out).toContain('+15551110001: password backup enabled, 10 of 10 attempts left');
    expect(r.out).toContain('password mode');

    // disable: without a terminal to confirm on, only with --yes; restore then fails, status says none
    r = await cli(['backup', 'disable', ...dev(alice)]);
    expect(r.status).toBe(2);
    expect(r.err).toContain('--yes');
    expect((await statusJson(alice)).state).toBe('registered');
    r = await cli(['backup', 'disable', '--yes', ...dev(alice)]);
    expect(r.status, r.err).toBe(0);
    expect(r.out).toContain('erased the record and the key');
    expect((await statusJson(alice)).state).toBe('none');
    r = await cli(['backup', 'disable', '--yes', ...dev(alice)]);
    expect(r.status, r.err).toBe(0);
    expect(r.out).toContain('nothing to erase');
    const out4 = join(rig.dir, 'new-phone-4');
    r = await cli(['backup', 'restore', '--out', out4, '--password-file', pw2, ...dev(alice)]);
    expect(r.status).toBe(1);
    expect(r.err).toContain('[NOT_REGISTERED]');
    expect(existsSync(out4)).toBe(false);
    r = await cli(['backup', 'create', '--in', chats, '--password-file', pw2, ...dev(alice)]);
    expect(r.status).toBe(1);
    expect(r.err).toContain('[NOT_REGISTERED]');

    // no password ever reached the output
    for (const p of [pw1, pw2]) {
      const text = readFileSync(p, 'utf8').trim();
      expect(rig.lines.join('\n')).not.toContain(text);
    }
  });

  it('--json: each password command answers one JSON object; a wrong password is a JSON error with the attempts left, never the password', async () => {
    const carol = await rig.account('+15551110077');
    const pwText = 'carol json password, long enough';
    const pw = writeSecret(rig.dir, 'pw-carol', pwText);
    const bad = writeSecret(rig.dir, 'pw-carol-bad', 'not carol password at all');
    const chats = join(rig.dir, 'carol-chats');
    makeChats(chats);
    const json = async (args: string[], code = 0) => {
      const r = await cli([...args, '--json', ...dev(carol)]);
      expect(r.status, r.err).toBe(code);
      for (const secret of [pwText, 'not carol password']) expect(r.out + r.err).not.toContain(secret);
      return { out: r.out.trim() ? JSON.parse(r.out) as Record<string, unknown> : undefined, err: r.err.trim() ? JSON.parse(r.err) as { error: Record<string, string> } : undefined };
    };
    expect((await json(['backup', 'enable-password', '--password-file', pw])).out).toMatchObject({ ok: true, user: '+15551110077', state: 'registered', attemptsLeft: 10, limit: 10 });
    const made = (await json(['backup', 'create', '--in', chats, '--password-file', pw])).out!;
    expect(made).toMatchObject({ ok: true, mode: 'password', account: '+15551110077', object: join(rig.stateDir, 'cloud', '+15551110077.bkv') });
    expect(made.key64).toBeUndefined();
    const wrong = await json(['backup', 'restore', '--out', join(rig.dir, 'carol-out-bad'), '--password-file', bad], 1);
    expect(wrong.out).toBeUndefined();
    expect(wrong.err!.error).toMatchObject({ code: 'WRONG_PASSWORD' });
    expect(wrong.err!.error.message).toMatch(/9 attempts left/);
    expect(wrong.err!.error.hint).toMatch(/attempts/);
    expect((await json(['backup', 'restore', '--out', join(rig.dir, 'carol-out'), '--password-file', pw])).out).toMatchObject({ ok: true, files: made.files, bytes: made.bytes });
    expect(treeDigest(join(rig.dir, 'carol-out'))).toEqual(treeDigest(chats));
    expect((await json(['backup', 'change-password', '--old-password-file', pw, '--password-file', pw])).out).toMatchObject({ ok: true, attemptsLeft: 10 });
    expect((await json(['backup', 'disable', '--yes'])).out).toMatchObject({ ok: true, erased: true });
    expect((await json(['backup', 'disable', '--yes'])).out).toMatchObject({ ok: true, erased: false });
  });

  it('without --account a password backup is keyed by its account: two accounts in one cloud folder never see or replace each other\'s', async () => {
    const dana = await rig.account('+15551110088');
    const eve = await rig.account('+15551110099');
    const pwD = writeSecret(rig.dir, 'pw-dana', 'dana has her own password');
    const pwE = writeSecret(rig.dir, 'pw-eve', 'eve has another password');
    const chats = join(rig.dir, 'dana-chats');
    makeChats(chats);
    for (const [who, pw] of [[dana, pwD], [eve, pwE]] as const) expect((await cli(['backup', 'enable-password', '--password-file', pw, ...dev(who)])).status).toBe(0);
    expect((await cli(['backup', 'create', '--in', chats, '--password-file', pwD, ...dev(dana)])).status).toBe(0);
    expect((await statusJson(dana)).cloud).toMatchObject({ object: '+15551110088.bkv', mode: 'password' });
    // Eve's status does not show Dana's backup as hers, and says under which name it looked.
    expect((await statusJson(eve)).cloud).toBeNull();
    const text = await cli(['backup', 'status', ...dev(eve)]);
    expect(text.out).toContain("for account '+15551110099'");
    // Eve's own backup lands beside Dana's, not over it; each restores its own.
    const eveChats = join(rig.dir, 'eve-chats');
    makeChats(eveChats);
    expect((await cli(['backup', 'create', '--in', eveChats, '--password-file', pwE, ...dev(eve)])).status).toBe(0);
    for (const [who, pw, src] of [[dana, pwD, chats], [eve, pwE, eveChats]] as const) {
      const out = join(rig.dir, `restored-${who.phone.slice(-2)}`);
      const r = await cli(['backup', 'restore', '--out', out, '--password-file', pw, ...dev(who)]);
      expect(r.status, r.err).toBe(0);
      expect(treeDigest(out)).toEqual(treeDigest(src));
    }
    // --account still names any object.
    expect((await cli(['backup', 'status', '--json', '--account', '+15551110088', ...dev(eve)])).out).toContain('"object": "+15551110088.bkv"');
  });

  it('disable on a terminal asks first: anything but "yes" erases nothing', async () => {
    const erin = await rig.account('+15551110010');
    const pw = writeSecret(rig.dir, 'pw-erin', 'erin password for the confirmation test');
    let r = await cli(['backup', 'enable-password', '--password-file', pw, ...dev(erin)]);
    expect(r.status, r.err).toBe(0);
    // script(1) gives the CLI a pseudo-terminal as stdin; the answer is typed ahead into it.
    const onTty = (answer: string) => {
      const cmd = [process.execPath, BKV, 'backup', 'disable', ...dev(erin)].map((a) => `'${a}'`).join(' ');
      return spawnSync('script', ['-qec', cmd, '/dev/null'], { input: answer, encoding: 'utf8', timeout: 60_000 });
    };
    const no = onTty('no\n');
    expect(no.stdout).toContain('Type "yes"');
    expect(no.stdout).toContain('not disabled');
    expect(no.status).toBe(1);
    expect((await statusJson(erin)).state).toBe('registered');
    const yes = onTty('yes\n');
    expect(yes.stdout).toContain('Password backup disabled');
    expect(yes.status).toBe(0);
    expect((await statusJson(erin)).state).toBe('none');
  });

  it('--limit out of the vault\'s range is a usage error naming it, before anything is sent', async () => {
    const carol = await rig.account('+15551110009');
    const pw = writeSecret(rig.dir, 'pw-carol', 'carol password for the limit test');
    // A closed port for ChatD: anything sent would fail as CHATD_UNREACHABLE (exit 1), not exit 2.
    const nowhere = ['--state', rig.stateDir, '--chatd', `http://127.0.0.1:${await closedPort()}`, '--token-file', carol.tokenFile, '--ksf', 'identity'];
    for (const limit of ['2', '101', '0', 'ten', '2.5']) {
      const r = await cli(['backup', 'enable-password', '--limit', limit, '--password-file', pw, ...nowhere]);
      expect(r.status, limit).toBe(2);
      expect(r.err, limit).toContain('3..100');
      expect(r.err, limit).not.toContain('CHATD');
    }
    const r = await cli(['backup', 'enable-password', '--limit', '3', '--password-file', pw, ...dev(carol)]);
    expect(r.status, r.err).toBe(0);
    expect(await statusJson(carol)).toMatchObject({ state: 'registered', limit: 3 });
  });

  it('refuses a password in argv, saying why, and changes nothing', async () => {
    const bob = await rig.account('+15551110002');
    for (const args of [
      ['backup', 'enable-password', '--password', 'hunter2-secret', ...dev(bob)],
      ['backup', 'restore', '--out', join(rig.dir, 'x'), '--password', 'hunter2-secret', ...dev(bob)],
      ['backup', 'create', '--in', rig.dir, '--password=hunter2-secret', ...dev(bob)],
      ['backup', 'change-password', '--old-password', 'hunter2-secret', ...dev(bob)],
    ]) {
      const r = await cli(args);
      expect(r.status).toBe(2);
      expect(r.err).toContain('is not accepted');
      expect(r.err).toContain('shell history');
      expect(r.err + r.out).not.toContain('hunter2-secret');
    }
    expect((await statusJson(bob)).state).toBe('none');
  });

  it('gives clear errors: ChatD unreachable, unknown token, revoked token, no password, wrong limit', async () => {
    const carol = await rig.account('+15551110003');
    const pw = writeSecret(rig.dir, 'pw-carol', 'carol password here!');
    const port = await closedPort();
    let r = await cli(['backup', 'status', '--state', rig.stateDir, '--chatd', `http://127.0.0.1:${port}`, '--token-file', carol.tokenFile]);
    expect(r.status).toBe(1);
    expect(r.err).toContain('[CHATD_UNREACHABLE]');
    expect(r.err).toContain('bkv serve');

    const fake = writeSecret(rig.dir, 'fake-token', 'bkvt_' + 'A'.repeat(43));
    r = await cli(['backup', 'restore', '--out', join(rig.dir, 'y'), '--password-file', pw, ...dev({ tokenFile: fake })]);
    expect(r.status).toBe(1);
    expect(r.err).toContain('[NOT_REGISTERED]');
    // With --phone the device gets as far as ChatD, which refuses the token.
    r = await cli(['backup', 'status', '--phone', '+15551110003', ...dev({ tokenFile: fake })]);
    expect(r.status).toBe(1);
    expect(r.err).toContain('[UNAUTHORIZED]');

    r = await cli(['backup', 'enable-password', ...dev(carol)]);
    expect(r.status).toBe(2);
    expect(r.err).toContain('no password given');

    r = await cli(['backup', 'enable-password', '--password-file', pw, '--limit', '1', ...dev(carol)]);
    expect(r.status).toBe(2);
    expect(r.err).toContain('3..100');
    expect((await statusJson(carol)).state).toBe('none');

    r = await cli(['backup', 'status', '--state', join(rig.dir, 'nowhere'), '--token-file', carol.tokenFile]);
    expect(r.status).toBe(1);
    expect(r.err).toContain('[CHATD_UNKNOWN]');
  });

  it('a custom limit is kept and enforced, and the KSF must match', async () => {
    const dan = await rig.account('+15551110004');
    const pw = writeSecret(rig.dir, 'pw-dan', 'dan has a password too');
    let r = await cli(['backup', 'enable-password', '--password-file', pw, '--limit', '3', ...dev(dan)]);
    expect(r.status, r.err).toBe(0);
    expect(await statusJson(dan)).toMatchObject({ state: 'registered', attemptsLeft: 3, limit: 3 });
    // The right password under another KSF could only fail: the vault knows the record's KSF and
    // refuses before charging an attempt, naming the one to use.
    const chats = join(rig.dir, 'dan-chats');
    makeChats(chats);
    r = await cli(['backup', 'create', '--in', chats, '--password-file', pw, ...dev(dan).filter((x) => x !== 'identity' && x !== '--ksf'), '--ksf', 'scrypt']);
    expect(r.status).toBe(1);
    expect(r.err).toContain('[KSF_MISMATCH]');
    expect(r.err).toContain('--ksf identity');
    expect(r.err).toContain('no attempt was spent');
    expect(await statusJson(dan)).toMatchObject({ state: 'registered', attemptsLeft: 3, limit: 3 });
    // The limit of 3 is what a wrong password (under the right KSF) counts down from.
    const wrongPw = writeSecret(rig.dir, 'pw-dan-wrong', 'not what dan registered');
    r = await cli(['backup', 'restore', '--out', join(rig.dir, 'dan-out'), '--password-file', wrongPw, ...dev(dan)]);
    expect(r.status).toBe(1);
    expect(r.err).toContain('wrong password: 2 attempts left');
    expect(existsSync(join(rig.dir, 'dan-out'))).toBe(false);
    // And the right KSF with the right password works.
    r = await cli(['backup', 'create', '--in', chats, '--password-file', pw, ...dev(dan)]);
    expect(r.status, r.err).toBe(0);
    expect(await statusJson(dan)).toMatchObject({ state: 'registered', attemptsLeft: 3, limit: 3 });
  });
});
