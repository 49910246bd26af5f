// The firmware's typed failures. Storage codes make a replica unhealthy (it stops serving rather
// than answer from state it cannot vouch for); request codes go back to the device as Error{code}.
import { BkvError } from '../../protocol/errors.ts';

export type FirmwareErrorCode =
  /** A sealed item from the host does not open: bit flip, swap, another replica's disk. */
  | 'TAMPERED'
  /** The stored log is behind (or forks from) the anchor kept in the token. */
  | 'ROLLBACK_DETECTED'
  /** A committed entry or snapshot does not decode. */
  | 'BAD_ENTRY'
  | 'BAD_SNAPSHOT'
  /** The replica has reported itself unhealthy and serves nothing. */
  | 'UNHEALTHY'
  /** The firmware was used before restore() or misconfigured. */
  | 'BAD_CONFIG';

export class FirmwareError extends BkvError {
  declare readonly code: FirmwareErrorCode;
  constructor(code: FirmwareErrorCode, message: string, options?: { cause?: unknown }) {
    super(code, message, options);
  }
}
