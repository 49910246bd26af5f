// The one error base of bkv. Every failure a user, a device or a peer can cause surfaces as a
// BkvError with a stable `code`, so callers (CLI exit codes, wire replies, tests) branch on the code
// and never on message text. Messages must never contain secrets: K, passwords, session keys, PINs.

export class BkvError extends Error {
  readonly code: string;
  constructor(code: string, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
    this.name = new.target.name;
  }
}

/** Malformed input: a device message, a peer message, a file, a flag. Changes no state. */
export class InputError extends BkvError {
  constructor(message: string, code = 'BAD_INPUT') {
    super(code, message);
  }
}

export function isBkvError(e: unknown): e is BkvError {
  return e instanceof BkvError;
}
