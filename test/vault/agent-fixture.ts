// Shared set-up for the firmware and agent suites: a real SoftHSM2 fleet, real LMDB in a temp dir,
// real OPAQUE with a cheap KSF (identity: the tests exercise the vault, not key stretching).
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { provisionTestFleet, type TestFleet } from '../helpers/fleet.ts';
import type { Token } from '../../hsm-adapter/token.ts';
import { identityKsf, tokenServerSecrets } from '../../protocol/opaque/index.ts';
import type { WireSuite } from '../../protocol/wire.ts';
import { Replica, type ReplicaOptions } from '../../vault/agent/replica.ts';
import type { PasswordOptions, Send } from '../../client/password.ts';

export interface VaultFixture {
  fleet: TestFleet;
  token: Token;
  replicaId: string;
  dbDir: string;
  tmp: string;
  logLines: string[];
  open(extra?: Partial<ReplicaOptions>): Promise<Replica>;
  client(user: string, suite?: WireSuite): PasswordOptions;
  sendVia(replica: Replica, user: string): Send;
  cleanup(): Promise<void>;
}

/** replicas > 1: the fixture drives replica `use`; others are there for cross-replica tests. */
export async function vaultFixture(opts: { replicas?: number; use?: number } = {}): Promise<VaultFixture> {
  const fleet = await provisionTestFleet({ replicas: opts.replicas ?? 1 });
  const info = fleet.replicas[opts.use ?? 0]!;
  const replicaId = info.name;
  const token = fleet.openToken(info.tokenLabel);
  const tmp = mkdtempSync(join(tmpdir(), 'bkv-vault-test-'));
  const dbDir = join(tmp, 'replicas', replicaId, 'db');
  const logLines: string[] = [];
  const opened: Replica[] = [];
  return {
    fleet,
    token,
    replicaId,
    dbDir,
    tmp,
    logLines,
    async open(extra = {}) {
      const r = await Replica.open({ replicaId, token, dbDir, tickMs: 0, log: (l) => logLines.push(l), ...extra });
      opened.push(r);
      return r;
    },
    client(user, suite = 'ristretto255-SHA512') {
      // The pinned key, as a device would carry it in its config.
      return { user, suite, ksf: identityKsf, serverPublicKey: tokenServerSecrets(token, suite).akeKeyPair.publicKey };
    },
    sendVia(replica, user) {
      return (body) => replica.handle(user, body);
    },
    async cleanup() {
      for (const r of opened) await r.close();
      await fleet.cleanup();
      rmSync(tmp, { recursive: true, force: true });
    },
  };
}
