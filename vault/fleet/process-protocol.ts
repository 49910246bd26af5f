// What a replica process tells its supervisor on stdout, written here and read here only: one line
// per message, `BKV1 <json>`, version in the prefix. Logs stay free text on stderr and carry no
// protocol. The ready message comes once, when the replica serves; events follow as they happen.
// The other way, the supervisor's control of a running replica (the token and clock faults) is a
// small JSON body POSTed to the replica's own listener, encoded and checked here too.
import { InputError } from '../../protocol/errors.ts';
import type { ReplicaControl, ReplicaRole } from './fleet-types.ts';

const ROLES: readonly string[] = ['leader', 'follower', 'candidate', 'preCandidate', 'rejoining', 'down'] satisfies readonly ReplicaRole[];

export const PROCESS_PROTOCOL_PREFIX = 'BKV1 ';

export type ProcessMessage =
  | { t: 'ready'; name: string; peerAddr: string; relayUrl: string; identityKey: string; akeKeys: Record<string, string> }
  | { t: 'leader'; term: number }
  | { t: 'role'; role: ReplicaRole; term: number; leader: string | null }
  | { t: 'health'; healthy: boolean; code: string; reason: string }
  | { t: 'rejoined'; index: number };

export class ProcessProtocolError extends InputError {
  constructor(message: string) { super(message, 'BAD_PROCESS_MESSAGE'); }
}

export function encodeProcessMessage(m: ProcessMessage): string {
  return `${PROCESS_PROTOCOL_PREFIX}${JSON.stringify(m)}\n`;
}

const str = (v: unknown): v is string => typeof v === 'string' && v.length <= 4096;
const nat = (v: unknown): v is number => typeof v === 'number' && Number.isSafeInteger(v) && v >= 0;

/** A stdout line: the message it carries, undefined for a line that is not protocol (refused if malformed). */
export function decodeProcessLine(line: string): ProcessMessage | undefined {
  if (!line.startsWith(PROCESS_PROTOCOL_PREFIX)) return undefined;
  let v: Record<string, unknown>;
  try {
    v = JSON.parse(line.slice(PROCESS_PROTOCOL_PREFIX.length)) as Record<string, unknown>;
  } catch {
    throw new ProcessProtocolError('process message is not JSON');
  }
  if (typeof v !== 'object' || v === null) throw new ProcessProtocolError('process message is not an object');
  switch (v.t) {
    case 'ready': {
      const keys = v.akeKeys as Record<string, unknown> | undefined;
      if (!str(v.name) || !str(v.peerAddr) || !str(v.relayUrl) || !str(v.identityKey) || typeof keys !== 'object' || keys === null || !Object.values(keys).every(str)) {
        throw new ProcessProtocolError('bad ready message');
      }
      return { t: 'ready', name: v.name, peerAddr: v.peerAddr, relayUrl: v.relayUrl, identityKey: v.identityKey, akeKeys: keys as Record<string, string> };
    }
    case 'leader': if (nat(v.term)) return { t: 'leader', term: v.term }; break;
    case 'role':
      if (typeof v.role === 'string' && ROLES.includes(v.role) && nat(v.term) && (v.leader === null || str(v.leader))) return { t: 'role', role: v.role as ReplicaRole, term: v.term, leader: v.leader };
      break;
    case 'health': if (typeof v.healthy === 'boolean' && str(v.code) && str(v.reason)) return { t: 'health', healthy: v.healthy, code: v.code, reason: v.reason }; break;
    case 'rejoined': if (nat(v.index)) return { t: 'rejoined', index: v.index }; break;
  }
  throw new ProcessProtocolError(`bad process message ${JSON.stringify(String(v.t)).slice(0, 40)}`);
}

/** Body of POST REPLICA_CONTROL_PATH (the supervisor to a replica process started with --faults). */
export function encodeReplicaControl(c: ReplicaControl): string {
  return JSON.stringify({ v: 1, ...c });
}

const rate = (v: unknown, hi: number): v is number => typeof v === 'number' && v >= 0 && v <= hi;

/** A control body, checked field by field (the runner checked the fault; this is the process's own door). */
export function decodeReplicaControl(text: string): ReplicaControl {
  let v: Record<string, unknown>;
  try {
    v = JSON.parse(text) as Record<string, unknown>;
  } catch {
    throw new ProcessProtocolError('control body is not JSON');
  }
  if (typeof v !== 'object' || v === null || v.v !== 1) throw new ProcessProtocolError('control body is not version 1');
  if (v.t === 'token') {
    const ms = v.latencyMs;
    if (rate(v.failureRate, 1) && rate(v.latencyRate, 1) && Array.isArray(ms) && ms.length === 2 && rate(ms[0], 10_000) && rate(ms[1], 10_000) && ms[0] <= ms[1]) {
      return { t: 'token', failureRate: v.failureRate, latencyRate: v.latencyRate, latencyMs: [ms[0], ms[1]] };
    }
  } else if (v.t === 'clock') {
    if (typeof v.rate === 'number' && v.rate >= 0.1 && v.rate <= 10 && typeof v.offsetMs === 'number' && Math.abs(v.offsetMs) <= 86_400_000) {
      return { t: 'clock', rate: v.rate, offsetMs: v.offsetMs };
    }
  }
  throw new ProcessProtocolError(`bad control body ${JSON.stringify(String(v.t)).slice(0, 40)}`);
}
