// The vault process: one replica (firmware + agent + solo log) serving relayed device requests on
// loopback. Run: node bin/run.js vault/main.ts [--state .bkv] [--replica NAME] [--port 0] [--db DIR]
// (env: BKV_STATE, BKV_REPLICA, BKV_VAULT_PORT). Prints, once listening:
//   VAULT_URL=http://127.0.0.1:PORT
//   VAULT_AKE_PUBLIC_KEY_<suite>=<hex>   (the key devices pin; same for every replica of the fleet)
// Exits 0 on SIGTERM/SIGINT after closing cleanly; 2 on bad flags; 1 when it cannot start.
import { pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import { openToken, finalizeModule } from '../hsm-adapter/pkcs11-token.ts';
import { BkvError, isBkvError } from '../protocol/errors.ts';
import { anchorOwner } from './firmware/storage.ts';
import { pinnedKeys } from './firmware/gate.ts';
import { activateSoftHsmConf, loadState } from '../softhsm/state.ts';
import { Replica, replicaDbDir } from './agent/replica.ts';
import { startVaultServer } from './agent/server.ts';
import { MeteredToken } from './agent/metered-token.ts';
import { hopSecret } from '../protocol/hop-secret.ts';

const USAGE = 'usage: vault/main.ts [--state DIR] [--replica NAME] [--port N] [--db DIR]';

export async function main(argv: string[]): Promise<number> {
  let flags;
  try {
    flags = parseArgs({
      args: argv,
      strict: true,
      options: {
        state: { type: 'string', default: process.env.BKV_STATE ?? '.bkv' },
        replica: { type: 'string', default: process.env.BKV_REPLICA },
        port: { type: 'string', default: process.env.BKV_VAULT_PORT ?? '0' },
        db: { type: 'string' },
        help: { type: 'boolean', default: false },
      },
    }).values;
  } catch (e) {
    process.stderr.write(`${(e as Error).message}\n${USAGE}\n`);
    return 2;
  }
  if (flags.help) {
    process.stdout.write(`${USAGE}\n`);
    return 0;
  }
  const port = Number(flags.port);
  if (!Number.isInteger(port) || port < 0 || port > 65535) {
    process.stderr.write(`--port must be 0..65535\n${USAGE}\n`);
    return 2;
  }
  const log = (line: string) => process.stderr.write(`[vault] ${line}\n`);

  let token;
  let replica: Replica | undefined;
  try {
    const state = loadState(flags.state!);
    activateSoftHsmConf(state);
    const info = flags.replica ? state.replicas.find((r) => r.name === flags.replica) : state.replicas[0];
    if (!info) {
      process.stderr.write(`no replica named ${JSON.stringify(flags.replica)} in ${state.stateDir} (have: ${state.replicas.map((r) => r.name).join(', ')})\n`);
      return 2;
    }
    const metered = new MeteredToken(openToken({ ...state.tokenOptions(info.tokenLabel), signs: false }));
    token = metered;
    // The fleet and the single vault share each token's anchor object, in different seal domains: a
    // state directory the fleet used would make this vault refuse its own disk as TAMPERED. Say why.
    if (anchorOwner(token, info.name) === 'fleet') {
      throw new BkvError(
        'FLEET_STATE',
        `${state.stateDir} belongs to a fleet: replica ${info.name}'s token holds the Raft fleet's log anchor, so a single vault cannot serve it ` +
          `(it would refuse its disk as TAMPERED). Run \`bkv fleet up --state ${state.stateDir}\`, or give \`bkv serve\` a state directory of its own`,
      );
    }
    replica = await Replica.open({ replicaId: info.name, token, dbDir: flags.db ?? replicaDbDir(state.stateDir, info.name), log });
    const server = await startVaultServer(replica, {
      port, log, relayKey: hopSecret(state.stateDir, 'relay'), metricsKey: hopSecret(state.stateDir, 'metrics'), tokenReport: () => metered.report(),
    });
    process.stdout.write(`VAULT_URL=${server.url}\n`);
    for (const [s, hex] of Object.entries(pinnedKeys(replica.firmware))) process.stdout.write(`VAULT_AKE_PUBLIC_KEY_${s.replace(/[^A-Za-z0-9]/g, '_')}=${hex}\n`);
    if (!replica.health.healthy) log(`serving 503 ${replica.health.code}`);

    await new Promise<void>((resolve) => {
      process.once('SIGTERM', resolve);
      process.once('SIGINT', resolve);
    });
    log('shutting down');
    await server.close();
    await replica.close();
    token.close();
    finalizeModule();
    return 0;
  } catch (e) {
    process.stderr.write(`vault: ${isBkvError(e) ? (e.message.startsWith(e.code) ? e.message : `${e.code}: ${e.message}`) : 'failed to start'}\n`);
    await replica?.close().catch(() => undefined);
    try {
      token?.close();
      finalizeModule();
    } catch {
      // already failing; the first error is the one to report
    }
    return 1;
  }
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  process.exitCode = await main(process.argv.slice(2));
}
