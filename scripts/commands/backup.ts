// `bkv backup SUBCOMMAND`: the device's backup flows on the command line. Two extension points keep
// the password work separate from this file's 64-digit-key work:
//   - `subcommands`: push a BackupSubcommand (e.g. enable-password, change-password, disable, status);
//   - `createProtections` / `restoreProtections`: push a protection that adds its own flags (e.g.
//     --password-file) to `create` / `restore` and supplies K. Exactly one protection must be chosen.
// Help text is generated from these tables, so it stays true as they grow.
import { createReadStream } from 'node:fs';
import { join, resolve } from 'node:path';
import type { ParseArgsConfig } from 'node:util';
import { parseFlags, UsageError, wantsHelp, type Command } from '../cli.ts';
import { CloudFolder } from '../../client/cloud.ts';
import { createBackup, DEFAULT_ACCOUNT, readBackupInfo, restoreBackup, type CreateBackupResult } from '../../client/backup.ts';
import { formatKey64, generateBackupKey, parseKey64 } from '../../client/key64.ts';
import { openSecretOut } from '../secret-out.ts';
import { BackupError, Key64Error } from '../../client/errors.ts';
import type { BackupMode } from '../../client/backup-format.ts';
import { passwordCreate, passwordRestore, passwordSubcommands, uploaded } from './backup-password.ts';

type Options = NonNullable<ParseArgsConfig['options']>;
export type FlagValues = Record<string, string | boolean | (string | boolean)[] | undefined>;

/** What every backup subcommand gets: where the state and the cloud folder are, which account. */
export interface BackupContext {
  stateDir: string;
  cloud: CloudFolder;
  account: string;
  /** Whether --account was given; if not, a password command names the object by the device's account. */
  accountGiven: boolean;
  progress: ProgressReporter;
  /** `--json`: the result as one JSON object on stdout (errors as JSON on stderr, scripts/cli.ts). */
  json: boolean;
  /** The result: `human` as it is, or with --json `{ok: true, ...data}` on one line. */
  out(human: string, data: Record<string, unknown>): void;
}

export interface BackupSubcommand {
  name: string;
  summary: string;
  /** Option lines for `bkv backup NAME --help`; the common options are listed after them. */
  usage: string;
  help: string;
  /** Flags beyond --state and the common ones it names in `common`. */
  flags: Options;
  /** Which of --cloud, --account, --progress mean something to it (listed in its help and accepted). */
  common: CommonFlag[];
  run(values: FlagValues, ctx: BackupContext): Promise<number>;
}

export interface CreateProtection {
  mode: BackupMode;
  flags: Options;
  /** One line per flag for --help. */
  helpLines: string[];
  /** Further --help lines for flags that do not select this protection (e.g. how to reach the vault). */
  extraUsage?: string[];
  selected(values: FlagValues): boolean;
  /** Supplies K before anything is written; `afterUpload` runs once the backup is in the cloud, `discard` if it never got there. */
  prepare(values: FlagValues, ctx: BackupContext): Promise<{ key: Uint8Array; afterUpload(r: CreateBackupResult): Promise<void>; discard?(): void }>;
}

export interface RestoreProtection {
  flags: Options;
  helpLines: string[];
  extraUsage?: string[];
  selected(values: FlagValues): boolean;
  obtainKey(values: FlagValues, ctx: BackupContext): Promise<Uint8Array>;
}

const baseFlags = {
  state: { type: 'string' },
  json: { type: 'boolean' },
  help: { type: 'boolean', short: 'h' },
} as const satisfies Options;

const commonFlags = {
  cloud: { type: 'string' },
  account: { type: 'string' },
  progress: { type: 'boolean' },
} as const satisfies Options;
export type CommonFlag = keyof typeof commonFlags;

const commonHelp: Record<CommonFlag, string> = {
  cloud: '  --cloud DIR       cloud folder standing in for Drive/iCloud (default <state>/cloud)',
  account: `  --account NAME    whose backup: the object <cloud>/<NAME>.bkv (default: with a password, the\n                    account's phone number; with a 64-digit key, '${DEFAULT_ACCOUNT}')`,
  progress: '  --progress        report bytes done/total on stderr even when it is not a terminal',
};
const stateHelp = '  --state DIR       state directory (default .bkv)\n  --json            the result as one JSON object on stdout ({"ok": true, ...}); a failure as\n                    {"error": {"code", "message", "hint"}} on stderr';

// ---- progress ---------------------------------------------------------------------------------

export interface ProgressReporter {
  (label: string): (done: number, total: number) => void;
  finish(): void;
}

function human(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024;
    i++;
  }
  return `${i === 0 ? n : n.toFixed(1)} ${units[i]}`;
}

/** Throttled bytes-done/total lines on stderr: redrawn in place on a TTY, one line a second otherwise. */
export function makeProgress(enabled: boolean, stream: NodeJS.WriteStream = process.stderr): ProgressReporter {
  const tty = Boolean(stream.isTTY);
  const interval = tty ? 200 : 1000;
  let last = 0;
  let drawn = false;
  const reporter = ((label: string) => {
    let finished = false;
    return (done: number, total: number) => {
      if (!enabled || finished) return;
      const now = Date.now();
      finished = done >= total;
      if (!finished && now - last < interval) return;
      last = now;
      const pct = total > 0 ? ` (${Math.floor((Math.min(done, total) / total) * 100)}%)` : '';
      const line = `${label}: ${human(Math.min(done, total))} / ${human(total)}${pct}`;
      stream.write(tty ? `\r${line}\x1b[K` : `${line}\n`);
      drawn = tty;
    };
  }) as ProgressReporter;
  reporter.finish = () => {
    if (drawn) stream.write('\n');
    drawn = false;
  };
  return reporter;
}

// ---- reading the 64-digit key without putting it in argv -------------------------------------

const MAX_KEY_TEXT = 4096;

async function readSmall(source: AsyncIterable<Buffer | string>, what: string, oneLine = false): Promise<string> {
  let text = '';
  for await (const chunk of source) {
    text += chunk.toString();
    if (text.length > MAX_KEY_TEXT) throw new Key64Error(`${what} is longer than ${MAX_KEY_TEXT} characters; expected a 64-digit key`);
    if (oneLine && text.includes('\n')) break;
  }
  return oneLine ? text.split('\n')[0]! : text;
}

async function key64FromFlags(values: FlagValues): Promise<Uint8Array> {
  const inline = values['key64'];
  const file = values['key64-file'];
  if (inline !== undefined && file !== undefined) throw new UsageError('give the key either with --key64 or with --key64-file, not both');
  if (typeof file === 'string') {
    let text: string;
    try {
      text = await readSmall(createReadStream(file), `--key64-file '${file}'`);
    } catch (e) {
      if (e instanceof Key64Error) throw e;
      throw new Key64Error(`cannot read --key64-file '${file}': ${(e as NodeJS.ErrnoException).code ?? 'error'}`);
    }
    return parseKey64(text);
  }
  if (inline === '-') {
    // From a terminal, one line is the whole key (no Ctrl-D needed); from a pipe, all of it.
    const tty = Boolean(process.stdin.isTTY);
    if (tty) process.stderr.write('64-digit key: ');
    const text = await readSmall(process.stdin, 'standard input', tty);
    if (tty) process.stdin.pause();
    return parseKey64(text);
  }
  if (typeof inline === 'string') return parseKey64(inline);
  throw new UsageError('no key given');
}

// ---- protections: the 64-digit key ------------------------------------------------------------

export const key64Create: CreateProtection = {
  mode: 'key64',
  flags: { key64: { type: 'boolean' }, 'key64-out': { type: 'string' } },
  helpLines: [
    '  --key64           protect the backup with a new 64-digit key, printed once on stdout (only the key:',
    '                    `> key.txt` makes a file --key64-file reads; what to do with it goes to stderr)',
    '  --key64-out F     the same, but the key goes to a new file F (mode 0600; an existing F is refused',
    '                    before anything is uploaded) instead of stdout',
  ],
  selected: (v) => v['key64'] === true || v['key64-out'] !== undefined,
  async prepare(values, ctx) {
    const outPath = values['key64-out'];
    // Opened first: a --key64-out that cannot take the key must fail before the old backup is replaced.
    const out = typeof outPath === 'string' ? openSecretOut(outPath, '--key64-out') : undefined;
    const key = generateBackupKey();
    return {
      key,
      async afterUpload(r) {
        const written = `Backup written: ${join(ctx.cloud.dir, r.object)} (${r.files} file${r.files === 1 ? '' : 's'}, ${human(r.plaintextBytes)}; ${human(r.backupBytes)} encrypted).`;
        const text = `${formatKey64(key)}\n`;
        key.fill(0);
        const data = { mode: 'key64', ...uploaded(ctx, r) };
        if (out) {
          out.commit(text);
          process.stderr.write(`${written}\nIts 64-digit key is in ${out.path} (mode 0600), and nowhere else: bkv does not store it, and without it this backup cannot be restored. Keep that file safe, or write the key down and delete it.\n`);
          if (ctx.json) ctx.out('', { ...data, key64File: out.path });
          return;
        }
        if (ctx.json) {
          // The key is the result asked for: printed once, on stdout, as with plain --key64.
          process.stderr.write(`${written}\nIts 64-digit key is the "key64" field on stdout, shown only this once: bkv does not store it, and without it this backup cannot be restored.\n`);
          ctx.out('', { ...data, key64: text.trim() });
          return;
        }
        // The advice before the key, so on a terminal it reads top to bottom; stdout gets only the key.
        process.stderr.write(`${written}\nYour 64-digit backup key follows. Write it down and keep it safe: it is shown only this once, bkv does not store it, and without it this backup cannot be restored.\n`);
        process.stdout.write(text);
      },
      discard() {
        out?.discard();
      },
    };
  },
};

export const key64Restore: RestoreProtection = {
  flags: { key64: { type: 'string' }, 'key64-file': { type: 'string' } },
  helpLines: [
    '  --key64 KEY       the 64-digit key (spaces, dashes and case are ignored); "-" reads it from stdin',
    '  --key64-file F    read the 64-digit key from file F (keeps it out of argv and shell history)',
  ],
  selected: (v) => v['key64'] !== undefined || v['key64-file'] !== undefined,
  obtainKey: (v) => key64FromFlags(v),
};

/** Protections in the order they are offered (the password ones live in backup-password.ts). */
export const createProtections: CreateProtection[] = [key64Create, passwordCreate];
export const restoreProtections: RestoreProtection[] = [key64Restore, passwordRestore];

function mergeFlags(tables: Options[]): Options {
  const out: Options = {};
  for (const t of tables) Object.assign(out, t);
  return out;
}

function pickOne<P extends { selected(v: FlagValues): boolean; helpLines: string[] }>(list: P[], values: FlagValues, verb: string): P {
  const chosen = list.filter((p) => p.selected(values));
  // Continuation lines of a flag's help do not start with '--' and name no selector.
  const names = list.flatMap((p) => p.helpLines.map((l) => l.trim().split(/\s+/)[0]!).filter((w) => w.startsWith('--'))).join(' or ');
  if (chosen.length === 0) throw new UsageError(`${verb} needs ${names}`);
  if (chosen.length > 1) throw new UsageError(`${verb} takes only one of ${names}`);
  return chosen[0]!;
}

// ---- subcommands -------------------------------------------------------------------------------

const create: BackupSubcommand = {
  name: 'create',
  common: ['cloud', 'account', 'progress'],
  summary: 'encrypt a chat backup folder or file and upload it to the cloud folder',
  get usage() {
    return ['  --in DIR|FILE     what to back up: a directory (packed with its subdirectories) or one file', ...createProtections.flatMap((p) => p.helpLines), ...createProtections.flatMap((p) => p.extraUsage ?? [])].join('\n');
  },
  help: [
    'Packs the input, encrypts it with AES-256-GCM in 64 KiB segments (STREAM; see docs/backup-format.md)',
    'under a fresh random 256-bit key K, and uploads it atomically as <cloud>/<account>.bkv, replacing',
    'that account\'s previous backup (whose key then no longer matters). Regular files and directories',
    'only: symlinks and special files are refused.',
  ].join('\n'),
  get flags() {
    return { in: { type: 'string' }, ...mergeFlags(createProtections.map((p) => p.flags)) } as Options;
  },
  async run(values, ctx) {
    if (typeof values['in'] !== 'string') throw new UsageError('create needs --in DIR|FILE');
    const protection = pickOne(createProtections, values, 'create');
    const { key, afterUpload, discard } = await protection.prepare(values, ctx);
    let result: CreateBackupResult;
    try {
      result = await createBackup({
        input: values['in'],
        key,
        mode: protection.mode,
        cloud: ctx.cloud,
        account: ctx.account,
        onProgress: ctx.progress('encrypt'),
      });
    } catch (e) {
      discard?.();
      throw e;
    }
    ctx.progress.finish();
    await afterUpload(result);
    return 0;
  },
};

const restore: BackupSubcommand = {
  name: 'restore',
  common: ['cloud', 'account', 'progress'],
  summary: 'download, verify and decrypt an account\'s backup into a new directory',
  get usage() {
    return ['  --out DIR         where to restore: must not exist or be empty; its parent must exist', ...restoreProtections.flatMap((p) => p.helpLines), ...restoreProtections.flatMap((p) => p.extraUsage ?? [])].join('\n');
  },
  help: [
    'Decrypts into a temporary directory beside --out and renames it into place only after the whole',
    'file has authenticated. A wrong key, a damaged, truncated or altered file each fail with their own',
    'error code and leave --out untouched (not even created). A single-file backup restores as --out/<file>.',
  ].join('\n'),
  get flags() {
    return { out: { type: 'string' }, ...mergeFlags(restoreProtections.map((p) => p.flags)) } as Options;
  },
  async run(values, ctx) {
    if (typeof values['out'] !== 'string') throw new UsageError('restore needs --out DIR');
    const protection = pickOne(restoreProtections, values, 'restore');
    const key = await protection.obtainKey(values, ctx);
    let r;
    try {
      r = await restoreBackup({ key, cloud: ctx.cloud, account: ctx.account, out: values['out'], onProgress: ctx.progress('decrypt') });
    } catch (e) {
      if (e instanceof BackupError && e.code === 'BACKUP_WRONG_KEY') {
        // The header's mode is unauthenticated, but good enough for a hint.
        const info = await readBackupInfo(ctx.cloud, ctx.account).catch(() => undefined);
        if (protection === key64Restore && info?.mode === 'password') throw new BackupError(e.code, `${e.message}; this backup is protected by a password, not a 64-digit key`);
        if (protection !== key64Restore && info?.mode === 'key64') throw new BackupError(e.code, `${e.message}; this backup is protected by a 64-digit key, not a password`);
        if (protection !== key64Restore) {
          throw new BackupError(e.code, `${e.message}; the key the vault holds now is not the one this backup was made under (the password backup was disabled, locked or enabled anew since)`);
        }
      }
      throw e;
    }
    ctx.progress.finish();
    ctx.out(`Restored ${r.files} file${r.files === 1 ? '' : 's'} (${human(r.plaintextBytes)}) from ${r.object} into ${resolve(values['out'])}.\n`, {
      object: resolve(ctx.cloud.dir, r.object), files: r.files, bytes: r.plaintextBytes, out: resolve(values['out']),
    });
    return 0;
  },
};

/** Subcommands in help order (enable-password, change-password, disable, status: backup-password.ts). */
export const subcommands: BackupSubcommand[] = [create, restore, ...passwordSubcommands];

function subHelp(s: BackupSubcommand): string {
  return [`usage: bkv backup ${s.name} [options]`, '', s.summary + '.', '', s.help, '', 'options:', s.usage, stateHelp, ...s.common.map((c) => commonHelp[c])].join('\n');
}

function topHelp(): string {
  return [
    'usage: bkv backup SUBCOMMAND [options]',
    '',
    'The device side of encrypted chat backups: K is a random 256-bit key; the backup is encrypted under',
    'it and stored in a cloud folder that sees only ciphertext.',
    '',
    'subcommands:',
    ...subcommands.map((s) => `  ${s.name.padEnd(18)} ${s.summary}`),
    '',
    'Run `bkv backup SUBCOMMAND --help` for its options. Exit codes: 0 ok, 1 failure (code in brackets),',
    '2 usage error.',
  ].join('\n');
}

// parseArgs echoes unexpected arguments; a stray positional may be a key, so it is never shown.
function parseRedacted(argv: string[], options: Options) {
  try {
    return parseFlags(argv, options);
  } catch (e) {
    if (!(e instanceof UsageError)) throw e;
    let msg = e.message;
    for (const a of argv) if (!a.startsWith('--') && a.length >= 4 && msg.includes(a)) msg = msg.split(a).join('<value not shown>');
    throw new UsageError(msg);
  }
}

export const command: Command = {
  name: 'backup',
  summary: 'create or restore an encrypted chat backup (64-digit key or password)',
  get help() {
    return topHelp();
  },
  async run(argv) {
    const [name, ...rest] = argv;
    if (!name) {
      console.error(topHelp());
      return 2;
    }
    const sub = subcommands.find((s) => s.name === name);
    if (!sub) throw new UsageError(`unknown backup subcommand '${name.slice(0, 40)}'`);
    if (wantsHelp(rest)) {
      console.log(subHelp(sub));
      return 0;
    }
    const { values } = parseRedacted(rest, { ...baseFlags, ...Object.fromEntries(sub.common.map((c) => [c, commonFlags[c]])), ...sub.flags });
    const stateDir = typeof values['state'] === 'string' ? values['state'] : '.bkv';
    const cloudDir = typeof values['cloud'] === 'string' ? values['cloud'] : join(stateDir, 'cloud');
    const json = values['json'] === true;
    const ctx: BackupContext = {
      stateDir,
      cloud: new CloudFolder(cloudDir),
      account: typeof values['account'] === 'string' ? values['account'] : DEFAULT_ACCOUNT,
      accountGiven: typeof values['account'] === 'string',
      progress: makeProgress(values['progress'] === true || (!json && Boolean(process.stderr.isTTY))),
      json,
      out(text, data) {
        if (json) process.stdout.write(`${JSON.stringify({ ok: true, ...data })}\n`);
        else process.stdout.write(text);
      },
    };
    try {
      return await sub.run(values as FlagValues, ctx);
    } finally {
      ctx.progress.finish();
    }
  },
};
