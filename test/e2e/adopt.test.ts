// Issue 14's "done when": tokens bkv did not create, on SoftHSM2 (initialised with softhsm2-util) and
// on a second, independently written token (NSS softoken), are adopted with `bkv provision --adopt`
// (module arguments, PIN files); then `bkv doctor`, `bkv fleet up` and `bkv serve` run on them
// unchanged, with a password enable / wrong / recover round trip. On NSS the vault's anchor and vote
// live in inert keys (it refuses CKO_DATA token objects).
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { execFileSync, spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { BKV, cliProcess, makeChats, treeDigest, writeSecret } from './fixture.ts';
import { makeNssTokens, nssMissing, type NssTokens } from '../helpers/nss.ts';
import { finalizeModule } from '../../hsm-adapter/module.ts';

let dir: string;
let stateDir: string;
let nss: NssTokens | undefined;
let child: ChildProcess | undefined;
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'bkv-e2e-adopt-'));
  stateDir = join(dir, 'state');
  if (!nssMissing) {
    nss = makeNssTokens(['vault-a', 'vault-b', 'vault-c', 'vault-d']);
    finalizeModule(); // the CLI processes open the databases themselves
  }
});
afterAll(() => {
  if (child && child.exitCode === null) child.kill('SIGKILL');
  nss?.cleanup();
  rmSync(dir, { recursive: true, force: true });
});

/** Starts `bkv ARGS` (fleet up / serve) and resolves with ChatD's URL once it is ready. */
function start(args: string[]): Promise<{ exit: Promise<number | null> }> {
  const c = spawn(process.execPath, [BKV, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  child = c;
  const exit = new Promise<number | null>((res) => c.once('exit', (code) => res(code)));
  const err: string[] = [];
  createInterface({ input: c.stderr! }).on('line', (l) => err.push(l));
  return new Promise((resolve, reject) => {
    createInterface({ input: c.stdout! }).on('line', (l) => {
      if (l.startsWith('CHATD_URL=')) resolve({ exit });
    });
    void exit.then((code) => reject(new Error(`bkv ${args[0]} exited (${code}): ${err.slice(-5).join(' | ')}`)));
  });
}

async function roundTrip(stateDir: string, phone: string): Promise<void> {
  const acct = await cliProcess(['account', 'create', '--phone', phone, '--state', stateDir]);
  expect(acct.status, acct.err).toBe(0);
  const dev = ['--state', stateDir, '--token-file', writeSecret(dir, `token-${phone}`, acct.out.trim()), '--ksf', 'identity'];
  let r = await cliProcess(['backup', 'enable-password', '--password-file', '-', ...dev], { stdin: 'nss adopted password\n' });
  expect(r.status, r.err).toBe(0);
  const chats = join(dir, `chats-${phone}`);
  makeChats(chats);
  const pw = writeSecret(dir, `pw-${phone}`, 'nss adopted password');
  r = await cliProcess(['backup', 'create', '--in', chats, '--password-file', pw, ...dev]);
  expect(r.status, r.err).toBe(0);
  r = await cliProcess(['backup', 'restore', '--out', join(dir, `restored-${phone}`), '--password-file', writeSecret(dir, `bad-${phone}`, 'not it'), ...dev]);
  expect(r.status).toBe(1);
  expect(r.err).toContain('9 attempts left');
  r = await cliProcess(['backup', 'restore', '--out', join(dir, `restored-${phone}`), '--password-file', pw, ...dev]);
  expect(r.status, r.err).toBe(0);
  expect(treeDigest(join(dir, `restored-${phone}`))).toEqual(treeDigest(chats));
}

describe.skipIf(nssMissing)(`adopted NSS softoken tokens${nssMissing ? ` (skipped: ${nssMissing})` : ''}`, () => {
  it('provision --adopt, doctor, fleet up and serve work on them, with a password round trip', async () => {
    const n = nss!;
    let r = await cliProcess([
      'provision', '--state', stateDir, '--module', n.modulePath, '--module-args', n.moduleArgs,
      '--adopt', 'vault-a', '--adopt', 'vault-b', '--adopt', 'eu-west=pkcs11:token=vault-c',
      '--pin-file', n.pinFile('vault-a'), '--pin-file', n.pinFile('vault-b'), '--pin-file', n.pinFile('vault-c'),
    ]);
    expect(r.status, r.err).toBe(0);
    expect(r.out).toContain('adopted 3 tokens');
    expect(r.out).toContain('secret-key-id');
    const manifestText = readFileSync(join(stateDir, 'fleet.json'), 'utf8');
    const manifest = JSON.parse(manifestText);
    expect(manifest).toMatchObject({ adopted: true, modulePath: n.modulePath, moduleArgs: n.moduleArgs });
    expect(manifest.replicas.map((x: { name: string; tokenLabel: string }) => `${x.name}=${x.tokenLabel}`)).toEqual(['us-east=vault-a', 'us-west=vault-b', 'eu-west=vault-c']);
    for (const pin of Object.values(n.pins)) expect(manifestText).not.toContain(pin);
    expect(existsSync(join(stateDir, 'pins.json'))).toBe(false);
    expect(existsSync(join(stateDir, 'softhsm2.conf'))).toBe(false);

    r = await cliProcess(['doctor', '--state', stateDir]);
    expect(r.status, r.out + r.err).toBe(0);
    expect(r.out).toContain('verdict: GREEN, 3 tokens healthy');
    expect(r.out).toMatch(/data {5}secret-key-id \(the token refuses CKO_DATA token objects \(CKR_ATTRIBUTE_VALUE_INVALID\)\); cost: /);
    for (const pin of Object.values(n.pins)) expect(r.out + r.err).not.toContain(pin);

    r = await cliProcess(['provision', '--state', stateDir]);
    expect(r.status, r.err).toBe(0);
    expect(r.out).toContain('nothing changed');

    const fleet = await start(['fleet', 'up', '--state', stateDir, '--wan', 'none', '--quiet']);
    await roundTrip(stateDir, '+15554440001');
    r = await cliProcess(['fleet', 'down', '--state', stateDir]);
    expect(r.status, r.err).toBe(0);
    expect(await fleet.exit).toBe(0);

    // The single vault on a token of its own (a state directory's disks belong to one of the two
    // modes: the fleet's replica disk does not open as a single vault's, on SoftHSM2 as here).
    const single = join(dir, 'single');
    r = await cliProcess(['provision', '--state', single, '--module', n.modulePath, '--module-args', n.moduleArgs, '--adopt', 'pkcs11:token=vault-d', '--pin-file', n.pinFile('vault-d')]);
    expect(r.status, r.err).toBe(0);
    const serve = await start(['serve', '--state', single]);
    await roundTrip(single, '+15554440002');
    child!.kill('SIGINT');
    expect(await serve.exit).toBe(0);
  }, 180_000);
});

const noSofthsmUtil = spawnSync('sh', ['-c', 'command -v softhsm2-util'], { encoding: 'utf8' }).stdout.trim() ? undefined : 'softhsm2-util is not installed (apt-get install softhsm2)';
describe.skipIf(noSofthsmUtil)(`adopted SoftHSM2 tokens (initialised by softhsm2-util, not by bkv)${noSofthsmUtil ? ` (skipped: ${noSofthsmUtil})` : ''}`, () => {
  it('provision --adopt, doctor, fleet up and serve work on them, with a password round trip', async () => {
    const tokens = join(dir, 'sh-tokens');
    mkdirSync(tokens, { mode: 0o700 });
    const conf = join(dir, 'softhsm2.conf');
    writeFileSync(conf, `directories.tokendir = ${tokens}\nobjectstore.backend = file\nlog.level = ERROR\n`, { mode: 0o600 });
    // The children find the tokens through SOFTHSM2_CONF, as an operator's own set-up would give it.
    process.env.SOFTHSM2_CONF = conf;
    const pin = writeSecret(dir, 'sh.pin', 'adopt-user-1234');
    for (const label of ['hsm-1', 'hsm-2', 'hsm-3', 'hsm-4']) {
      execFileSync('softhsm2-util', ['--init-token', '--free', '--label', label, '--so-pin', 'adopt-so-1234', '--pin', 'adopt-user-1234'], { stdio: 'ignore', env: process.env });
    }
    const sh = join(dir, 'sh-state');
    let r = await cliProcess(['provision', '--state', sh, '--module', '/usr/lib/softhsm/libsofthsm2.so', '--adopt', 'hsm-1', '--adopt', 'hsm-2', '--adopt', 'pkcs11:token=hsm-3', '--pin-file', pin]);
    expect(r.status, r.err).toBe(0);
    expect(r.out).toContain('adopted 3 tokens');
    expect(JSON.parse(readFileSync(join(sh, 'fleet.json'), 'utf8'))).toMatchObject({ adopted: true, ceremony: { kind: 'token' } });
    r = await cliProcess(['doctor', '--state', sh]);
    expect(r.status, r.out + r.err).toBe(0);
    expect(r.out).toContain('verdict: GREEN, 3 tokens healthy');
    expect(r.out).toMatch(/data {5}data-object \(the token keeps CKO_DATA token objects\)/);
    const fleet = await start(['fleet', 'up', '--state', sh, '--wan', 'none', '--quiet']);
    await roundTrip(sh, '+15554440003');
    r = await cliProcess(['fleet', 'down', '--state', sh]);
    expect(r.status, r.err).toBe(0);
    expect(await fleet.exit).toBe(0);
    const single = join(dir, 'sh-single');
    r = await cliProcess(['provision', '--state', single, '--module', '/usr/lib/softhsm/libsofthsm2.so', '--adopt', 'hsm-4', '--pin-file', pin]);
    expect(r.status, r.err).toBe(0);
    const serve = await start(['serve', '--state', single]);
    await roundTrip(single, '+15554440004');
    child!.kill('SIGINT');
    expect(await serve.exit).toBe(0);
  }, 180_000);
});

describe.skipIf(noSofthsmUtil)(`a single vault on a token without EC keys${noSofthsmUtil ? ` (skipped: ${noSofthsmUtil})` : ''}`, () => {
  it('adopts it with no identity (only a fleet signs), doctor is GREEN, serve runs a password round trip', async () => {
    const tokens = join(dir, 'noec-tokens');
    mkdirSync(tokens, { mode: 0o700 });
    const conf = join(dir, 'noec.conf');
    // SoftHSM2 2.6 takes an allow-list: everything bkv uses except EC (no key pairs, no ECDSA, no ECDH).
    writeFileSync(conf, `directories.tokendir = ${tokens}\nobjectstore.backend = file\nlog.level = ERROR\nslots.mechanisms = CKM_AES_GCM,CKM_AES_CBC_PAD,CKM_SHA256_HMAC,CKM_SHA512_HMAC,CKM_AES_KEY_GEN,CKM_GENERIC_SECRET_KEY_GEN,CKM_AES_KEY_WRAP\n`, { mode: 0o600 });
    process.env.SOFTHSM2_CONF = conf;
    execFileSync('softhsm2-util', ['--init-token', '--free', '--label', 'no-ec', '--so-pin', 'adopt-so-1234', '--pin', 'adopt-user-1234'], { stdio: 'ignore', env: process.env });
    const pin = writeSecret(dir, 'noec.pin', 'adopt-user-1234');
    const single = join(dir, 'noec-single');
    let r = await cliProcess(['provision', '--state', single, '--module', '/usr/lib/softhsm/libsofthsm2.so', '--adopt', 'no-ec', '--pin-file', pin]);
    expect(r.status, r.err).toBe(0);
    const m = JSON.parse(readFileSync(join(single, 'fleet.json'), 'utf8'));
    expect(m.replicas[0].identityFingerprint).toBe('');
    expect(m.ceremony).toMatchObject({ kind: 'host' });
    expect(m.ceremony.reason).toContain('lacks CKM_EC_KEY_PAIR_GEN, CKM_ECDH1_DERIVE');
    r = await cliProcess(['doctor', '--state', single]);
    expect(r.status, r.out + r.err).toBe(0);
    expect(r.out).toContain('no identity key: a single vault never signs');
    expect(r.out).toContain('ecdsa    none (fine for a single vault; a fleet replica must sign)');
    const serve = await start(['serve', '--state', single]);
    await roundTrip(single, '+15554440005');
    child!.kill('SIGINT');
    expect(await serve.exit).toBe(0);
  }, 120_000);
});
