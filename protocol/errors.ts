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

/** A server could not listen: the port is taken (EADDRINUSE) or not this user's to take (EACCES). */
export class ListenError extends BkvError {}

/** The error a failed listen() becomes: the typed ListenError naming the address, or `e` itself. */
export function listenError(e: unknown, host: string, port: number): unknown {
  const code = (e as { code?: unknown } | null)?.code;
  if (code === 'EADDRINUSE') return new ListenError('EADDRINUSE', `EADDRINUSE ${host}:${port}: the port is in use (another bkv, or any other program); choose another port, or 0 for any free one`);
  if (code === 'EACCES') return new ListenError('EACCES', `EACCES ${host}:${port}: not allowed to listen there (ports below 1024 need privileges)`);
  if (code === 'EADDRNOTAVAIL') return new ListenError('EADDRNOTAVAIL', `EADDRNOTAVAIL ${host}:${port}: no such local address`);
  return e;
}
