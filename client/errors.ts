// The typed failures of the device's backup side. Callers (the CLI, tests, the password flows) branch
// on `code`; messages say what is wrong and where, and never carry K or any byte derived from it.
import { BkvError, InputError } from '../protocol/errors.ts';

/** A 64-digit key that does not parse. The message names the problem, never the key. */
export class Key64Error extends InputError {
  constructor(message: string) {
    super(message, 'BAD_KEY64');
  }
}

export type BackupErrorCode =
  /** No backup for this account in the cloud folder. */
  | 'BACKUP_NOT_FOUND'
  /** Not a bkv backup file at all (magic), or fields out of range in an authenticated header. */
  | 'BACKUP_BAD_HEADER'
  /** A bkv backup of a format version this build does not read. */
  | 'BACKUP_UNSUPPORTED_VERSION'
  /** The key does not match the key id in the header. */
  | 'BACKUP_WRONG_KEY'
  /** Something failed authentication: header tag, a segment, the archive inside. */
  | 'BACKUP_CORRUPT'
  /** The file provably ends early (inside the header, or right after a non-final segment). */
  | 'BACKUP_TRUNCATED'
  /** An archive entry name that would escape the restore directory or is otherwise unsafe. */
  | 'BACKUP_BAD_ENTRY'
  /** The restore destination exists and is not an empty directory, or its parent is missing. */
  | 'RESTORE_BAD_OUT'
  /** The backup input is not something bkv packs (missing, symlink, device file, changed while read). */
  | 'BACKUP_BAD_INPUT'
  /** A cloud object name or account name bkv refuses. */
  | 'CLOUD_BAD_NAME';

export class BackupError extends BkvError {
  declare readonly code: BackupErrorCode;
  constructor(code: BackupErrorCode, message: string, options?: { cause?: unknown }) {
    super(code, message, options);
  }
}
