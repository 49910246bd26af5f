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

export interface TestFleet {
  stateDir: string;
  state: FleetState;
  replicas: ReplicaInfo[];
  /** Opens (and logs in to) a token of this fleet in the calling thread. Closed by cleanup(). */
  openToken(tokenLabel: string, opts?: { sealScheme?: SealScheme | 'auto' }): Pkcs11Token;
  cleanup(): Promise<void>;
}

export async function provisionTestFleet(opts: { replicas?: number; sealScheme?: SealScheme | 'auto' } = {}): Promise<TestFleet> {
  const stateDir = mkdtempSync(join(tmpdir(), 'bkv-test-fleet-'));
  try {
    await provision({ stateDir, replicas: opts.replicas ?? 5, sealScheme: opts.sealScheme });
  } catch (e) {
    finalizeModule();
    rmSync(stateDir, { recursive: true, force: true });
    throw e;
  }
  const state = loadState(stateDir);
  activateSoftHsmConf(state);
  const opened: Pkcs11Token[] = [];
  return {
    stateDir,
    state,
    replicas: state.replicas,
    openToken(tokenLabel, o = {}) {
      const t = openToken({
        modulePath: state.modulePath,
        token: tokenLabel,
        pin: state.pinFor(tokenLabel),
        sealScheme: o.sealScheme ?? state.sealSchemeFor(tokenLabel),
      });
      opened.push(t);
      return t;
    },
    async cleanup() {
      for (const t of opened) t.close();
      opened.length = 0;
      finalizeModule();
      rmSync(stateDir, { recursive: true, force: true });
    },
  };
}
