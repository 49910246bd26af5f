// Typed failures of the consensus. A peer can cause CodecError only; the others answer a local
// caller (a proposal, a read, a membership change) and change no state.

import { BkvError, InputError } from '../../protocol/errors.ts';
import type { NodeId } from './types.ts';

export class ConsensusError extends BkvError {}

/** This replica is not the leader; `leaderHint` is the leader it last heard from, if any. */
export class NotLeaderError extends ConsensusError {
  readonly leaderHint: NodeId | null;
  constructor(leaderHint: NodeId | null) {
    super('NOT_LEADER', leaderHint === null ? 'not the leader; no leader known' : `not the leader; try ${leaderHint}`);
    this.leaderHint = leaderHint;
  }
}

/** The leader is handing over leadership and refuses new proposals until it is done. */
export class TransferInProgressError extends ConsensusError {
  constructor() { super('LEADER_TRANSFER', 'leadership transfer in progress'); }
}

/** A membership change is already appended and not yet committed (one at a time). */
export class ConfChangePendingError extends ConsensusError {
  constructor() { super('CONF_CHANGE_PENDING', 'a membership change is still pending'); }
}

/** The leader has not yet committed an entry of its own term (Ongaro's fix to single-server changes). */
export class LeaderNotReadyError extends ConsensusError {
  constructor() { super('LEADER_NOT_READY', 'leader has not committed an entry of its term yet'); }
}

/** The requested membership change makes no sense against the current configuration. */
export class InvalidConfChangeError extends ConsensusError {
  constructor(message: string) { super('INVALID_CONF_CHANGE', message); }
}

/** A host misuse of the node's API (compacting past applied, advancing a foreign Ready...). */
export class ConsensusUsageError extends ConsensusError {
  constructor(message: string) { super('CONSENSUS_USAGE', message); }
}

/** A malformed, unknown-version or inconsistent peer message or stored record. */
export class CodecError extends InputError {
  constructor(message: string) { super(message, 'BAD_PEER_MESSAGE'); }
}

/** A learner may be promoted only once it has nearly caught up, or the fleet would lose availability. */
export class LearnerBehindError extends ConsensusError {
  constructor(node: NodeId) { super('LEARNER_BEHIND', `learner ${node} has not caught up yet`); }
}
