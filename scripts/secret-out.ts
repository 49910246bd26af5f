// A file that will receive a secret the command prints once (a 64-digit key, an account token). It is
// created, exclusively and 0600, before the command changes anything, so a name that already exists or
// cannot be written is refused while nothing has happened yet; the secret is written only at the end.
import { closeSync, fchmodSync, fsyncSync, openSync, unlinkSync, writeSync } from 'node:fs';
import { InputError } from '../protocol/errors.ts';

export class SecretOutError extends InputError {
  constructor(message: string, code: 'OUT_EXISTS' | 'OUT_UNWRITABLE') {
    super(message, code);
  }
}

export interface SecretOut {
  readonly path: string;
  /** Writes the secret, syncs and closes. */
  commit(text: string): void;
  /** The command failed before the secret existed: the empty file it made goes away. */
  discard(): void;
}

export function openSecretOut(path: string, flag: string): SecretOut {
  let fd: number;
  try {
    fd = openSync(path, 'wx', 0o600);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code ?? 'error';
    if (code === 'EEXIST') throw new SecretOutError(`${flag} '${path}' already exists; bkv does not overwrite a file that may hold another secret`, 'OUT_EXISTS');
    throw new SecretOutError(`cannot create ${flag} '${path}' (${code})`, 'OUT_UNWRITABLE');
  }
  // The umask can only take bits away; fchmod makes it exactly 0600 whatever the umask.
  fchmodSync(fd, 0o600);
  let open = true;
  return {
    path,
    commit(text) {
      open = false;
      try {
        writeSync(fd, text);
        // A secret reported as saved must survive a crash right after: it is shown nowhere else.
        fsyncSync(fd);
      } finally {
        closeSync(fd);
      }
    },
    discard() {
      if (!open) return;
      open = false;
      closeSync(fd);
      try {
        unlinkSync(path);
      } catch {
        // Already gone: nothing of ours is left.
      }
    },
  };
}
