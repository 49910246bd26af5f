// The data types of the consensus: entries, persisted state, wire messages, the Ready batch.
// Plain data only (no classes) so the codec, the node and the simulator agree on one shape.

/** A replica's identity inside the fleet (its replica name, e.g. "us-east"). */
export type NodeId = string;

/**
 * normal: opaque application bytes (the vault's record changes).
 * config: a membership change (data = codec.encodeConfChange).
 * noop:   the empty entry a new leader appends to commit earlier terms (Raft §5.4.2); apps skip it.
 */
export type EntryType = 'normal' | 'config' | 'noop';

export interface Entry {
  readonly index: number;
  readonly term: number;
  readonly type: EntryType;
  readonly data: Uint8Array;
}

/** Voters form majorities; learners only receive the log. Disjoint, sorted. */
export interface ConfState {
  readonly voters: readonly NodeId[];
  readonly learners: readonly NodeId[];
}

/**
 * One-at-a-time membership change (Ongaro's single-server changes). `init` appears only as the
 * bootstrap entry at index 1. `addVoter` of an existing learner promotes it.
 */
export type ConfChange =
  | { readonly op: 'init'; readonly conf: ConfState }
  | { readonly op: 'addVoter' | 'addLearner' | 'remove'; readonly node: NodeId };

/** Must be on stable storage before any message of the same Ready is sent. */
export interface HardState {
  readonly term: number;
  readonly vote: NodeId | null;
  readonly commit: number;
}

export interface SnapshotMeta {
  /** Last log index the snapshot covers, and that entry's term. */
  readonly index: number;
  readonly term: number;
  /** The membership as of `index`. */
  readonly conf: ConfState;
}

export interface Snapshot {
  readonly meta: SnapshotMeta;
  /** Opaque application state at meta.index. */
  readonly data: Uint8Array;
}

/** What a host hands back to a restarting node: exactly what it flushed, nothing more. */
export interface PersistedState {
  readonly hardState: HardState;
  readonly snapshot: Snapshot | null;
  /** Contiguous entries following the snapshot (or index 1). */
  readonly entries: readonly Entry[];
}

export type Role = 'follower' | 'preCandidate' | 'candidate' | 'leader';

export interface SoftState {
  readonly leader: NodeId | null;
  readonly role: Role;
  readonly term: number;
}

/** A linearizable read point: answer `ctx` once the local state machine applied `index`. */
export interface ReadState {
  readonly index: number;
  readonly ctx: Uint8Array;
}

// ---- wire messages (versioned by the codec) ----

interface Base {
  readonly from: NodeId;
  readonly to: NodeId;
  /** Sender's current term (for preVote: the term it would campaign in). */
  readonly term: number;
}

export interface PreVoteMsg extends Base { readonly type: 'preVote'; readonly lastIndex: number; readonly lastTerm: number }
export interface PreVoteRespMsg extends Base { readonly type: 'preVoteResp'; readonly reject: boolean }
export interface VoteMsg extends Base {
  readonly type: 'vote';
  readonly lastIndex: number;
  readonly lastTerm: number;
  /** Set by a leadership-transfer campaign: lets the vote through a voter's leader lease. */
  readonly transfer: boolean;
}
export interface VoteRespMsg extends Base { readonly type: 'voteResp'; readonly reject: boolean }
export interface AppendMsg extends Base {
  readonly type: 'append';
  readonly prevIndex: number;
  readonly prevTerm: number;
  readonly entries: readonly Entry[];
  readonly commit: number;
}
export interface AppendRespMsg extends Base {
  readonly type: 'appendResp';
  /** On success: the follower's match index. On reject: the prevIndex that failed. */
  readonly index: number;
  readonly reject: boolean;
  /** On reject: the leader should retry from hint + 1 (follower's conflict-by-term guess). */
  readonly hint: number;
}
export interface HeartbeatMsg extends Base {
  readonly type: 'heartbeat';
  readonly commit: number;
  /** ReadIndex round number (0 = none): a quorum of acks confirms leadership at that point. */
  readonly readSeq: number;
}
export interface HeartbeatRespMsg extends Base { readonly type: 'heartbeatResp'; readonly readSeq: number }
export interface SnapshotMsg extends Base { readonly type: 'snapshot'; readonly snapshot: Snapshot }
export interface TimeoutNowMsg extends Base { readonly type: 'timeoutNow' }
/** A follower forwarding client proposals to the leader it knows. */
export interface ProposeMsg extends Base { readonly type: 'propose'; readonly data: readonly Uint8Array[] }

export type Message =
  | PreVoteMsg | PreVoteRespMsg | VoteMsg | VoteRespMsg
  | AppendMsg | AppendRespMsg | HeartbeatMsg | HeartbeatRespMsg
  | SnapshotMsg | TimeoutNowMsg | ProposeMsg;

export type MessageType = Message['type'];

/**
 * One batch of work for the host (etcd "Ready"). Contract, in this order:
 *  1. persist `snapshot` (if any; it replaces the whole stored log), then `entries` (an entry at
 *     index i replaces the stored entry at i and everything after it), then `hardState`; flush;
 *  2. only then send `messages` (a vote or an append ack promises the flushed state);
 *  3. restore the state machine from `snapshot` if any, then apply `committed` in order;
 *     answer `readStates` once applied >= their index;
 *  4. call node.advance(ready).
 */
export interface Ready {
  readonly softState: SoftState | null;
  readonly hardState: HardState | null;
  readonly snapshot: Snapshot | null;
  readonly entries: readonly Entry[];
  readonly messages: readonly Message[];
  readonly committed: readonly Entry[];
  readonly readStates: readonly ReadState[];
}

export interface ProgressView {
  readonly match: number;
  readonly next: number;
  readonly state: 'probe' | 'replicate' | 'snapshot';
  readonly learner: boolean;
  readonly recentActive: boolean;
}

export interface NodeStatus {
  readonly id: NodeId;
  readonly soft: SoftState;
  readonly hard: HardState;
  readonly applied: number;
  readonly firstIndex: number;
  readonly lastIndex: number;
  readonly conf: ConfState;
  /** Leader only: replication progress per member. */
  readonly progress: ReadonlyMap<NodeId, ProgressView> | null;
  readonly transferee: NodeId | null;
}

export type ProposeResult =
  | { readonly ok: true; readonly index: number; readonly term: number }
  | { readonly ok: false; readonly error: import('./errors.ts').ConsensusError };
