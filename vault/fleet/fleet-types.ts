// The fleet runner's public types (main thread). Kept apart from fleet.ts so the CLI, the
// walkthrough and bench:fleet can import them without pulling in worker threads.
import type { Policy } from '../firmware/firmware.ts';
import type { WanConfig } from './wan.ts';

import type { ReplicaRole } from '../replica/core.ts';

export type { ReplicaRole };

export interface ReplicaStatus {
  name: string;
  /** Data center (the WAN model's region for this replica). */
  region: string;
  role: ReplicaRole;
  term: number;
  commitIndex: number;
  appliedIndex: number;
  /** Leader's commit index minus this replica's applied index (0 on the leader; -1 when unknown). */
  lag: number;
  /** Serving: started, storage verified, not failed. A rejoining replica is healthy but does not vote yet. */
  healthy: boolean;
  /** Why not healthy / why not voting (e.g. ROLLBACK_DETECTED, REJOINING, CRASHED); '' when fine. */
  reason: string;
  /** The leader this replica knows of, if any. */
  leader: string | null;
  /** Last index in this replica's Raft log (committed or not). */
  lastIndex?: number;
  /** SHA-256 of the replicated record state (equal on replicas that applied the same index). */
  digest?: string;
  /** Counters for tests and benchmarks (Readies, flushes, anchors, forwarded requests...). */
  stats?: Record<string, number | boolean>;
  /** Milliseconds since this replica last had an authenticated message from each peer (absent: never). */
  heardMsAgo?: Record<string, number>;
  /**
   * Whether a device request entering the fleet here is served now (fleet-view.ts): healthy is only
   * "this replica is fine"; this is "this replica, its leader and a quorum are fine and connected".
   */
  serves?: boolean;
  /** Why it does not serve ('' when it does): CRASHED, NO_LEADER, NO_QUORUM, CANNOT_REACH_LEADER, STALE_LEADER, a health reason... */
  servesNot?: string;
  /** Two-way contact with the fleet's leader (links and what both heard lately); null when there is no leader. */
  reachesLeader?: boolean | null;
  /** Running replicas, itself included, this one has two-way links with; null where the host cannot tell (TCP). */
  reachable?: number | null;
  /** In the leader's configuration: 'voter', 'learner' (receives the log, votes for nothing), or absent (no leader, or not a member). */
  member?: 'voter' | 'learner';
}

/** POST FLEET_MEMBER_PATH: one membership change, driven step by step by the runner. */
export type MemberRequest =
  | { op: 'add'; name: string }
  | { op: 'remove'; name: string }
  /** add `name`, then remove `old`: one change at a time (a data center move is a replace). */
  | { op: 'replace'; old: string; name: string };

/** A membership change the runner is driving now (fleet status shows it; another is refused: CHANGE_IN_FLIGHT). */
export interface MemberChangeInProgress {
  op: MemberRequest['op'];
  replicas: string[];
  /** The step it is at, in words. */
  step: string;
  since: string;
  by: string;
}

export interface MemberResult {
  op: MemberRequest['op'];
  /** The configuration as the leader holds it once the change committed. */
  voters: string[];
  learners: string[];
  leader: string | null;
  /** What was done, in order (the progress lines). */
  steps: string[];
}

/** A fault the operator injected that is still in force (crashed, partitioned, slow...), for fleet status. */
export interface ActiveFault {
  op: FleetFault['op'];
  /** The replicas it touches. */
  replicas: string[];
  /** In words, e.g. "{us-east, us-west} | {eu-west, ap-southeast, sa-east}". */
  what: string;
  since: string;
  /** Who asked, as the operator's client named itself (x-bkv-actor); the key it presented is the operator key. */
  by: string;
}

/** GET FLEET_STATUS_PATH: the replicas, the faults in force, the leader serving the fleet. */
export interface FleetStatusReport {
  replicas: ReplicaStatus[];
  faults: ActiveFault[];
  /** The leader that holds a quorum (fleet-view.ts), or null. */
  leader: string | null;
  /** The fleet's Raft election timeout: contact older than this counts as lost. */
  electionMs: number;
  /** The leader's configuration (null without a leader); `committed` false while its last change is pending. */
  members?: { voters: string[]; learners: string[]; committed: boolean } | null;
  /** The membership change being driven now, if any. */
  change?: MemberChangeInProgress | null;
  /** Tokens ready to join (spares from the key ceremony) or taken out (removed: token and disk kept). */
  standby?: { name: string; standby: 'spare' | 'removed' }[];
}

/** Header an operator client names itself in (user, pid, command), logged with every fault it asks for. */
export const ACTOR_HEADER = 'x-bkv-actor';

export type FleetEvent =
  | { kind: 'started'; replica: string }
  | { kind: 'leader'; replica: string; term: number }
  | { kind: 'health'; replica: string; healthy: boolean; code: string; reason: string }
  | { kind: 'rejoined'; replica: string; index: number }
  | { kind: 'crashed'; replica: string }
  /** The replica's Raft role or the leader it follows changed. */
  | { kind: 'role'; replica: string; role: ReplicaRole; term: number; leader: string | null }
  /** An operator's fault request, done (ok) or refused (code): the audit trail of who did what. */
  | { kind: 'fault'; by: string; fault: FleetFault | { op: 'unknown' }; ok: boolean; code?: string }
  | { kind: 'log'; replica: string; line: string }
  /** An operator's membership change: each step as it happens, then done (ok) or refused/failed (code). */
  | { kind: 'member'; by: string; request: MemberRequest | { op: 'unknown' }; step?: string; ok?: boolean; code?: string };

export interface StartFleetOptions {
  /** A provisioned state directory (bkv provision): fleet.json, tokens, PINs. */
  stateDir: string;
  /** Replica names to run (default: every replica in fleet.json). */
  replicas?: string[];
  /** 'default' (five-region matrix), 'none' (no delay), a WAN file path, or a config. Default 'none'. */
  wan?: 'default' | 'none' | string | WanConfig;
  /** Seeds the WAN model. Default 1. */
  seed?: number;
  policy?: Partial<Policy>;
  /** Raft election timeout in ms (ticks are electionTimeoutMs / 10). Default 1000. */
  electionTimeoutMs?: number;
  /** HTTP port for the relay endpoint (default 0 = any). */
  port?: number;
  /** The relay key (protocol/hop-secret.ts) every relay request must carry; unset only in tests of a bare fleet. */
  relayKey?: string;
  /** Runs the operator listener (status, faults) apart from the relay front, for requests carrying this key. */
  operatorKey?: string;
  /** The relay front's request timeout and connection cap (default vault/agent/http.ts FRONT_LIMITS). */
  frontLimits?: { requestTimeoutMs?: number; headersTimeoutMs?: number; maxConnections?: number };
  /** GET /metrics on the operator listener also takes this key (the metrics key: reading only). */
  metricsKey?: string;
  /** Enables POST /v1/fleet/fault on the operator listener (`bkv fleet up --faults`). Default false. */
  faultEndpoint?: boolean;
  onEvent?(e: FleetEvent): void;
}

export interface Fleet {
  /** HTTP on 127.0.0.1: POST RELAY_PATH (protocol/relay.ts), routed by header `x-bkv-region` (a replica name) or round-robin. */
  url: string;
  /** The operator listener (GET status, POST fault), when StartFleetOptions.operatorKey was given. */
  operatorUrl?: string;
  replicas: string[];
  /** Suite -> hex AKE public key (what devices pin; same on every replica). */
  akePublicKeys(): Record<string, string>;
  status(): Promise<ReplicaStatus[]>;
  /** The operator's faults still in force. */
  faults(): ActiveFault[];
  leader(): Promise<string | undefined>;
  /** Symmetric partition: replicas in different groups cannot talk; replicas in no group keep their links. */
  partition(groups: string[][]): void;
  heal(): void;
  isolate(name: string): void;
  /** One-way cut: nothing from `from` reaches `to` (until heal()). */
  blockLink(from: string, to: string): void;
  /** Terminates the replica's worker at once (no flush beyond what Raft already flushed). */
  crash(name: string): Promise<void>;
  /**
   * Starts a crashed replica again; disk 'rollback' restores the last snapshotDisk() copy first, 'blank'
   * starts it on an empty disk. It rejoins as a non-voter until caught up.
   */
  restart(name: string, opts?: { disk?: 'keep' | 'rollback' | 'blank' }): Promise<void>;
  /** Copies the replica's LMDB directory (for a later restart with disk 'rollback'); returns the copy's path. */
  snapshotDisk(name: string): Promise<string>;
  /**
   * A membership change (add, remove, replace), one at a time: CHANGE_IN_FLIGHT while another runs.
   * `progress` gets each step as it happens; fleet.json is rewritten once each change committed.
   */
  member(req: MemberRequest, by: string, progress?: (line: string) => void): Promise<MemberResult>;
  close(): Promise<void>;
}

/**
 * The HTTP server at Fleet.url serves POST RELAY_PATH (device requests) only. The operator listener at
 * Fleet.operatorUrl serves GET FLEET_STATUS_PATH (JSON FleetStatusReport) and, with faultEndpoint, POST
 * FLEET_FAULT_PATH (JSON FleetFault -> {ok:true} or 400 {code, message}); both need the operator key.
 */
/** Header naming the replica (its name/region) a relayed request should enter the fleet at. */
export { REGION_HEADER } from '../../protocol/relay.ts';
export const FLEET_STATUS_PATH = '/v1/fleet/status';
export const FLEET_FAULT_PATH = '/v1/fleet/fault';
/** POST JSON MemberRequest -> NDJSON: {"progress": line}... then {"ok": true, ...MemberResult} or {"error": {code, message}}. */
export const FLEET_MEMBER_PATH = '/v1/fleet/member';
/** Prometheus metrics, on the operator listener (with the operator key), as on the vault and ChatD. */
export const METRICS_PATH = '/metrics';

/** Body of POST /v1/fleet/fault (JSON). */
export type FleetFault =
  | { op: 'partition'; groups: string[][] }
  | { op: 'heal' }
  | { op: 'isolate'; replica: string }
  | { op: 'block'; from: string; to: string }
  | { op: 'crash'; replica: string }
  | { op: 'restart'; replica: string; disk?: 'keep' | 'rollback' | 'blank' }
  | { op: 'snapshotDisk'; replica: string }
  /** A slow or lossy data center: everything the replica sends or receives (threads only). */
  | { op: 'degrade'; replica: string; lossRate?: number; extraDelayMs?: number }
  /** The replica's token fails or stalls calls at these rates through the fault-injecting token (0 clears). */
  | { op: 'token'; replica: string; failureRate?: number; latencyRate?: number; latencyMs?: [number, number] }
  /** The replica's host clock runs at `rate` (1 = true time) and jumps by `offsetMs`. */
  | { op: 'clock'; replica: string; rate?: number; offsetMs?: number };

/** What a host changes inside a running replica for the token and clock faults. */
export type ReplicaControl =
  | { t: 'token'; failureRate: number; latencyRate: number; latencyMs: [number, number] }
  | { t: 'clock'; rate: number; offsetMs: number };
