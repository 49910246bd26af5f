// Provisioning and the key ceremony against real SoftHSM2 tokens.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import pkcs11 from 'pkcs11js';
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync, readdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { provisionTestFleet, type TestFleet } from '../helpers/fleet.ts';
import { provision } from '../../softhsm/provision.ts';
import { activateSoftHsmConf, loadState, replicaNames, StateError, type FleetManifest } from '../../softhsm/state.ts';
import { fleetAkeKcv, oprfSeedKcv } from '../../softhsm/keys.ts';
import { KeyLabels, FLEET_AKE_AAD } from '../../hsm-adapter/token.ts';
import { BkvError } from '../../protocol/errors.ts';

let fleet: TestFleet;
let scratch: string;
beforeAll(async () => {
  fleet = await provisionTestFleet({ replicas: 3 });
  scratch = mkdtempSync(join(tmpdir(), 'bkv-provision-test-'));
});
afterAll(async () => {
  await fleet?.cleanup();
  if (scratch) rmSync(scratch, { recursive: true, force: true });
});

async function rejects(p: Promise<unknown> | (() => unknown), code: string): Promise<BkvError> {
  try {
    await (typeof p === 'function' ? p() : p);
  } catch (e) {
    expect(e).toBeInstanceOf(BkvError);
    expect((e as BkvError).code).toBe(code);
    return e as BkvError;
  }
  throw new Error(`expected ${code}`);
}

const snapshot = (dir: string) =>
  Object.fromEntries(
    ['fleet.json', 'pins.json', 'softhsm2.conf'].map((f) => [f, readFileSync(join(dir, f), 'utf8')]),
  );

describe('provision', () => {
  it('lays out the state directory: conf, 0600 PIN file, manifest', () => {
    const m = JSON.parse(readFileSync(join(fleet.stateDir, 'fleet.json'), 'utf8')) as FleetManifest;
    expect(m.replicas.map((r) => r.tokenLabel)).toEqual(['us-east', 'us-west', 'eu-west']);
    expect(m.modulePath).toBe(fleet.state.modulePath);
    expect(m.kcv.oprfSeed).toMatch(/^[0-9a-f]{16}$/);
    expect(statSync(join(fleet.stateDir, 'pins.json')).mode & 0o777).toBe(0o600);
    expect(readFileSync(fleet.state.confPath!, 'utf8')).toContain(`directories.tokendir = ${join(fleet.stateDir, 'tokens')}`);
    expect(readdirSync(join(fleet.stateDir, 'tokens')).length).toBe(3);
    expect(process.env.SOFTHSM2_CONF).toBe(fleet.state.confPath!);
    // The manifest holds no PIN.
    for (const r of fleet.replicas) expect(readFileSync(join(fleet.stateDir, 'fleet.json'), 'utf8')).not.toContain(fleet.state.pinFor(r.tokenLabel));
  });

  it('names replicas after data centers, then dc-N', () => {
    expect(replicaNames(5)).toEqual(['us-east', 'us-west', 'eu-west', 'ap-southeast', 'sa-east']);
    expect(replicaNames(7).slice(5)).toEqual(['eu-central', 'ap-northeast']);
    expect(replicaNames(20)[19]).toBe('dc-20');
    expect(() => replicaNames(0)).toThrow(StateError);
  });

  it('is a no-op the second time, and says so', async () => {
    const before = snapshot(fleet.stateDir);
    const r = await provision({ stateDir: fleet.stateDir });
    expect(r.unchanged).toBe(true);
    expect(r.actions).toEqual([]);
    expect(snapshot(fleet.stateDir)).toEqual(before);
    expect(r.kcv).toEqual(fleet.state.manifest.kcv);
  });

  it('fleet secrets agree across tokens; per-token keys differ', () => {
    const tokens = fleet.replicas.map((r) => fleet.openToken(r.tokenLabel));
    const kcvs = tokens.map((t) => [oprfSeedKcv(t), fleetAkeKcv(t)].join('/'));
    expect(new Set(kcvs).size).toBe(1);
    expect(kcvs[0]).toBe(`${fleet.state.manifest.kcv.oprfSeed}/${fleet.state.manifest.kcv.fleetAke}`);
    // The AKE seed opens to the same 32 bytes everywhere, though each token's sealed blob differs.
    const seeds = tokens.map((t) => Buffer.from(t.open(KeyLabels.recordKey, t.readData(KeyLabels.fleetAkeSealed), FLEET_AKE_AAD)));
    expect(seeds[0].length).toBe(32);
    expect(seeds.every((s) => s.equals(seeds[0]))).toBe(true);
    expect(new Set(tokens.map((t) => Buffer.from(t.readData(KeyLabels.fleetAkeSealed)).toString('hex'))).size).toBe(3);
    seeds.forEach((s) => s.fill(0));
    // Per-token: identities, MAC keys and record keys differ.
    expect(new Set(tokens.map((t) => Buffer.from(t.publicKey(KeyLabels.replicaIdentity)).toString('hex'))).size).toBe(3);
    expect(new Set(tokens.map((t) => Buffer.from(t.hmac(KeyLabels.recordMacKey, 'sha256', Buffer.from('x'))).toString('hex'))).size).toBe(3);
    const sealed = tokens[0].seal(KeyLabels.recordKey, Buffer.from('x'), Buffer.from('a'));
    expect(() => tokens[1].open(KeyLabels.recordKey, sealed, Buffer.from('a'))).toThrow(/cannot open/);
  });

  it('completes a half-finished state: a lost manifest, a lost per-token key', async () => {
    const t = fleet.openToken('us-west');
    const mac = t.findObject(KeyLabels.recordMacKey, pkcs11.CKO_SECRET_KEY)!;
    t.raw.C_DestroyObject(t.sessionHandle, mac);
    rmSync(join(fleet.stateDir, 'fleet.json'));
    await rejects(() => loadState(fleet.stateDir), 'STATE_INCOMPLETE');
    const r = await provision({ stateDir: fleet.stateDir, replicas: 3 });
    expect(r.unchanged).toBe(false);
    expect(r.actions.join('\n')).toContain("token 'us-west': created recordMacKey");
    expect(r.kcv).toEqual(fleet.state.manifest.kcv);
    expect(loadState(fleet.stateDir).manifest.kcv).toEqual(fleet.state.manifest.kcv);
    expect(t.findObject(KeyLabels.recordMacKey, pkcs11.CKO_SECRET_KEY)).toBeDefined();
  });

  it('reports a ceremony that cannot be completed, and changes nothing', async () => {
    const t = fleet.openToken('eu-west');
    const seed = t.findObject(KeyLabels.oprfSeed, pkcs11.CKO_SECRET_KEY)!;
    const before = snapshot(fleet.stateDir);
    t.raw.C_DestroyObject(t.sessionHandle, seed);
    const e = await rejects(provision({ stateDir: fleet.stateDir }), 'FLEET_INCOMPLETE');
    expect(e.message).toContain('eu-west');
    expect(e.message).toContain('--force');
    expect(snapshot(fleet.stateDir)).toEqual(before);
    expect(fleet.openToken('us-east').findObject(KeyLabels.oprfSeed, pkcs11.CKO_SECRET_KEY)).toBeDefined();
  });

  it('refuses to replace a lost token of a finished fleet, before changing anything', async () => {
    const { finalizeModule } = await import('../../hsm-adapter/module.ts');
    finalizeModule();
    const tokensDir = join(fleet.stateDir, 'tokens');
    const gone = readdirSync(tokensDir).find((d) => readFileSync(join(tokensDir, d, 'token.object')).includes(Buffer.from('us-west')));
    expect(gone).toBeDefined();
    rmSync(join(tokensDir, gone!), { recursive: true });
    const before = readdirSync(tokensDir).sort();
    const e = await rejects(provision({ stateDir: fleet.stateDir }), 'FLEET_INCOMPLETE');
    expect(e.message).toContain('us-west');
    expect(readdirSync(tokensDir).sort()).toEqual(before);
  });

  it('refuses to resize a fleet without --force', async () => {
    const e = await rejects(provision({ stateDir: fleet.stateDir, replicas: 5 }), 'FLEET_MISMATCH');
    expect(e.message).toContain('--force');
  });

  it('--force starts over with new secrets', async () => {
    const old = fleet.state.manifest.kcv;
    const r = await provision({ stateDir: fleet.stateDir, replicas: 2, force: true });
    expect(r.replicas.map((x) => x.tokenLabel)).toEqual(['us-east', 'us-west']);
    expect(r.kcv.oprfSeed).not.toBe(old.oprfSeed);
    expect(r.kcv.fleetAke).not.toBe(old.fleetAke);
    const again = await provision({ stateDir: fleet.stateDir });
    expect(again.unchanged).toBe(true);
  });
});

describe('state', () => {
  it('a missing state directory is a clear error', async () => {
    const e = await rejects(() => loadState(join(scratch, 'nope')), 'STATE_MISSING');
    expect(e.message).toContain('bkv provision');
  });

  it('a corrupt manifest or a PIN file others can read is refused', async () => {
    const dir = join(scratch, 'corrupt');
    rmSync(dir, { recursive: true, force: true });
    const { mkdirSync } = await import('node:fs');
    mkdirSync(dir);
    writeFileSync(join(dir, 'fleet.json'), '{"version": 1');
    await rejects(() => loadState(dir), 'STATE_CORRUPT');
    writeFileSync(join(dir, 'fleet.json'), readFileSync(join(fleet.stateDir, 'fleet.json')));
    writeFileSync(join(dir, 'softhsm2.conf'), '');
    writeFileSync(join(dir, 'pins.json'), '{"version":1,"tokens":{}}', { mode: 0o644 });
    await rejects(() => loadState(dir), 'PIN_FILE_PERMISSIONS');
  });

  it('switching SoftHSM2 conf after the module is initialised is refused', async () => {
    await rejects(() => activateSoftHsmConf({ confPath: join(scratch, 'other.conf') }), 'MODULE_ALREADY_INITIALISED');
    expect(process.env.SOFTHSM2_CONF).toBe(fleet.state.confPath!);
  });
});
