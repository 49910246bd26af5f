// `bkv serve`: the vault and ChatD together, as two processes, on embedded defaults. Provisions the
// state directory first when needed (idempotent), records where ChatD listens and the vault keys
// devices pin, and supervises both: Ctrl-C/SIGTERM stops them in order, and if either dies the other is
// stopped and the exit code says which.
import { parseFlags, UsageError, type Command } from '../cli.ts';
import { servePaths, startServices } from '../services.ts';
import { supervise } from '../supervisor.ts';

/** Exit codes beyond cli.ts's 0/1/2: which child died on its own. */
export const SERVE_EXIT = { vaultDied: 3, chatdDied: 4 } as const;

const help = `usage: bkv serve [--state DIR] [--port N] [--vault-port N] [--quiet] [--json]

Starts the vault (replica of the fleet in DIR, on its SoftHSM2 token) and ChatD (the relay devices
talk to) as two processes on loopback, provisioning DIR first if it holds no complete fleet.

Prints ChatD's URL (also as a CHATD_URL=... line) and records it in DIR/serve.json, and writes the
vault's AKE public keys, computed by the vault from its token, to DIR/vault-keys.json: the keys
devices pin (they never learn them through ChatD). \`bkv backup ... --state DIR\` finds both there.

  --state DIR       state directory (default .bkv)
  --port N          ChatD's port (default 0: any free port)
  --vault-port N    the vault's port (default 0)
  --quiet           do not pass the children's logs through to stderr
  --json            once both serve, one JSON line on stdout instead of the lines above: {"event":
                    "ready", "chatdUrl", "vaultUrl", "pid", ...}; a failure as {"error": {...}} on stderr

A port asked for that is taken: EADDRINUSE 127.0.0.1:N, exit 1, before anything is provisioned or
started. Ctrl-C or SIGTERM at any stage exits 0 with nothing left running: while provisioning, once
the key ceremony is done; while starting, at once; once serving, ChatD is stopped, then the vault.
If either process dies on its own the
other is stopped: exit ${SERVE_EXIT.vaultDied} when the vault died, ${SERVE_EXIT.chatdDied} when ChatD died; 1 when they could not start.
The children run in their own process group; if serve itself is killed outright (SIGKILL) they keep
running, and the next serve on DIR refuses to start beside that vault (SERVE_ORPHAN) and names its pid.`;

function port(name: string, v: string | undefined): number {
  if (v === undefined) return 0;
  const n = Number(v);
  if (!/^\d+$/.test(v) || n > 65535) throw new UsageError(`--${name} must be a port number 0..65535 (got '${v.slice(0, 20)}')`);
  return n;
}

export const command: Command = {
  name: 'serve',
  summary: 'run the vault and ChatD together (provisions the state directory if needed)',
  help,
  async run(argv) {
    const { values } = parseFlags(argv, {
      state: { type: 'string' },
      port: { type: 'string' },
      'vault-port': { type: 'string' },
      quiet: { type: 'boolean' },
      json: { type: 'boolean' },
    });
    const stateDir = values.state ?? '.bkv';
    const chatdPort = port('port', values.port);
    const vaultPort = port('vault-port', values['vault-port']);

    return supervise({
      prog: 'bkv serve', vaultName: 'the vault', stateDir, exits: SERVE_EXIT,
      ports: [{ flag: '--port', port: chatdPort }, { flag: '--vault-port', port: vaultPort }],
      start: (signal) => startServices({
        stateDir, chatdPort, vaultPort, signal,
        onLine: values.quiet ? undefined : (who, line) => process.stderr.write(`${who} | ${line}\n`),
      }),
      record: async (services) => ({ chatdUrl: services.chatd.url, vaultUrl: services.vault.url, vaultPid: services.vault.pid, chatdPid: services.chatd.pid }),
      announce(services) {
        const paths = servePaths(stateDir);
        if (values.json) {
          console.log(JSON.stringify({ event: 'ready', mode: 'vault', chatdUrl: services.chatd.url, vaultUrl: services.vault.url, pid: process.pid, vaultPid: services.vault.pid, chatdPid: services.chatd.pid, serveRecord: paths.serve, vaultKeys: paths.vaultKeys }));
          return;
        }
        console.log(`bkv serve: vault (pid ${services.vault.pid}) at ${services.vault.url}`);
        console.log(`bkv serve: ChatD (pid ${services.chatd.pid}) at ${services.chatd.url}`);
        console.log(`CHATD_URL=${services.chatd.url}`);
        console.log(`bkv serve: recorded in ${paths.serve}; pinned vault keys in ${paths.vaultKeys}. Ctrl-C stops both.`);
      },
    });
  },
};
