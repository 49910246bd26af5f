// OPAQUE's typed failures. Codes are stable (callers branch on them); messages never carry secrets
// (no password, key, OPRF output or session key, not even in hex).
import { BkvError } from '../errors.ts';

export type OpaqueErrorCode =
  /** A message, key or record has the wrong byte length. */
  | 'BAD_LENGTH'
  /** Not a canonical encoding of a non-identity element of the group. */
  | 'BAD_ELEMENT'
  /** Not a canonical, non-zero scalar. */
  | 'BAD_SCALAR'
  /** Password wrong, record or message tampered: envelope recovery or a MAC check failed. */
  | 'AUTH_FAILED'
  /** A caller passed an unknown suite, backend or KSF, or mixed suites. */
  | 'BAD_CONFIG'
  /** DeriveKeyPair found no non-zero scalar in 256 tries (probability ~2^-8000), or hash-to-group hit identity. */
  | 'DERIVE_FAILED';

export class OpaqueError extends BkvError {
  declare readonly code: OpaqueErrorCode;
  constructor(code: OpaqueErrorCode, message: string, options?: { cause?: unknown }) {
    super(code, message, options);
  }
}
