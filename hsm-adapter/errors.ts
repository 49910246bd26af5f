// Every PKCS#11 failure surfaces as a TokenError: a stable bkv `code` to branch on, plus the raw CKR
// name and the operation, so chaos runs and operators can tell a lost session from a removed token.
// Messages are built here from names only; no caller-supplied secret (PIN) ever reaches them.
import pkcs11 from 'pkcs11js';
import { BkvError } from '../protocol/errors.ts';

export class TokenError extends BkvError {
  /** CKR_* name of the underlying PKCS#11 return value, or '' when the failure is bkv's own check. */
  readonly ckr: string;
  /** The operation that failed: an adapter method (seal, open...) or a C_* function name. */
  readonly operation: string;
  readonly tokenLabel: string;
  constructor(code: string, message: string, opts: { ckr?: string; operation: string; tokenLabel?: string; cause?: unknown }) {
    super(code, message, { cause: opts.cause });
    this.ckr = opts.ckr ?? '';
    this.operation = opts.operation;
    this.tokenLabel = opts.tokenLabel ?? '';
  }
}

const ckrNames = new Map<number, string>();
for (const [name, value] of Object.entries(pkcs11)) {
  if (name.startsWith('CKR_') && typeof value === 'number' && !ckrNames.has(value)) ckrNames.set(value, name);
}

export function ckrName(rv: number): string {
  return ckrNames.get(rv) ?? `CKR_0x${rv.toString(16).padStart(8, '0')}`;
}

/** The CKR value of a pkcs11js error, or undefined when the error is not a PKCS#11 return value. */
export function ckrOf(e: unknown): number | undefined {
  if (!(e instanceof Error)) return undefined;
  if (e.name === 'Pkcs11Error') return (e as Error & { code: number }).code;
  // Some pkcs11js calls throw a plain Error whose message is "CKR_NAME:value".
  const m = /^(CKR_[A-Z0-9_]+):(\d+)/.exec(e.message);
  return m ? Number(m[2]) : undefined;
}

// Stable bkv codes for the CKR values callers need to branch on; the rest become TOKEN_FAILURE.
const codeByCkr: Record<string, string> = {
  CKR_PIN_INCORRECT: 'PIN_INCORRECT',
  CKR_PIN_INVALID: 'PIN_INCORRECT',
  CKR_PIN_LEN_RANGE: 'PIN_INCORRECT',
  CKR_PIN_LOCKED: 'PIN_LOCKED',
  CKR_DEVICE_ERROR: 'TOKEN_DEVICE_ERROR',
  CKR_DEVICE_REMOVED: 'TOKEN_NOT_PRESENT',
  CKR_TOKEN_NOT_PRESENT: 'TOKEN_NOT_PRESENT',
  CKR_SESSION_HANDLE_INVALID: 'TOKEN_SESSION_LOST',
  CKR_SESSION_CLOSED: 'TOKEN_SESSION_LOST',
  CKR_USER_NOT_LOGGED_IN: 'TOKEN_SESSION_LOST',
  CKR_ATTRIBUTE_SENSITIVE: 'KEY_NOT_EXTRACTABLE',
  CKR_KEY_UNEXTRACTABLE: 'KEY_NOT_EXTRACTABLE',
  CKR_KEY_NOT_WRAPPABLE: 'KEY_NOT_EXTRACTABLE',
  CKR_MECHANISM_INVALID: 'MECHANISM_MISSING',
};

/**
 * Wraps any error thrown by a pkcs11js call. `what` is a short human phrase; it must not contain secrets.
 */
export function toTokenError(e: unknown, operation: string, tokenLabel: string, what?: string): TokenError {
  if (e instanceof TokenError) return e;
  const rv = ckrOf(e);
  const where = tokenLabel ? ` on token '${tokenLabel}'` : '';
  if (rv === undefined) {
    // Native errors (dlopen, bad arguments) carry no PIN: pkcs11js never echoes argument values.
    const msg = e instanceof Error ? e.message.split('\n')[0] : String(e);
    return new TokenError('TOKEN_FAILURE', `${what ?? operation} failed${where}: ${msg}`, { operation, tokenLabel, cause: e });
  }
  const ckr = ckrName(rv);
  const code = codeByCkr[ckr] ?? 'TOKEN_FAILURE';
  return new TokenError(code, `${what ?? operation} failed${where}: ${ckr}`, { ckr, operation, tokenLabel });
}
