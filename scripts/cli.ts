// What every `bkv` subcommand shares: its shape, flag parsing that fails with a clear usage error,
// and the mapping from errors to exit codes and one-line messages.
import { parseArgs, type ParseArgsConfig } from 'node:util';
import { BkvError, InputError } from '../protocol/errors.ts';

export interface Command {
  name: string;
  /** One line for `bkv --help`. */
  summary: string;
  /** Full text for `bkv NAME --help`. */
  help: string;
  run(argv: string[]): Promise<number>;
}

export class UsageError extends InputError {
  constructor(message: string) {
    super(message, 'USAGE');
  }
}

type Options = NonNullable<ParseArgsConfig['options']>;

/** parseArgs with strict checking; unknown flags and missing values become UsageError. */
export function parseFlags<O extends Options>(argv: string[], options: O, allowPositionals = false) {
  try {
    return parseArgs({ args: argv, options, strict: true, allowPositionals });
  } catch (e) {
    throw new UsageError((e as Error).message.replace(/^TypeError \[[A-Z_]+\]: /, ''));
  }
}

export function wantsHelp(argv: string[]): boolean {
  return argv.includes('--help') || argv.includes('-h');
}

/** What to do about an error, by its code, for `--json` output (the message already says what happened). */
const HINTS: Record<string, string> = {
  USAGE: 'see the command\'s --help',
  EADDRINUSE: 'choose another port, or 0 for any free one',
  EACCES: 'choose a port above 1023',
  PORT_TWICE: 'give each listener its own port',
  FLEET_NOT_RUNNING: 'start one with `bkv fleet up --state DIR`',
  FAULTS_OFF: 'restart the fleet with `bkv fleet up --faults`',
  SERVE_RUNNING: 'use the running one, or stop it first (`bkv fleet down`, or Ctrl-C in its terminal)',
  SERVE_ORPHAN: 'stop the vault process named in the message first',
  CHATD_UNREACHABLE: 'start `bkv serve` or `bkv fleet up` on the state directory, or pass --chatd URL',
  VAULT_UNAVAILABLE: 'try again once the vault (or a quorum of the fleet) is back: `bkv fleet status` says why it does not serve',
  VAULT_KEY_UNKNOWN: 'run `bkv fleet up` (or `bkv serve`) on the state directory once',
  VAULT_KEY_MISMATCH: 'vault-keys.json is from another vault: point --state at the right directory; no attempt was spent',
  WRONG_PASSWORD: 'check the password; the message says how many attempts are left',
  LOCKED: 'none: the vault erased the key, this backup cannot be restored',
  NOT_REGISTERED: 'enable a password backup first: `bkv backup enable-password`',
  UNAUTHORIZED: 'check the account token (--token-file or BKV_ACCOUNT_TOKEN)',
  KSF_MISMATCH: 'pass the --ksf the message names; no attempt was spent',
  BAD_VAULT_REPLY: 'the reply was altered on the way; nothing was accepted: try again, and suspect the relay if it repeats',
  VAULT_INTEGRITY: 'run `bkv doctor --state DIR` on the vault\'s state directory: it names the replica and what failed',
  BACKUP_WRONG_KEY: 'use the key (or password) this backup was made under',
  OUTCOME_UNKNOWN: 'one attempt was spent; `bkv backup status` says how many are left',
  NO_TOKEN: 'pass --token-file F or set BKV_ACCOUNT_TOKEN (`bkv account create` makes one)',
  ALREADY_ENABLED: 'use `bkv backup change-password`, or `bkv backup disable` first',
  RATE_LIMITED: 'wait a moment and try again',
  CHANGE_IN_FLIGHT: 'wait for the change in flight to end (`bkv fleet status` shows it), then ask again',
  NO_SPARE_TOKEN: 'add a standby replica (`bkv fleet status` lists them); spares are made with the fleet: `bkv provision --spares N`',
  REMOVE_LOSES_QUORUM: 'bring the replicas that are down back first (`bkv fleet status` says which)',
  MEMBER_OUTCOME_UNKNOWN: '`bkv fleet status` shows the configuration the leader holds now',
};

/** One line (or, with `json`, one JSON object `{error: {code, message, hint}}`) on stderr per failure. */
function errorOut(json: boolean, code: string, message: string, human: string): void {
  if (json) console.error(JSON.stringify({ error: { code, message, ...(HINTS[code] ? { hint: HINTS[code] } : {}) } }));
  else console.error(human);
}

/** Exit codes: 0 ok, 1 failure reported by bkv, 2 usage error, 70 internal bug. `json`: errors as JSON (`--json`). */
export function reportError(e: unknown, json = false): number {
  if (e instanceof UsageError) {
    errorOut(json, e.code, e.message, `bkv: ${e.message} (see --help)`);
    return 2;
  }
  if (e instanceof BkvError) {
    errorOut(json, e.code, e.message, `bkv: ${e.message} [${e.code}]`);
    return 1;
  }
  // An internal bug: the stack is for a developer, and says nothing secret (errors never carry secrets).
  errorOut(json, 'INTERNAL', (e as Error)?.message ?? String(e), `bkv: internal error: ${(e as Error)?.stack ?? String(e)}`);
  return 70;
}
