// ChatD as its own process: `node bin/run.js chatd/main.ts --vault-url URL [--port N] [--state DIR]`.
// Prints its URL as the only line on stdout once listening (a supervisor waits for that line); logs
// JSON lines on stderr; SIGTERM or SIGINT shut it down cleanly (exit 0).
import { parseArgs } from 'node:util';
import { BkvError } from '../protocol/errors.ts';
import { hopSecret } from '../protocol/hop-secret.ts';
import { ChatdConfigError } from './errors.ts';
import { DEFAULT_LIMITS, startChatd, type ChatdLimits } from './server.ts';

const HELP = `usage: chatd/main.ts --vault-url URL [options]

  --vault-url URL        the vault's HTTP front (env BKV_VAULT_URL)
  --port N               port to listen on, 0 = any free one (env BKV_CHATD_PORT, default 0)
  --host ADDR            address to bind (default 127.0.0.1)
  --state DIR            state directory holding chatd/accounts.json (env BKV_STATE_DIR, default .bkv)
  --account-burst N      per-account bucket size (default ${DEFAULT_LIMITS.perAccount.burst})
  --account-rate R       per-account requests per second (default ${DEFAULT_LIMITS.perAccount.perSecond})
  --address-burst N      per-address bucket size (default ${DEFAULT_LIMITS.perAddress.burst})
  --address-rate R       per-address requests per second (default ${DEFAULT_LIMITS.perAddress.perSecond})
  --unauth-burst N       per-address bucket of requests that fail authentication (default ${DEFAULT_LIMITS.perUnauthenticated.burst})
  --unauth-rate R        its refill per second (default ${DEFAULT_LIMITS.perUnauthenticated.perSecond})
  --vault-timeout-ms MS  how long to wait for the vault (default ${DEFAULT_LIMITS.vaultTimeoutMs})`;

function num(name: string, v: string | undefined, fallback: number, integer = false): number {
  if (v === undefined) return fallback;
  const n = Number(v);
  if (v.trim() === '' || !Number.isFinite(n) || n < 0 || (integer && !Number.isInteger(n))) {
    throw new ChatdConfigError(`--${name} must be a ${integer ? 'non-negative integer' : 'non-negative number'}`);
  }
  return n;
}

async function main(argv: string[]): Promise<number> {
  let values;
  try {
    ({ values } = parseArgs({
      args: argv,
      strict: true,
      options: {
        'vault-url': { type: 'string' },
        port: { type: 'string' },
        host: { type: 'string' },
        state: { type: 'string' },
        'account-burst': { type: 'string' },
        'account-rate': { type: 'string' },
        'address-burst': { type: 'string' },
        'address-rate': { type: 'string' },
        'unauth-burst': { type: 'string' },
        'unauth-rate': { type: 'string' },
        'vault-timeout-ms': { type: 'string' },
        help: { type: 'boolean', short: 'h' },
      },
    }));
  } catch (e) {
    console.error(`chatd: ${(e as Error).message}\n\n${HELP}`);
    return 2;
  }
  if (values.help) {
    console.log(HELP);
    return 0;
  }
  const vaultUrl = values['vault-url'] ?? process.env.BKV_VAULT_URL;
  if (!vaultUrl) {
    console.error(`chatd: --vault-url (or BKV_VAULT_URL) is required\n\n${HELP}`);
    return 2;
  }
  const limits: Partial<ChatdLimits> = {
    perAccount: {
      burst: num('account-burst', values['account-burst'], DEFAULT_LIMITS.perAccount.burst),
      perSecond: num('account-rate', values['account-rate'], DEFAULT_LIMITS.perAccount.perSecond),
    },
    perAddress: {
      burst: num('address-burst', values['address-burst'], DEFAULT_LIMITS.perAddress.burst),
      perSecond: num('address-rate', values['address-rate'], DEFAULT_LIMITS.perAddress.perSecond),
    },
    perUnauthenticated: {
      burst: num('unauth-burst', values['unauth-burst'], DEFAULT_LIMITS.perUnauthenticated.burst),
      perSecond: num('unauth-rate', values['unauth-rate'], DEFAULT_LIMITS.perUnauthenticated.perSecond),
    },
    vaultTimeoutMs: num('vault-timeout-ms', values['vault-timeout-ms'], DEFAULT_LIMITS.vaultTimeoutMs),
  };
  const stateDir = values.state ?? process.env.BKV_STATE_DIR ?? '.bkv';
  const chatd = await startChatd({
    port: num('port', values.port ?? process.env.BKV_CHATD_PORT, 0, true),
    host: values.host ?? '127.0.0.1',
    vaultUrl,
    stateDir,
    // The vault in the same state directory demands it; read (or made) where the vault reads it.
    relayKey: hopSecret(stateDir, 'relay'),
    metricsKey: hopSecret(stateDir, 'metrics'),
    limits,
  });
  process.stdout.write(chatd.url + '\n');
  await new Promise<void>((resolve) => {
    const stop = () => {
      process.off('SIGTERM', stop);
      process.off('SIGINT', stop);
      resolve();
    };
    process.on('SIGTERM', stop);
    process.on('SIGINT', stop);
  });
  await chatd.close();
  return 0;
}

try {
  process.exitCode = await main(process.argv.slice(2));
} catch (e) {
  if (e instanceof BkvError) {
    console.error(`chatd: ${e.message} [${e.code}]`);
    process.exitCode = e instanceof ChatdConfigError ? 2 : 1;
  } else {
    console.error(`chatd: internal error: ${(e as Error)?.stack ?? String(e)}`);
    process.exitCode = 70;
  }
}
