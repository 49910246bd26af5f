// Spare tokens (`provision --spares`) against real SoftHSM2 tokens: they hold the same fleet
// secrets as the members (same key check values), stand by in fleet.json, cannot be made after the
// ceremony, and a removed replica whose token the operator deleted leaves the standby list, while
// a spare whose token is gone is refused as before.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { provision } from '../../softhsm/provision.ts';
import { activateSoftHsmConf, loadState, readManifest, statePaths, writeManifest } from '../../softhsm/state.ts';
import { fleetAkeKcv, oprfSeedKcv } from '../../softhsm/keys.ts';
import { finalizeModule, openToken } from '../../hsm-adapter/pkcs11-token.ts';

let stateDir: string;
beforeAll(() => { stateDir = mkdtempSync(join(tmpdir(), 'bkv-provision-standby-')); });
afterAll(() => {
  finalizeModule();
  rmSync(stateDir, { recursive: true, force: true });
});

const deleteToken = (label: string) => execFileSync('softhsm2-util', ['--delete-token', '--token', label], { env: { ...process.env, SOFTHSM2_CONF: statePaths(stateDir).conf }, stdio: 'ignore' });

describe('provision --spares', () => {
  it('makes spares in the same ceremony; a deleted removed token leaves the list, a deleted spare is refused', async () => {
    const r = await provision({ stateDir, replicas: 2, spares: 2 });
    expect(r.replicas.map((x) => x.name)).toEqual(['us-east', 'us-west']);
    expect(r.standby?.map((x) => [x.name, x.standby])).toEqual([['eu-west', 'spare'], ['ap-southeast', 'spare']]);
    const m = readManifest(statePaths(stateDir).manifest)!;
    expect(m.founders).toEqual(['us-east', 'us-west']);
    const state = loadState(stateDir);
    expect(state.replicas.map((x) => x.name)).toEqual(['us-east', 'us-west']);
    expect(state.standby.map((x) => x.name)).toEqual(['eu-west', 'ap-southeast']);
    activateSoftHsmConf(state);
    for (const name of ['us-east', 'eu-west', 'ap-southeast']) {
      const t = openToken(state.tokenOptions(name));
      try {
        expect([oprfSeedKcv(t), fleetAkeKcv(t)], name).toEqual([m.kcv.oprfSeed, m.kcv.fleetAke]);
      } finally {
        t.close();
      }
    }
    finalizeModule();
    // Idempotent; spares cannot be added after the ceremony.
    expect((await provision({ stateDir })).unchanged).toBe(true);
    finalizeModule();
    await expect(provision({ stateDir, spares: 3 })).rejects.toMatchObject({ code: 'FLEET_MISMATCH' });
    finalizeModule();

    // eu-west as a replica `fleet member remove` took out, then its token deleted by the operator.
    writeManifest(stateDir, { ...m, standby: m.standby!.map((x) => (x.name === 'eu-west' ? { ...x, standby: 'removed' as const } : x)) });
    deleteToken('eu-west');
    const again = await provision({ stateDir });
    finalizeModule();
    expect(again.actions.some((a) => a.includes("removed replica 'eu-west' is gone"))).toBe(true);
    expect(readManifest(statePaths(stateDir).manifest)!.standby?.map((x) => x.name)).toEqual(['ap-southeast']);
    // A spare's token is the fleet's: gone, it is refused like a member's.
    deleteToken('ap-southeast');
    await expect(provision({ stateDir })).rejects.toMatchObject({ code: 'FLEET_INCOMPLETE' });
    finalizeModule();
  }, 120_000);
});
