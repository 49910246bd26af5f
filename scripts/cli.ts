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

/** Exit codes: 0 ok, 1 failure reported by bkv, 2 usage error, 70 internal bug. */
export function reportError(e: unknown): number {
  if (e instanceof UsageError) {
    console.error(`bkv: ${e.message} (see --help)`);
    return 2;
  }
  if (e instanceof BkvError) {
    console.error(`bkv: ${e.message} [${e.code}]`);
    return 1;
  }
  console.error(`bkv: internal error: ${(e as Error)?.stack ?? String(e)}`);
  return 70;
}
