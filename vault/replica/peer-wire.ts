// What replicas say to each other inside the secure channel, encoded here and nowhere else:
// msgpack arrays [version, kind, ...]. Consensus messages ride as the codec's bytes; forwarded
// device requests and their replies are opaque relay bodies (the forwarding replica never reads them).
import { Packr } from 'msgpackr';
import { InputError } from '../../protocol/errors.ts';
import { MAX_RELAY_BODY } from '../../protocol/relay.ts';
import { ERROR_CODE_RE as CODE_RE, USER_RE } from '../../protocol/names.ts';

export const PEER_WIRE_VERSION = 1;

export type PeerMessage =
  | { kind: 'raft'; bytes: Uint8Array }
  /** A device request handed to the leader by the replica it reached. */
  | { kind: 'forward'; id: number; user: string; body: Uint8Array }
  /** The leader's answer: a wire reply body, or a code (NOT_LEADER: not processed, safe to retry). */
  | { kind: 'forwardReply'; id: number; ok: true; body: Uint8Array }
  | { kind: 'forwardReply'; id: number; ok: false; code: string }
  /**
   * A replica re-replicating after its disk was refused says how far its log really goes, so a leader
   * whose match index for it is higher (acks its old disk made) forgets them and probes its real log.
   */
  | { kind: 'rejoin'; lastIndex: number };

export class PeerWireError extends InputError {
  constructor(message: string) { super(message, 'BAD_PEER_MESSAGE'); }
}

const packr = new Packr({ useRecords: false, mapsAsObjects: false, moreTypes: false, int64AsType: 'number' });
// 4 was the leader's rejoin answer, retired when acknowledgements became anchored: never reuse it.
const KIND = { raft: 0, forward: 1, forwardReply: 2, rejoin: 3 } as const;

export function encodePeer(m: PeerMessage): Uint8Array {
  const h = [PEER_WIRE_VERSION, KIND[m.kind]];
  switch (m.kind) {
    case 'raft': return new Uint8Array(packr.pack([...h, m.bytes]));
    case 'forward': return new Uint8Array(packr.pack([...h, m.id, m.user, m.body]));
    case 'forwardReply': return new Uint8Array(packr.pack(m.ok ? [...h, m.id, true, m.body] : [...h, m.id, false, m.code]));
    case 'rejoin': return new Uint8Array(packr.pack([...h, m.lastIndex]));
  }
}

const nat = (v: unknown): number => {
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0) throw new PeerWireError('not a non-negative integer');
  return v;
};
const bytes = (v: unknown, max: number): Uint8Array => {
  if (!(v instanceof Uint8Array) || v.length > max) throw new PeerWireError('bad byte field');
  return new Uint8Array(v);
};

export function decodePeer(b: Uint8Array): PeerMessage {
  let v: unknown;
  try {
    v = packr.unpack(b);
  } catch {
    throw new PeerWireError('peer message is not msgpack');
  }
  if (!Array.isArray(v) || v.length < 3 || v[0] !== PEER_WIRE_VERSION) throw new PeerWireError('peer message has a bad header');
  const f = v.slice(2);
  const n = (k: number) => { if (f.length !== k) throw new PeerWireError('peer message has a bad field count'); };
  switch (v[1]) {
    case KIND.raft: n(1); return { kind: 'raft', bytes: bytes(f[0], 300 << 20) };
    case KIND.forward: {
      n(3);
      if (typeof f[1] !== 'string' || !USER_RE.test(f[1])) throw new PeerWireError('bad user');
      return { kind: 'forward', id: nat(f[0]), user: f[1], body: bytes(f[2], MAX_RELAY_BODY) };
    }
    case KIND.forwardReply: {
      n(3);
      const id = nat(f[0]);
      if (f[1] === true) return { kind: 'forwardReply', id, ok: true, body: bytes(f[2], MAX_RELAY_BODY) };
      if (f[1] === false && typeof f[2] === 'string' && CODE_RE.test(f[2])) return { kind: 'forwardReply', id, ok: false, code: f[2] };
      throw new PeerWireError('bad forward reply');
    }
    case KIND.rejoin: n(1); return { kind: 'rejoin', lastIndex: nat(f[0]) };
    default: throw new PeerWireError('unknown peer message kind');
  }
}
