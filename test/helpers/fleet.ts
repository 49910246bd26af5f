// A fresh SoftHSM2 fleet in a temporary state directory, for tests. Sets SOFTHSM2_CONF in this
// (main) thread before the module initialises, so call it before any token is opened in the test
// file (each vitest file runs in its own process). cleanup() closes the tokens it opened, finalises
// the module and removes the directory; a later provisionTestFleet in the same file then works.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { provision } from '../../softhsm/provision.ts';
import { activateSoftHsmConf, loadState, type FleetState, type ReplicaInfo } from '../../softhsm/state.ts';
import { openToken, finalizeModule, type Pkcs11Token } from '../../hsm-adapter/pkcs11-token.ts';
import type { SealScheme } from '../../hsm-adapter/token.ts';
import { adopt } from '../../softhsm/adopt.ts';
import { makeNssTokens } from './nss.ts';

export interface TestFleet {
  stateDir: string;
  state: FleetState;
  replicas: ReplicaInfo[];
  /** Opens (and logs in to) a token of this fleet in the calling thread. Closed by cleanup(). */
  openToken(tokenLabel: string, opts?: { sealScheme?: SealScheme | 'auto' }): Pkcs11Token;
  cleanup(): Promise<void>;
}

export async function provisionTestFleet(opts: { replicas?: number; spares?: number; sealScheme?: SealScheme | 'auto' } = {}): Promise<TestFleet> {
  const stateDir = mkdtempSync(join(tmpdir(), 'bkv-test-fleet-'));
  try {
    await provision({ stateDir, replicas: opts.replicas ?? 5, sealScheme: opts.sealScheme, ...(opts.spares ? { spares: opts.spares } : {}) });
  } catch (e) {
    finalizeModule();
    rmSync(stateDir, { recursive: true, force: true });
    throw e;
  }
  const state = loadState(stateDir);
  activateSoftHsmConf(state);
  return onState(stateDir, state);
}

/** A TestFleet over a loaded state: the tokens it opens are closed, and the directory removed, at cleanup (then `also`). */
function onState(stateDir: string, state: FleetState, also: () => void = () => undefined): TestFleet {
  const opened: Pkcs11Token[] = [];
  return {
    stateDir,
    state,
    replicas: state.replicas,
    openToken(tokenLabel, o = {}) {
      const t = openToken({ ...state.tokenOptions(tokenLabel), ...(o.sealScheme ? { sealScheme: o.sealScheme } : {}) });
      opened.push(t);
      return t;
    },
    async cleanup() {
      for (const t of opened) t.close();
      opened.length = 0;
      finalizeModule();
      rmSync(stateDir, { recursive: true, force: true });
      also();
    },
  };
}

/**
 * The same as provisionTestFleet, on the module BKV_TEST_FLEET names: 'softhsm' (default) or 'nss'
 * (NSS softoken tokens labelled by replica name, adopted with `provision --adopt`'s code). Token tests
 * written against it run unchanged on either.
 */
export async function testFleet(opts: { replicas?: number } = {}): Promise<TestFleet & { on: 'softhsm' | 'nss' }> {
  const on = process.env.BKV_TEST_FLEET === 'nss' ? 'nss' : 'softhsm';
  if (on === 'softhsm') return { ...(await provisionTestFleet(opts)), on };
  const labels = ['us-east', 'us-west', 'eu-west', 'ap-southeast', 'sa-east'].slice(0, opts.replicas ?? 5);
  const nss = makeNssTokens(labels);
  const stateDir = mkdtempSync(join(tmpdir(), 'bkv-test-fleet-nss-'));
  await adopt({ stateDir, modulePath: nss.modulePath, moduleArgs: nss.moduleArgs, replicas: labels.map((l) => ({ name: l, token: l, pinFile: nss.pinFile(l) })) });
  return { ...onState(stateDir, loadState(stateDir), () => nss.cleanup()), on };
}
