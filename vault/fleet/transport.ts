// The one interface every replica-to-replica transport offers (in-process MessagePorts through the
// WAN model, TCP between processes or hosts). Consensus messages are opaque bytes here: transports
// move them, they never look inside. Delivery is best effort (Raft retries): a transport may drop,
// but never delivers bytes the named sender did not send (TCP: authenticated channel; ports: only
// the worker that owns the port can post into it).
import { BkvError } from '../../protocol/errors.ts';

export type MessageHandler = (from: string, bytes: Uint8Array) => void;

export interface PeerTransport {
  /** This replica's id. */
  readonly self: string;
  /** Queue `bytes` for replica `to`. Never throws for network conditions; drops are counted in stats(). */
  send(to: string, bytes: Uint8Array): void;
  /** Register a handler for messages from peers (several handlers may be registered). */
  onMessage(cb: MessageHandler): void;
  /** Stop sending and receiving, release sockets/ports/timers. Idempotent. */
  close(): Promise<void>;
  stats(): TransportStats;
}

export interface TransportStats {
  /** send() calls accepted for a known peer. */
  sent: number;
  /** Messages handed to onMessage handlers. */
  delivered: number;
  /** Messages or frames lost, by reason (e.g. partition, loss, queue-full, CHANNEL_AUTH_FAILED). */
  dropped: Record<string, number>;
  /** Channel handshakes completed (TCP), both directions. */
  handshakes: number;
  /** Connections closed because a handshake or a frame was refused. */
  rejectedConnections: number;
}

export function emptyStats(): TransportStats {
  return { sent: 0, delivered: 0, dropped: {}, handshakes: 0, rejectedConnections: 0 };
}

export function countDrop(stats: TransportStats, reason: string, n = 1): void {
  stats.dropped[reason] = (stats.dropped[reason] ?? 0) + n;
}

export function cloneStats(s: TransportStats): TransportStats {
  return { ...s, dropped: { ...s.dropped } };
}

export type TransportErrorCode =
  | 'TRANSPORT_UNKNOWN_PEER'
  | 'TRANSPORT_FRAME_TOO_LARGE'
  | 'TRANSPORT_BAD_MESSAGE'
  /** This replica's own token failed during a handshake (e.g. CKR_DEVICE_ERROR). */
  | 'TRANSPORT_TOKEN_FAILED'
  | 'TRANSPORT_CONFIG';

export class TransportError extends BkvError {
  declare readonly code: TransportErrorCode;
  constructor(code: TransportErrorCode, message: string) {
    super(code, message);
  }
}

/** Calls each handler; one throwing handler must not take the transport (or the other handlers) down. */
export function deliver(handlers: readonly MessageHandler[], from: string, bytes: Uint8Array, onError: (e: unknown) => void): void {
  for (const h of handlers) {
    try {
      h(from, bytes);
    } catch (e) {
      onError(e);
    }
  }
}
