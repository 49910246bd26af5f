// Password-protected backups on the command line: `bkv backup enable-password | change-password |
// disable | status`, and the `--password-file` protection of `create` / `restore`. Plugged into
// backup.ts's tables (`passwordSubcommands`, `passwordCreate`, `passwordRestore`).
//
// What the device keeps: nothing secret. K is made by enable-password, sent sealed to the pinned
// vault key, and forgotten; `create` and `restore` get it back from the vault with the password (a
// correct password resets the attempt counter), so a lost or copied device disk gives no K, and every
// `create` proves that the password restores the backup it uploads. The device's identity is its
// account token (--token-file / BKV_ACCOUNT_TOKEN); the vault keys it pins and ChatD's URL come from
// the state directory `bkv serve` wrote (vault-keys.json, serve.json), never from ChatD.
//
// Passwords come from a file, from standard input, or from a prompt without echo; never from argv.
import { existsSync, readFileSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import type { ParseArgsConfig } from 'node:util';
import { UsageError } from '../cli.ts';
import type { BackupContext, BackupSubcommand, CreateProtection, FlagValues, RestoreProtection } from './backup.ts';
import type { CreateBackupResult } from '../../client/backup.ts';

/** What `backup create --json` reports of an upload (both protections; here, where backup.ts imports from, not the other way). */
export function uploaded(ctx: BackupContext, r: CreateBackupResult): Record<string, unknown> {
  return { object: resolve(ctx.cloud.dir, r.object), account: ctx.account, files: r.files, bytes: r.plaintextBytes, encryptedBytes: r.backupBytes };
}
import { AccountIndex } from '../../chatd/accounts.ts';
import { readBackupInfo } from '../../client/backup.ts';
import { generateBackupKey } from '../../client/key64.ts';
import {
  changePassword,
  disable as disableRecord,
  enablePassword,
  PasswordError,
  recoverK,
  status as recordStatus,
  type PasswordOptions,
  type Send,
} from '../../client/password.ts';
import {
  ChatdAuthError,
  ChatdClient,
  ChatdRateLimitError,
  ChatdRejectedError,
  ChatdTimeoutError,
  ChatdUnreachableError,
  VaultUnavailableError,
} from '../../client/transport.ts';
import { BkvError } from '../../protocol/errors.ts';
import { ksfFromName, type Ksf, type KsfSpec } from '../../protocol/opaque/index.ts';
import type { RecordState, WireSuite } from '../../protocol/wire.ts';
import { readVaultKeys, servePaths } from '../services.ts';
import { DEFAULT_POLICY } from '../../vault/firmware/firmware.ts';

type Options = NonNullable<ParseArgsConfig['options']>;

/** Every failure of a password flow the user must act on, with a stable code. Never carries a secret. */
export class PasswordBackupError extends BkvError {
  readonly attemptsLeft?: number;
  constructor(code: string, message: string, extra: { attemptsLeft?: number } = {}) {
    super(code, message);
    this.attemptsLeft = extra.attemptsLeft;
  }
}

// ---- passwords: file, stdin, or a prompt without echo ---------------------------------------

const MAX_PASSWORD_BYTES = 1024;

function cleanPassword(text: string, where: string): string {
  // One trailing newline belongs to the file, not to the password (as `echo pw > f` writes it).
  const pw = text.replace(/\r?\n$/, '');
  if (pw.length === 0) throw new PasswordBackupError('EMPTY_PASSWORD', `the password from ${where} is empty`);
  if (Buffer.byteLength(pw) > MAX_PASSWORD_BYTES) throw new PasswordBackupError('PASSWORD_TOO_LONG', `the password from ${where} is longer than ${MAX_PASSWORD_BYTES} bytes`);
  return pw;
}

async function readStdin(): Promise<string> {
  let text = '';
  for await (const chunk of process.stdin) {
    text += chunk.toString();
    if (text.length > MAX_PASSWORD_BYTES * 4) throw new PasswordBackupError('PASSWORD_TOO_LONG', `standard input holds more than ${MAX_PASSWORD_BYTES} bytes; expected one password`);
  }
  return text;
}

/** Reads a line from the terminal with echo off. Ctrl-C cancels. */
export function promptHidden(prompt: string): Promise<string> {
  const stdin = process.stdin;
  return new Promise((resolve, reject) => {
    let buf = '';
    process.stderr.write(prompt);
    const done = () => {
      stdin.off('data', onData);
      stdin.setRawMode(false);
      stdin.pause();
      process.stderr.write('\n');
    };
    const onData = (data: Buffer) => {
      for (const ch of data.toString('utf8')) {
        if (ch === '\r' || ch === '\n' || ch === '\u0004') {
          done();
          return resolve(buf);
        }
        if (ch === '\u0003') {
          done();
          return reject(new PasswordBackupError('CANCELLED', 'cancelled at the password prompt'));
        }
        if (ch === '\u007f' || ch === '\b') {
          buf = Array.from(buf).slice(0, -1).join('');
          continue;
        }
        if (ch >= ' ') buf += ch;
      }
    };
    stdin.setRawMode(true);
    stdin.resume();
    stdin.on('data', onData);
  });
}

export interface PasswordSource {
  /** --password-file value: a path, "-" for stdin, or undefined (prompt if stdin is a terminal). */
  file: string | undefined;
  flag: string;
  /** What the prompt asks for, e.g. "Password" or "New password". */
  label: string;
  /** A new password is typed twice at a prompt. */
  confirm?: boolean;
}

export async function readPassword(s: PasswordSource): Promise<string> {
  if (s.file === undefined || s.file === '-') {
    if (process.stdin.isTTY) {
      const pw = cleanPassword(await promptHidden(`${s.label}: `), 'the prompt');
      if (s.confirm && (await promptHidden(`${s.label} again: `)) !== pw) {
        throw new PasswordBackupError('PASSWORD_MISMATCH', 'the two passwords typed differ');
      }
      return pw;
    }
    if (s.file === undefined) {
      throw new UsageError(`no password given: use ${s.flag} F (a file holding it), or ${s.flag} - to read it from standard input`);
    }
    return cleanPassword(await readStdin(), 'standard input');
  }
  let text: string;
  try {
    text = await readFile(s.file, 'utf8');
  } catch (e) {
    throw new PasswordBackupError('PASSWORD_FILE', `cannot read ${s.flag} '${s.file}' (${(e as NodeJS.ErrnoException).code ?? 'error'})`);
  }
  return cleanPassword(text, `${s.flag} '${s.file}'`);
}

/** `--password` is declared only so it can be refused with the reason, instead of "unknown option". */
function refuseArgvPassword(values: FlagValues): void {
  for (const name of ['password', 'old-password', 'new-password']) {
    if (values[name] !== undefined) {
      throw new UsageError(
        `--${name} is not accepted: a password on the command line is visible to every user of this machine (ps, /proc) ` +
          `and stays in shell history. Use --${name}-file F, --${name}-file - (standard input), or leave it out to be prompted`,
      );
    }
  }
}

// ---- the device: token, ChatD, pinned vault key, KSF ----------------------------------------

const KSF_NAMES: KsfSpec[] = ['argon2id', 'argon2id-rfc9106-first', 'scrypt', 'identity'];
export const DEFAULT_SUITE: WireSuite = 'ristretto255-SHA512';

export const deviceFlags = {
  'token-file': { type: 'string' },
  chatd: { type: 'string' },
  phone: { type: 'string' },
  ksf: { type: 'string' },
  // Declared only to be refused with a reason (see refuseArgvPassword).
  password: { type: 'string' },
} as const satisfies Options;


const deviceUsage = [
  '  --token-file F    the account token (`bkv account create` printed it); default env BKV_ACCOUNT_TOKEN',
  '  --chatd URL       ChatD (default: the running `bkv serve` recorded in <state>/serve.json)',
  '  --phone E164      the account\'s phone number (default: looked up by the token in <state>/chatd/accounts.json)',
  '  --ksf NAME        key stretching on this device: argon2id (default, RFC 9106 2nd set), argon2id-rfc9106-first,',
  '                    scrypt, identity (tests only). Env BKV_KSF. Must be the one enable-password used (the vault',
  '                    stores it; another one is refused with KSF_MISMATCH, naming it, before any attempt is spent).',
  '  --password        not accepted: a password in argv is visible to other users and stays in shell history',
];

/** Health codes of a vault that refuses its own stored state (vault/firmware, vault/replica): integrity, not load. */
const INTEGRITY_CODES = ['TAMPERED', 'ROLLBACK_DETECTED', 'FORKED'];

export interface DeviceIdentity {
  chatdUrl: string;
  token: string;
  /** The account as ChatD names it to the vault (its phone number). */
  user: string;
  /** The vault's AKE public key, pinned from the state directory. */
  serverPublicKey: Uint8Array;
  /** The vault's session key, pinned from the same file. */
  sessionKey: Uint8Array;
  suite: WireSuite;
  ksf: Ksf;
}

export function ksfByName(name: string | undefined): Ksf {
  const n = name ?? process.env.BKV_KSF ?? 'argon2id';
  if (!KSF_NAMES.includes(n as KsfSpec)) throw new UsageError(`--ksf must be one of ${KSF_NAMES.join(', ')} (got '${n.slice(0, 40)}')`);
  return ksfFromName(n as KsfSpec);
}

function chatdUrlFor(stateDir: string): string {
  const path = servePaths(stateDir).serve;
  if (!existsSync(path)) {
    throw new PasswordBackupError('CHATD_UNKNOWN', `no ChatD to talk to: ${path} does not exist. Start \`bkv serve --state ${stateDir}\`, or pass --chatd URL`);
  }
  let r: { chatdUrl?: unknown };
  try {
    r = JSON.parse(readFileSync(path, 'utf8')) as { chatdUrl?: unknown };
  } catch {
    throw new PasswordBackupError('STATE_CORRUPT', `${path} is not valid JSON`);
  }
  if (typeof r.chatdUrl !== 'string') throw new PasswordBackupError('STATE_CORRUPT', `${path} has no chatdUrl`);
  return r.chatdUrl;
}

/** Who this device is and whom it talks to, from flags, environment and the state directory. */
export async function deviceFromFlags(values: FlagValues, stateDir: string): Promise<DeviceIdentity> {
  refuseArgvPassword(values);
  const ksf = ksfByName(values['ksf'] as string | undefined);
  let token: string;
  const tokenFile = values['token-file'];
  if (typeof tokenFile === 'string') {
    try {
      token = (await readFile(tokenFile, 'utf8')).trim();
    } catch (e) {
      throw new PasswordBackupError('TOKEN_FILE', `cannot read --token-file '${tokenFile}' (${(e as NodeJS.ErrnoException).code ?? 'error'})`);
    }
  } else if (process.env.BKV_ACCOUNT_TOKEN) {
    token = process.env.BKV_ACCOUNT_TOKEN.trim();
  } else {
    throw new PasswordBackupError('NO_TOKEN', 'no account token: pass --token-file F (the token `bkv account create` printed) or set BKV_ACCOUNT_TOKEN');
  }
  if (!token) throw new PasswordBackupError('NO_TOKEN', 'the account token is empty');
  const chatdUrl = typeof values['chatd'] === 'string' ? values['chatd'] : chatdUrlFor(stateDir);
  const suite = DEFAULT_SUITE;
  const pinned = readVaultKeys(stateDir);
  const keyHex = pinned[suite];
  let user = typeof values['phone'] === 'string' ? values['phone'] : process.env.BKV_PHONE;
  if (!user) {
    // A phone knows its own number; on this one machine the account store is where it is written.
    const acct = await new AccountIndex(stateDir).authenticate(token).catch(() => undefined);
    if (!acct) {
      throw new PasswordBackupError(
        'NOT_REGISTERED',
        `this account token is not registered in ${join(stateDir, 'chatd', 'accounts.json')} (wrong or revoked token?). ` +
          'Create an account with `bkv account create --phone E164`, or pass --phone if ChatD keeps its accounts elsewhere',
      );
    }
    user = acct.user;
  }
  return { chatdUrl, token, user, serverPublicKey: new Uint8Array(Buffer.from(keyHex, 'hex')), sessionKey: new Uint8Array(Buffer.from(pinned.session, 'hex')), suite, ksf };
}

export interface RecordStatus {
  state: RecordState;
  attemptsLeft: number;
  limit: number;
}

const LOCKED_MESSAGE =
  'this password backup is locked: too many wrong passwords. The vault has erased its key, so the backup can no longer be restored; ' +
  'start over with `bkv backup enable-password`';

/** The device side of password backups over ChatD, with errors a user can act on. */
export class PasswordDevice {
  readonly id: DeviceIdentity;
  readonly send: Send;
  private readonly client: ChatdClient;
  private readonly opts: PasswordOptions;

  constructor(
    id: DeviceIdentity,
    extra: { wrapSend?: (s: Send) => Send; onSessionKey?: (k: Uint8Array) => void; onReply?: PasswordOptions['onReply']; timeoutMs?: number; region?: string } = {},
  ) {
    this.id = id;
    this.client = new ChatdClient({ url: id.chatdUrl, token: id.token, timeoutMs: extra.timeoutMs, region: extra.region });
    const base: Send = (b) => this.client.request(b);
    this.send = extra.wrapSend ? extra.wrapSend(base) : base;
    this.opts = { user: id.user, serverPublicKey: id.serverPublicKey, sessionKey: id.sessionKey, suite: id.suite, ksf: id.ksf, onSessionKey: extra.onSessionKey, onReply: extra.onReply,
      // An election or a partition elsewhere: resend the same frame a few times (free at the leader
      // holding the session; a RecoverStart that reaches a new leader is charged again).
      retry: { attempts: 4, delayMs: 250, retryable: (e) => e instanceof VaultUnavailableError || e instanceof ChatdRateLimitError || (e instanceof ChatdTimeoutError && e.status === 504) } };
  }

  close(): void {
    this.client.close();
  }

  async status(): Promise<RecordStatus> {
    return this.guard(() => recordStatus(this.send, this.opts));
  }

  /** The record must exist and not be locked; a clear error otherwise. */
  async requireRegistered(): Promise<RecordStatus> {
    const s = await this.status();
    if (s.state === 'none') {
      throw new PasswordBackupError('NOT_REGISTERED', `no password backup is enabled for ${this.id.user} (never enabled, or disabled); run \`bkv backup enable-password\``);
    }
    if (s.state === 'locked') throw new PasswordBackupError('LOCKED', LOCKED_MESSAGE);
    return s;
  }

  /** Makes a fresh K and registers it behind the password. Refuses to replace a live registration. */
  async enable(password: string, limit?: number): Promise<RecordStatus> {
    const s = await this.status();
    if (s.state === 'registered') {
      throw new PasswordBackupError('ALREADY_ENABLED', `a password backup is already enabled for ${this.id.user}; use change-password, or disable it first (its backups then become unrecoverable)`);
    }
    const k = generateBackupKey();
    try {
      await this.guard(() => enablePassword(this.send, this.opts, password, k, limit));
    } finally {
      k.fill(0);
    }
    return this.status();
  }

  /** K from the vault. One attempt, reset by a correct password. */
  async recover(password: string): Promise<Uint8Array> {
    await this.requireRegistered();
    return this.guard(() => recoverK(this.send, this.opts, password));
  }

  /** Proves the old password (getting K), then registers the same K under the new one. */
  async change(oldPassword: string, newPassword: string): Promise<RecordStatus> {
    const before = await this.requireRegistered();
    const k = await this.guard(() => recoverK(this.send, this.opts, oldPassword));
    try {
      await this.guard(() => changePassword(this.send, this.opts, newPassword, k, before.limit));
    } finally {
      k.fill(0);
    }
    return this.status();
  }

  async disable(): Promise<void> {
    await this.guard(() => disableRecord(this.send, this.opts));
  }

  private async guard<T>(f: () => Promise<T>): Promise<T> {
    try {
      return await f();
    } catch (e) {
      throw this.translate(e);
    }
  }

  private translate(e: unknown): unknown {
    const at = this.id.chatdUrl;
    // The vault refusing its own stored state is an integrity failure, not an outage to wait out.
    const vaultCode = (e as { vaultCode?: string }).vaultCode;
    if ((e instanceof PasswordError || e instanceof VaultUnavailableError) && vaultCode && INTEGRITY_CODES.includes(vaultCode)) {
      return new PasswordBackupError(
        'VAULT_INTEGRITY',
        `the vault refuses its stored state (${vaultCode}): an integrity failure of its disk or token, not a passing outage; \`bkv doctor --state DIR\` on the vault's state directory shows which replica and why`,
      );
    }
    if (e instanceof PasswordError) {
      switch (e.code) {
        case 'WRONG_PASSWORD': {
          const n = e.attemptsLeft ?? 0;
          return new PasswordBackupError('WRONG_PASSWORD', `wrong password: ${n} attempt${n === 1 ? '' : 's'} left before the vault locks this backup for good`, { attemptsLeft: n });
        }
        case 'LOCKED':
          return new PasswordBackupError('LOCKED', LOCKED_MESSAGE);
        case 'VAULT_ERROR':
          if (['UNHEALTHY', 'TIMEOUT', 'NOT_LEADER', 'UNAVAILABLE', 'CLOSED'].includes(e.vaultCode ?? '')) {
            return new PasswordBackupError('VAULT_UNAVAILABLE', `the vault cannot serve right now (${e.vaultCode}); try again later`);
          }
          if (e.vaultCode === 'RECORD_CHANGED') return new PasswordBackupError('RECORD_CHANGED', 'the password was changed on another device during this attempt; try again');
          return new PasswordBackupError('VAULT_REFUSED', `the vault refused the request (${e.vaultCode})`);
        case 'VAULT_KEY_MISMATCH':
          return new PasswordBackupError('VAULT_KEY_MISMATCH', 'the vault says the AKE key this device pins (vault-keys.json) is not its own: the file is from another fleet; nothing was computed or charged');
        case 'OUTCOME_UNKNOWN':
          return new PasswordBackupError('OUTCOME_UNKNOWN', e.message);
        case 'KSF_MISMATCH':
          return new PasswordBackupError('KSF_MISMATCH', `this backup was registered with --ksf ${ksfFlagOf(e.ksf)}; run again with that (no attempt was spent)`);
        case 'SESSION_REFUSED':
          return new PasswordBackupError('VAULT_KEY_MISMATCH', 'the vault could not open this request: the session key pinned in vault-keys.json is not this vault\'s, or the request was altered on the way; no attempt was spent');
        case 'BAD_VAULT_REPLY':
          return new PasswordBackupError('BAD_VAULT_REPLY', `a reply did not verify as the pinned vault's (altered on the way by ChatD or the network?); nothing was accepted: ${e.message}`);
        default:
          return e;
      }
    }
    if (e instanceof ChatdUnreachableError) return new PasswordBackupError('CHATD_UNREACHABLE', `cannot reach ChatD at ${at} (is \`bkv serve\` running?)`);
    if (e instanceof ChatdAuthError) return new PasswordBackupError('UNAUTHORIZED', 'ChatD does not accept this account token (unknown or revoked); `bkv account create` issues one');
    if (e instanceof VaultUnavailableError) return new PasswordBackupError('VAULT_UNAVAILABLE', `ChatD is up but the vault is unavailable${e.vaultCode ? ` (${e.vaultCode})` : ''}; try again later`);
    if (e instanceof ChatdTimeoutError) {
      return e.status === 504
        ? new PasswordBackupError('VAULT_UNAVAILABLE', 'the vault did not answer ChatD in time; try again later')
        : new PasswordBackupError('CHATD_TIMEOUT', `ChatD at ${at} did not answer in time`);
    }
    if (e instanceof ChatdRateLimitError) return new PasswordBackupError('RATE_LIMITED', `ChatD is rate-limiting this account; retry in ${Math.ceil(e.retryAfterMs / 1000)} s`);
    if (e instanceof ChatdRejectedError) {
      return new PasswordBackupError(e.vaultCode ? 'VAULT_REFUSED' : e.code, e.vaultCode ? `the vault refused the request (${e.vaultCode})` : e.message);
    }
    return e;
  }
}

async function withDevice<T>(values: FlagValues, ctx: BackupContext, f: (d: PasswordDevice) => Promise<T>): Promise<T> {
  const d = new PasswordDevice(await deviceFromFlags(values, ctx.stateDir));
  // A password backup is the account's: without --account its cloud object is named by the account
  // (ChatD's name for it, the phone number), so two accounts sharing a cloud folder never see, or
  // replace, each other's backup as their own.
  if (!ctx.accountGiven) ctx.account = d.id.user;
  try {
    return await f(d);
  } finally {
    d.close();
  }
}

function describeStatus(user: string, s: RecordStatus): string {
  switch (s.state) {
    case 'none':
      return `${user}: no password backup enabled`;
    case 'locked':
      return `${user}: LOCKED after ${s.limit} wrong passwords; the vault erased the key and this backup cannot be restored`;
    default:
      return `${user}: password backup enabled, ${s.attemptsLeft} of ${s.limit} attempts left`;
  }
}

function human(n: number): string {
  return n < 1024 ? `${n} B` : n < 1024 * 1024 ? `${(n / 1024).toFixed(1)} KiB` : `${(n / 1024 / 1024).toFixed(1)} MiB`;
}

// ---- create / restore protections ---------------------------------------------------------

const passwordFileFlag = { 'password-file': { type: 'string' } } as const satisfies Options;

export const passwordCreate: CreateProtection = {
  mode: 'password',
  flags: { ...passwordFileFlag, ...deviceFlags },
  helpLines: [
    '  --password-file F protect with this account\'s password backup (enable-password first): K comes from the',
    '                    vault after the password, so the upload is proven restorable; F = - reads stdin/prompts',
  ],
  extraUsage: deviceUsage,
  selected: (v) => v['password-file'] !== undefined || v['password'] !== undefined,
  async prepare(values, ctx) {
    refuseArgvPassword(values);
    const key = await withDevice(values, ctx, async (d) => {
      await d.requireRegistered();
      const pw = await readPassword({ file: values['password-file'] as string | undefined, flag: '--password-file', label: 'Password' });
      return d.recover(pw);
    });
    return {
      key,
      async afterUpload(r) {
        key.fill(0);
        ctx.out(
          `Backup written: ${join(ctx.cloud.dir, r.object)} (${r.files} file${r.files === 1 ? '' : 's'}, ${human(r.plaintextBytes)}; ${human(r.backupBytes)} encrypted), ` +
            'protected by your password backup.\n',
          { mode: 'password', ...uploaded(ctx, r) },
        );
      },
    };
  },
};

export const passwordRestore: RestoreProtection = {
  flags: { ...passwordFileFlag, ...deviceFlags },
  helpLines: [
    '  --password-file F the backup\'s password (- reads stdin, or prompts on a terminal): K comes from the vault',
  ],
  extraUsage: deviceUsage,
  selected: (v) => v['password-file'] !== undefined || v['password'] !== undefined,
  async obtainKey(values, ctx) {
    refuseArgvPassword(values);
    return withDevice(values, ctx, async (d) => {
      await d.requireRegistered();
      const pw = await readPassword({ file: values['password-file'] as string | undefined, flag: '--password-file', label: 'Password' });
      return d.recover(pw);
    });
  },
};

// ---- subcommands -----------------------------------------------------------------------------

// The firmware's own bounds, so a limit it would refuse is refused here, before anything is sent.
const { minLimit, maxLimit, defaultLimit } = DEFAULT_POLICY;

function limitFrom(v: unknown): number | undefined {
  if (v === undefined) return undefined;
  const n = typeof v === 'string' && /^\d{1,4}$/.test(v) ? Number(v) : NaN;
  if (!(n >= minLimit && n <= maxLimit)) throw new UsageError(`--limit must be a whole number of attempts in ${minLimit}..${maxLimit} (the vault's bounds)`);
  return n;
}

const enable: BackupSubcommand = {
  name: 'enable-password',
  common: [],
  summary: 'protect this account\'s backups with a password: the vault keeps a new key K behind it',
  usage: [
    '  --password-file F the new password (- reads stdin; without it, prompts twice on a terminal)',
    `  --limit N         wrong passwords before the vault locks the backup for good (default ${defaultLimit}; ${minLimit}..${maxLimit})`,
    ...deviceUsage,
  ].join('\n'),
  help: [
    'Makes a fresh random 256-bit key K, registers the password with the vault by OPAQUE (the vault never',
    'sees the password) and uploads K inside the end-to-end session with the pinned vault (ChatD sees only',
    'ciphertext); the device then forgets K. Later',
    '`create --password-file` and `restore --password-file` get K back with the password. Refused when a',
    'password backup is already enabled (use change-password); allowed again after disable or a lockout.',
  ].join('\n'),
  flags: { ...passwordFileFlag, limit: { type: 'string' }, ...deviceFlags },
  async run(values, ctx) {
    const limit = limitFrom(values['limit']);
    return withDevice(values, ctx, async (d) => {
      const pw = await readPassword({ file: values['password-file'] as string | undefined, flag: '--password-file', label: 'New password', confirm: true });
      const s = await d.enable(pw, limit);
      ctx.out(
        `Password backup enabled for ${d.id.user}: the vault keeps the backup key behind your password; ${s.limit} wrong passwords lock it for good.\n` +
          'Next: bkv backup create --in DIR --password-file F\n',
        { user: d.id.user, ...s },
      );
      return 0;
    });
  },
};

const change: BackupSubcommand = {
  name: 'change-password',
  common: [],
  summary: 'replace the password (proves the old one; existing backups stay restorable)',
  usage: [
    '  --old-password-file F  the current password (- reads stdin; without it, prompts on a terminal)',
    '  --password-file F      the new password (- reads stdin; without it, prompts twice on a terminal)',
    '  --old-password        not accepted (passwords never come from argv)',
    '  --new-password        not accepted (passwords never come from argv)',
    ...deviceUsage,
  ].join('\n'),
  help: [
    'Gets K from the vault with the old password (one attempt, reset when it is right), then registers the',
    'new password with the same K, so backups already in the cloud stay restorable with the new password',
    'and no longer with the old one. The attempt limit stays what it was.',
  ].join('\n'),
  flags: { ...passwordFileFlag, 'old-password-file': { type: 'string' }, 'old-password': { type: 'string' }, 'new-password': { type: 'string' }, ...deviceFlags },
  async run(values, ctx) {
    refuseArgvPassword(values);
    if (values['old-password-file'] === '-' && values['password-file'] === '-' && !process.stdin.isTTY) {
      throw new UsageError('only one of --old-password-file and --password-file can read standard input');
    }
    return withDevice(values, ctx, async (d) => {
      await d.requireRegistered();
      const oldPw = await readPassword({ file: values['old-password-file'] as string | undefined, flag: '--old-password-file', label: 'Current password' });
      const newPw = await readPassword({ file: values['password-file'] as string | undefined, flag: '--password-file', label: 'New password', confirm: true });
      const s = await d.change(oldPw, newPw);
      ctx.out(`Password changed for ${d.id.user}: the old password no longer restores the backup; ${s.attemptsLeft} of ${s.limit} attempts left.\n`, { user: d.id.user, ...s });
      return 0;
    });
  },
};

/** Reads one line from the terminal (echoed: the answer is no secret). */
async function promptLine(prompt: string): Promise<string> {
  const { createInterface } = await import('node:readline/promises');
  const rl = createInterface({ input: process.stdin, output: process.stderr });
  try {
    return await rl.question(prompt);
  } finally {
    rl.close();
  }
}

const disable: BackupSubcommand = {
  name: 'disable',
  common: [],
  summary: 'delete the password backup\'s record and K from the vault (its backups become unrecoverable)',
  usage: ['  --yes             do not ask for confirmation (needed when stdin is not a terminal)', ...deviceUsage].join('\n'),
  help: [
    'Asks the vault to delete this account\'s record and K. Backups made under that K can then not be',
    'restored by anyone; the cloud file is left where it is. enable-password can start over. On a terminal',
    'it asks first; otherwise it needs --yes. With no password backup enabled it says so and erases nothing.',
  ].join('\n'),
  flags: { yes: { type: 'boolean' }, ...deviceFlags },
  async run(values, ctx) {
    const tty = Boolean(process.stdin.isTTY);
    // Refused before anything is sent: an erase nobody confirmed must not happen by script accident.
    if (values['yes'] !== true && !tty) {
      throw new UsageError('disable erases the key of every backup made under it and there is no terminal to confirm on; pass --yes to do it anyway');
    }
    return withDevice(values, ctx, async (d) => {
      const s = await d.status();
      if (s.state === 'none') {
        ctx.out(`No password backup is enabled for ${d.id.user}: nothing to erase.\n`, { user: d.id.user, erased: false, state: 'none' });
        return 0;
      }
      if (values['yes'] !== true) {
        const what = s.state === 'locked' ? 'the locked record' : 'the record and the key';
        const answer = await promptLine(`Erase ${what} of ${d.id.user} from the vault? Backups made under it can never be restored. Type "yes": `);
        if (answer.trim().toLowerCase() !== 'yes') {
          console.error('bkv: not disabled; nothing was erased');
          return 1;
        }
      }
      await d.disable();
      ctx.out(`Password backup disabled for ${d.id.user}: the vault erased the record and the key; backups made under it can no longer be restored.\n`, { user: d.id.user, erased: true, state: 'none' });
      return 0;
    });
  },
};

const status: BackupSubcommand = {
  name: 'status',
  common: ['cloud', 'account'],
  summary: 'show the vault\'s record for this account (enabled, attempts left, locked) and the cloud backup',
  usage: deviceUsage.join('\n'),
  help: 'Asks the vault (through ChatD) for this account\'s record state and attempts left; reads the cloud folder\'s backup header (no key needed).',
  flags: { ...deviceFlags },
  async run(values, ctx) {
    return withDevice(values, ctx, async (d) => {
      const s = await d.status();
      const info = await readBackupInfo(ctx.cloud, ctx.account).catch(() => undefined);
      const cloud = info ? { object: info.object, bytes: info.bytes, mode: info.mode, modified: info.modified.toISOString() } : null;
      if (values['json'] === true) {
        console.log(JSON.stringify({ user: d.id.user, ...s, cloud }, null, 2));
      } else {
        console.log(describeStatus(d.id.user, s));
        console.log(cloud ? `cloud backup: ${join(ctx.cloud.dir, cloud.object)}, ${human(cloud.bytes)}, ${cloud.mode} mode, modified ${cloud.modified}` : `cloud backup: none in ${ctx.cloud.dir} for account '${ctx.account}'`);
      }
      return 0;
    });
  },
};

export const passwordSubcommands: BackupSubcommand[] = [enable, change, disable, status];

/** The --ksf value that selects a key stretching by its recorded name (Ksf.name). */
function ksfFlagOf(name: string | undefined): string {
  if (!name) return '(unknown)';
  if (name === 'identity') return 'identity';
  if (name.startsWith('scrypt')) return 'scrypt';
  if (name === 'argon2id-m2097152-t1-p4') return 'argon2id-rfc9106-first';
  if (name.startsWith('argon2id')) return 'argon2id';
  return name;
}
