// `bkv provision --adopt` (issue 14, item 2) on NSS softoken tokens bkv did not create: what it
// records, and that every refusal comes before anything is written.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { chmodSync, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { adopt } from '../../softhsm/adopt.ts';
import { provision } from '../../softhsm/provision.ts';
import { loadState } from '../../softhsm/state.ts';
import { finalizeModule } from '../../hsm-adapter/module.ts';
import { openToken } from '../../hsm-adapter/pkcs11-token.ts';
import { BkvError } from '../../protocol/errors.ts';
import { parseAdoptSpec } from '../../scripts/commands/provision.ts';
import { makeNssTokens, nssMissing, type NssTokens } from '../helpers/nss.ts';

let nss: NssTokens;
let dir: string;
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'bkv-adopt-'));
  if (!nssMissing) nss = makeNssTokens(['adopt-a', 'adopt-b', 'adopt-c']);
});
afterAll(() => {
  finalizeModule();
  nss?.cleanup();
  rmSync(dir, { recursive: true, force: true });
});

async function refused(f: () => Promise<unknown>): Promise<BkvError> {
  try {
    await f();
  } catch (e) {
    expect(e).toBeInstanceOf(BkvError);
    return e as BkvError;
  }
  throw new Error('expected a refusal');
}

it('parseAdoptSpec takes NAME= only in front of a label or URI', () => {
  expect(parseAdoptSpec('vault-a')).toEqual({ token: 'vault-a' });
  expect(parseAdoptSpec('us-east=vault-a')).toEqual({ name: 'us-east', token: 'vault-a' });
  expect(parseAdoptSpec('eu-west=pkcs11:token=x;serial=1')).toEqual({ name: 'eu-west', token: 'pkcs11:token=x;serial=1' });
  expect(parseAdoptSpec('pkcs11:token=x')).toEqual({ token: 'pkcs11:token=x' });
});

describe.skipIf(nssMissing)(`adopting NSS softoken tokens${nssMissing ? ` (skipped: ${nssMissing})` : ''}`, () => {
  const base = () => ({ modulePath: nss.modulePath, moduleArgs: nss.moduleArgs });

  it('refuses, writing nothing: a missing PIN file, one others can read, no PIN at all, a wrong PIN, one token twice', async () => {
    const state = join(dir, 'refusals');
    const open = join(dir, 'open.pin');
    writeFileSync(open, nss.pins['adopt-a']!, { mode: 0o644 });
    chmodSync(open, 0o644);
    const wrong = join(dir, 'wrong.pin');
    writeFileSync(wrong, 'not-the-pin', { mode: 0o600 });
    const cases: [string, Parameters<typeof adopt>[0]['replicas']][] = [
      ['PIN_FILE_UNREADABLE', [{ token: 'adopt-a', pinFile: join(dir, 'nowhere.pin') }]],
      ['PIN_FILE_PERMISSIONS', [{ token: 'adopt-a', pinFile: open }]],
      ['PIN_MISSING', [{ token: 'adopt-a' }]],
      ['PIN_INCORRECT', [{ token: 'adopt-a', pinFile: wrong }]],
      ['FLEET_MISMATCH', [{ token: 'adopt-a', pinFile: nss.pinFile('adopt-a') }, { token: 'pkcs11:token=adopt-a', pinFile: nss.pinFile('adopt-a') }]],
      ['BAD_REPLICA_NAME', [{ name: 'x', token: 'adopt-a', pinFile: nss.pinFile('adopt-a') }, { name: 'x', token: 'adopt-b', pinFile: nss.pinFile('adopt-b') }]],
    ];
    for (const [code, replicas] of cases) {
      const e = await refused(() => adopt({ ...base(), stateDir: state, replicas }));
      expect(e.code, e.message).toBe(code);
      for (const pin of Object.values(nss.pins)) expect(e.message).not.toContain(pin);
      expect(existsSync(join(state, 'fleet.json'))).toBe(false);
    }
    // Nothing of bkv's went into the token either.
    const t = openToken({ ...base(), token: 'adopt-a', pin: nss.pins['adopt-a']! });
    try {
      expect(t.findObject('record-key', 0x4 /* CKO_SECRET_KEY */)).toBeUndefined();
    } finally {
      t.close();
    }
  });

  it('adopts, records the PIN files (not the PINs) and the data store, and a re-run changes nothing', async () => {
    const state = join(dir, 'fleet');
    const replicas = [{ token: 'adopt-a', pinFile: nss.pinFile('adopt-a') }, { name: 'eu-west', token: 'pkcs11:token=adopt-b', pinFile: nss.pinFile('adopt-b') }];
    const r = await adopt({ ...base(), stateDir: state, replicas });
    expect(r.unchanged).toBe(false);
    expect(r.replicas.map((x) => `${x.name}=${x.tokenLabel}`)).toEqual(['us-east=adopt-a', 'eu-west=adopt-b']);
    const text = readFileSync(join(state, 'fleet.json'), 'utf8');
    for (const pin of Object.values(nss.pins)) expect(text).not.toContain(pin);
    // NSS has what the token ceremony needs: the seed never left a token.
    expect(JSON.parse(text).ceremony).toMatchObject({ kind: 'token', source: 'adopt-a' });
    const s = loadState(state);
    expect(s.confPath).toBeUndefined();
    // PINs are looked up for a token label through its replica: here the operator's file.
    expect(s.pinFor('adopt-b')).toBe(nss.pins['adopt-b']);
    expect(s.tokenOptions('adopt-b')).toMatchObject({ token: 'pkcs11:token=adopt-b', dataStore: 'secret-key-id', moduleArgs: nss.moduleArgs });
    expect((await adopt({ ...base(), stateDir: state, replicas })).unchanged).toBe(true);
    expect((await provision({ stateDir: state })).unchanged).toBe(true);
    expect(readFileSync(join(state, 'fleet.json'), 'utf8')).toBe(text);
    expect((await refused(() => provision({ stateDir: state, force: true }))).code).toBe('FLEET_ADOPTED');
    expect((await refused(() => adopt({ ...base(), stateDir: state, replicas: [replicas[0]!] }))).code).toBe('FLEET_MISMATCH');
    // Its tokens now hold this fleet's secrets: another fleet cannot take them.
    const other = join(dir, 'other');
    const e = await refused(() => adopt({ ...base(), stateDir: other, replicas: [{ token: 'adopt-c', pinFile: nss.pinFile('adopt-c') }, replicas[0]!] }));
    expect(e.code).toBe('FLEET_SECRETS_PRESENT');
    expect(e.message).toContain('adopt-a');
    expect(existsSync(join(other, 'fleet.json'))).toBe(false);
  });
});

describe('bkv provision --adopt: usage errors change nothing', () => {
  it('refuses flags that do not go with --adopt, a bad --ceremony and a --pin-file count that does not pair up', async () => {
    const { cli } = await import('../e2e/fixture.ts');
    const state = join(dir, 'usage');
    for (const [args, msg] of [
      [['--adopt', 'a', '--replicas', '3'], /do not go with --adopt/],
      [['--adopt', 'a', '--force'], /do not go with --adopt/],
      [['--pin-file', 'p'], /--pin-file goes with --adopt/],
      [['--ceremony', 'sometimes'], /--ceremony must be auto, token or host/],
      [['--adopt', 'a', '--adopt', 'b', '--adopt', 'c', '--pin-file', 'p', '--pin-file', 'q'], /once per --adopt \(3\), once for all, or not at all \(got 2\)/],
    ] as const) {
      const r = await cli(['provision', '--state', state, ...args]);
      expect(r.status, r.err).toBe(2);
      expect(r.err).toMatch(msg);
      expect(existsSync(state)).toBe(false);
    }
  });
});
