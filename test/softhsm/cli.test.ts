// `bkv provision` and `bkv doctor` as a user runs them (separate processes, real tokens).
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawnSync } from 'node:child_process';
import { cpSync, existsSync, mkdtempSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { backendStatus } from '../../protocol/opaque/index.ts';

const bkv = fileURLToPath(new URL('../../bin/bkv.js', import.meta.url));
let dir: string;
const run = (args: string[], env: Record<string, string> = {}) =>
  spawnSync(process.execPath, [bkv, ...args], { cwd: dir, encoding: 'utf8', env: { ...process.env, SOFTHSM2_CONF: '', ...env } });

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'bkv-cli-test-'));
});
afterAll(() => {
  if (dir) rmSync(dir, { recursive: true, force: true });
});

describe('bkv provision / doctor', () => {
  it('provisions, then says nothing changed the second time', () => {
    const a = run(['provision', '--replicas', '3', '--state', 'fleet']);
    expect(a.stderr).toBe('');
    expect(a.status).toBe(0);
    expect(a.stdout).toContain('key ceremony');
    expect(a.stdout).toContain('fleet of 3 tokens ready');
    const b = run(['provision', '--state', 'fleet']);
    expect(b.status).toBe(0);
    expect(b.stdout).toContain('nothing changed');
    const pins = JSON.parse(readFileSync(join(dir, 'fleet', 'pins.json'), 'utf8')) as { tokens: Record<string, { user: string; so: string }> };
    for (const p of Object.values(pins.tokens)) {
      for (const out of [a.stdout, b.stdout]) {
        expect(out).not.toContain(p.user);
        expect(out).not.toContain(p.so);
      }
    }
  });

  it('a moved state directory uses its own tokens, says so, and stays green; one moved without them is refused, saying why', () => {
    expect(run(['provision', '--replicas', '2', '--state', 'orig']).status).toBe(0);
    const kcv = (JSON.parse(readFileSync(join(dir, 'orig', 'fleet.json'), 'utf8')) as { kcv: unknown }).kcv;
    renameSync(join(dir, 'orig'), join(dir, 'moved'));
    const m = run(['provision', '--state', 'moved']);
    expect(m.status, m.stderr).toBe(0);
    expect(m.stdout).toContain(`named the token directory ${join(dir, 'orig', 'tokens')} (the state directory was moved or copied); it now names its own, ${join(dir, 'moved', 'tokens')}`);
    // Only the conf changed: no token made, no ceremony again.
    expect(m.stdout).not.toContain('initialised token');
    expect(m.stdout).not.toContain('key ceremony');
    expect(readFileSync(join(dir, 'moved', 'softhsm2.conf'), 'utf8')).toContain(`directories.tokendir = ${join(dir, 'moved', 'tokens')}\n`);
    expect(statSync(join(dir, 'moved', 'softhsm2.conf')).mode & 0o777).toBe(0o600);
    expect(existsSync(join(dir, 'orig'))).toBe(false); // nothing was made where it used to be
    const d = run(['doctor', '--state', 'moved', '--json']);
    expect(d.status, d.stdout).toBe(0);
    expect((JSON.parse(d.stdout) as { ok: boolean }).ok).toBe(true);
    expect((JSON.parse(readFileSync(join(dir, 'moved', 'fleet.json'), 'utf8')) as { kcv: unknown }).kcv).toEqual(kcv);

    // A copy of the directory without its tokens: refused, nothing written, and no advice to --force.
    cpSync(join(dir, 'moved'), join(dir, 'half'), { recursive: true });
    rmSync(join(dir, 'half', 'tokens'), { recursive: true });
    const confBefore = readFileSync(join(dir, 'half', 'softhsm2.conf'), 'utf8');
    const h = run(['provision', '--state', 'half']);
    expect(h.status).toBe(1);
    expect(h.stderr).toContain('[STATE_MOVED]');
    expect(h.stderr).toContain(`cp -a ${join(dir, 'moved', 'tokens')} ${join(dir, 'half', 'tokens')}`);
    expect(h.stderr).not.toContain('--force');
    expect(readFileSync(join(dir, 'half', 'softhsm2.conf'), 'utf8')).toBe(confBefore);
    expect(existsSync(join(dir, 'half', 'tokens'))).toBe(false);
    // A copy with them: its own tokens, and a warning that it is a clone of a fleet that still exists.
    cpSync(join(dir, 'moved'), join(dir, 'copy'), { recursive: true });
    const c = run(['provision', '--state', 'copy']);
    expect(c.status, c.stderr).toBe(0);
    expect(c.stdout).toContain(`${join(dir, 'moved', 'tokens')} still exists: this directory is a copy of that fleet`);
    expect(readFileSync(join(dir, 'copy', 'softhsm2.conf'), 'utf8')).toContain(`directories.tokendir = ${join(dir, 'copy', 'tokens')}\n`);
  });

  it('a missing PIN file is refused, not replaced by new PINs that could never open the tokens', () => {
    expect(run(['provision', '--replicas', '2', '--state', 'pins']).status).toBe(0);
    const pinsPath = join(dir, 'pins', 'pins.json');
    const saved = readFileSync(pinsPath, 'utf8');
    rmSync(pinsPath);
    for (const args of [['provision', '--state', 'pins'], ['serve', '--state', 'pins']]) {
      const r = run(args);
      expect(r.status, args.join(' ')).toBe(1);
      expect(r.stderr).toContain('[PIN_FILE_MISSING]');
      expect(r.stderr).toContain('Restore pins.json');
      expect(existsSync(pinsPath)).toBe(false);
    }
    // One token's entry gone: the same.
    const pins = JSON.parse(saved) as { tokens: Record<string, unknown> };
    delete pins.tokens['us-west'];
    writeFileSync(pinsPath, JSON.stringify(pins), { mode: 0o600 });
    const r = run(['provision', '--state', 'pins']);
    expect(r.status).toBe(1);
    expect(r.stderr).toContain('token(s) us-west');
    expect(JSON.parse(readFileSync(pinsPath, 'utf8'))).toEqual(pins);
    // Restored, everything opens again.
    writeFileSync(pinsPath, saved, { mode: 0o600 });
    expect(run(['doctor', '--state', 'pins']).status).toBe(0);
  });

  it('doctor is green on the fleet, in text and JSON', () => {
    const t = run(['doctor', '--state', 'fleet']);
    expect(t.status).toBe(0);
    expect(t.stdout).toContain('verdict: GREEN, 3 tokens healthy');
    expect(t.stdout).toContain('seal     aes-256-gcm (token offers CKM_AES_GCM)');
    const j = run(['doctor', '--state', 'fleet', '--json']);
    expect(j.status).toBe(0);
    const r = JSON.parse(j.stdout);
    expect(r.ok).toBe(true);
    expect(r.tokens.map((x: { tokenLabel: string }) => x.tokenLabel)).toEqual(['us-east', 'us-west', 'eu-west']);
    expect(new Set(r.tokens.map((x: { kcv: { oprfSeed: string } }) => x.kcv.oprfSeed)).size).toBe(1);
    expect(r.fleetChecks.every((c: { status: string }) => c.status === 'pass')).toBe(true);
    // the OPAQUE backend, as this (same build, same environment) process sees it
    const here = backendStatus();
    expect(r.opaqueBackend.backend).toBe(here.defaultBackend);
    expect(r.opaqueBackend.native.loaded).toBe(here.native.loaded);
    expect(t.stdout).toMatch(new RegExp(`^opaque   ${here.defaultBackend} ristretto255 backend`, 'm'));
    expect(r.warnings.length).toBe(here.native.loaded ? 0 : 1);
  });

  it('doctor reports a missing native OPAQUE backend, with the reason, as a warning that keeps it green', () => {
    for (const [env, reason] of [
      [{ BKV_NATIVE: 'off' }, 'disabled by BKV_NATIVE=off'],
      [{ BKV_NATIVE_ADDON: join(dir, 'no-such-addon.node') }, 'not built'],
    ] as const) {
      const t = run(['doctor', '--state', 'fleet'], env);
      expect(t.status).toBe(0);
      expect(t.stdout).toContain('verdict: GREEN, 3 tokens healthy');
      expect(t.stdout).toMatch(/^opaque   libsodium ristretto255 backend \(native unavailable: /m);
      expect(t.stdout).toMatch(new RegExp(`^warning: OPAQUE runs on the libsodium fallback, not the native backend \\(${reason}`, 'm'));
      const j = run(['doctor', '--state', 'fleet', '--json'], env);
      expect(j.status).toBe(0);
      const r = JSON.parse(j.stdout);
      expect(r.ok).toBe(true);
      expect(r.problems).toEqual([]);
      expect(r.opaqueBackend.backend).toBe('libsodium');
      expect(r.opaqueBackend.native.loaded).toBe(false);
      expect(r.opaqueBackend.native.reason).toContain(reason);
      expect(r.warnings).toHaveLength(1);
    }
  });

  it('doctor turns red when the manifest and the tokens disagree', () => {
    const path = join(dir, 'fleet', 'fleet.json');
    const good = readFileSync(path, 'utf8');
    try {
      const m = JSON.parse(good);
      m.kcv.oprfSeed = '0000000000000000';
      writeFileSync(path, JSON.stringify(m));
      const r = run(['doctor', '--state', 'fleet']);
      expect(r.status).toBe(1);
      expect(r.stdout).toContain('verdict: RED');
      expect(r.stdout).toContain('fleet.json records 0000000000000000');
    } finally {
      writeFileSync(path, good);
    }
  });

  it('doctor on a missing state directory says how to fix it', () => {
    const r = run(['doctor', '--state', 'nowhere']);
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/does not exist; run `bkv provision/);
    expect(r.stderr).toContain('[STATE_MISSING]');
  });

  it('doctor on one token by URI and PIN file; a wrong PIN is red and never printed', () => {
    const pins = JSON.parse(readFileSync(join(dir, 'fleet', 'pins.json'), 'utf8'));
    const env = { SOFTHSM2_CONF: join(dir, 'fleet', 'softhsm2.conf') };
    writeFileSync(join(dir, 'pin'), pins.tokens['us-west'].user);
    const ok = run(['doctor', '--token', 'pkcs11:token=us-west', '--pin-file', 'pin'], env);
    expect(ok.status).toBe(0);
    expect(ok.stdout).toContain('verdict: GREEN, 1 token healthy');
    writeFileSync(join(dir, 'badpin'), 'not-the-pin-4417');
    const bad = run(['doctor', '--token', 'us-west', '--pin-file', 'badpin', '--json'], env);
    expect(bad.status).toBe(1);
    const r = JSON.parse(bad.stdout);
    expect(r.tokens[0].error.code).toBe('PIN_INCORRECT');
    expect(bad.stdout + bad.stderr).not.toContain('not-the-pin-4417');
    expect(bad.stdout + bad.stderr).not.toContain(pins.tokens['us-west'].user);
  });

  it('doctor on a bare token (no bkv objects) is green about what exists and lists what is missing', () => {
    const env = { SOFTHSM2_CONF: join(dir, 'fleet', 'softhsm2.conf') };
    const init = spawnSync('softhsm2-util', ['--init-token', '--free', '--label', 'bare', '--so-pin', '87654321', '--pin', '12345678'], { encoding: 'utf8', env: { ...process.env, ...env } });
    expect(init.status).toBe(0);
    const r = run(['doctor', '--token', 'bare', '--json'], { ...env, BKV_PIN: '12345678' });
    expect(r.status).toBe(0);
    const rep = JSON.parse(r.stdout);
    const missing = rep.tokens[0].checks.filter((c: { status: string }) => c.status === 'missing').map((c: { name: string }) => c.name);
    expect(missing).toEqual(expect.arrayContaining(['seal/open', 'sign/verify', 'OPRF seed', 'fleet AKE seed']));
    expect(rep.tokens[0].checks.find((c: { name: string }) => c.name === 'random').status).toBe('pass');
    const text = run(['doctor', '--token', 'bare'], { ...env, BKV_PIN: '12345678' });
    expect(text.stdout).toContain('not provisioned for bkv: missing');
  });

  it('a missing module or an unknown token is a clear error', () => {
    const m = run(['doctor', '--token', 'us-east', '--module', '/nonexistent/lib.so', '--json'], { BKV_PIN: 'x' });
    expect(m.status).toBe(1);
    expect(m.stderr).toContain('PKCS#11 module not found: /nonexistent/lib.so');
    const env = { SOFTHSM2_CONF: join(dir, 'fleet', 'softhsm2.conf'), BKV_PIN: 'x' };
    const u = run(['doctor', '--token', 'mars-north'], env);
    expect(u.status).toBe(1);
    expect(u.stdout).toContain("no token matches token=mars-north");
  });

  it('--module-args reaches C_Initialize (SoftHSM2 refuses any, so the failure names it)', () => {
    const env = { SOFTHSM2_CONF: join(dir, 'fleet', 'softhsm2.conf'), BKV_PIN: 'x' };
    const r = run(['doctor', '--token', 'us-east', '--module-args', 'configdir=/x'], env);
    expect(r.status).toBe(1);
    expect(r.stderr).toContain('CKR_ARGUMENTS_BAD');
  });

  it('bad flags are usage errors', () => {
    expect(run(['provision', '--replicas', 'many']).status).toBe(2);
    expect(run(['doctor', '--state', 'fleet', '--token', 'x']).status).toBe(2);
    expect(run(['doctor', '--seal-scheme', 'rot13']).status).toBe(2);
  });
});
