// The public face of the consensus. Hosts (the replica agent, the fleet runner, the simulator)
// import from here only.

export type {
  NodeId, EntryType, Entry, ConfState, ConfChange, HardState, SnapshotMeta, Snapshot, PersistedState,
  Role, SoftState, ReadState, Message, MessageType, Ready, ProgressView, NodeStatus, ProposeResult,
  PreVoteMsg, PreVoteRespMsg, VoteMsg, VoteRespMsg, AppendMsg, AppendRespMsg, HeartbeatMsg, HeartbeatRespMsg,
  SnapshotMsg, TimeoutNowMsg, ProposeMsg,
} from './types.ts';
export {
  RaftNode, bootstrapStorage, emptyStorage, applyConfChange,
  type NodeOptions, type ReadResult, type ForwardResult, type NodeStats,
} from './raft.ts';
export {
  ConsensusError, NotLeaderError, TransferInProgressError, ConfChangePendingError, LeaderNotReadyError,
  InvalidConfChangeError, LearnerBehindError, ConsensusUsageError, CodecError,
} from './errors.ts';
export {
  WIRE_VERSION, LIMITS, encodeMessage, decodeMessage, encodeConfChange, decodeConfChange,
  encodeEntry, decodeEntry, encodeHardState, decodeHardState, encodeSnapshot, decodeSnapshot, validatePersisted,
} from './codec.ts';
export { SeededRng, type Rng } from './rng.ts';
