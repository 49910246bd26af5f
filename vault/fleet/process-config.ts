// What one replica process needs to know about its fleet besides its own token: where each peer
// listens and which identity key each peer must prove (the pins). Parsed from flags
// (`--peer NAME=HOST:PORT`) or a peers file, and checked against the fleet manifest, which every host
// holds: a peer name the manifest does not know, an address that is not HOST:PORT, or a pinned key
// whose fingerprint differs from the manifest's is refused with a ProcessConfigError before anything
// listens or dials. Kept apart from replica-process.ts so supervisors and tests build exactly what
// the process parses.
//
// Peers file (JSON): { "version": 1, "peers": { "<name>": { "host": "127.0.0.1", "port": 7101,
// "identityKey": "<hex, optional>" } } }. Without identityKey the key is read from that replica's
// token in the local state directory (one host holding every token: loopback tests, `bkv fleet up`);
// across hosts, give the keys (each process prints its own as REPLICA_IDENTITY_KEY).
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { openToken } from '../../hsm-adapter/pkcs11-token.ts';
import { KeyLabels } from '../../hsm-adapter/token.ts';
import { BkvError } from '../../protocol/errors.ts';
import type { FleetState } from '../../softhsm/state.ts';
import type { TcpAddress } from './transport-tcp.ts';

export class ProcessConfigError extends BkvError {}

/** GET on a replica process's HTTP front: that one replica's status (JSON ReplicaProcessStatus). */
export const REPLICA_STATUS_PATH = '/v1/replica/status';
/** POST, operator key: the token and clock faults of a replica process started with --faults. */
export const REPLICA_CONTROL_PATH = '/v1/replica/control';

export interface PeerSpec {
  name: string;
  address: TcpAddress;
  /** Pinned identity public key (65-byte uncompressed P-256); absent: read from the local token. */
  identityKey?: Uint8Array;
}

const NAME = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/;
const HOST = /^(?:[A-Za-z0-9.-]{1,253}|\[[0-9A-Fa-f:.]{2,45}\])$/;

/** `HOST:PORT` (IPv6 in brackets) -> address; port 0 only where `allowZero` (listen on any port). */
export function parseHostPort(v: string, what: string, allowZero = false): TcpAddress {
  const i = v.lastIndexOf(':');
  const host = i > 0 ? v.slice(0, i) : '';
  const portText = i > 0 ? v.slice(i + 1) : '';
  const port = /^[0-9]{1,5}$/.test(portText) ? Number(portText) : NaN;
  if (!HOST.test(host) || !(port >= (allowZero ? 0 : 1) && port <= 65535)) {
    throw new ProcessConfigError('BAD_ADDRESS', `${what} must be HOST:PORT with a port ${allowZero ? 0 : 1}..65535 (got ${JSON.stringify(v)})`);
  }
  return { host: host.startsWith('[') ? host.slice(1, -1) : host, port };
}

/** `--peer NAME=HOST:PORT`. */
export function parsePeerFlag(v: string): PeerSpec {
  const eq = v.indexOf('=');
  const name = eq > 0 ? v.slice(0, eq) : '';
  if (!NAME.test(name)) throw new ProcessConfigError('BAD_PEER', `--peer must be NAME=HOST:PORT (got ${JSON.stringify(v)})`);
  return { name, address: parseHostPort(v.slice(eq + 1), `--peer ${name}`) };
}

function hexKey(v: unknown, what: string): Uint8Array {
  if (typeof v !== 'string' || !/^04[0-9a-fA-F]{128}$/.test(v)) {
    throw new ProcessConfigError('BAD_PEERS_FILE', `${what} must be a 65-byte uncompressed P-256 key in hex`);
  }
  return new Uint8Array(Buffer.from(v, 'hex'));
}

/** Reads and validates a peers file (format above). */
export function parsePeersFile(path: string): PeerSpec[] {
  let raw: unknown;
  try {
    raw = JSON.parse(readFileSync(path, 'utf8'));
  } catch {
    throw new ProcessConfigError('BAD_PEERS_FILE', `peers file ${path} cannot be read as JSON`);
  }
  const o = raw as { version?: unknown; peers?: unknown };
  if (typeof o !== 'object' || o === null || o.version !== 1 || typeof o.peers !== 'object' || o.peers === null || Array.isArray(o.peers)) {
    throw new ProcessConfigError('BAD_PEERS_FILE', `peers file ${path} must be {"version":1,"peers":{NAME:{host,port}}}`);
  }
  const out: PeerSpec[] = [];
  for (const [name, p] of Object.entries(o.peers as Record<string, unknown>)) {
    if (!NAME.test(name)) throw new ProcessConfigError('BAD_PEERS_FILE', `peers file ${path}: bad replica name ${JSON.stringify(name)}`);
    const e = p as { host?: unknown; port?: unknown; identityKey?: unknown };
    if (typeof e !== 'object' || e === null || typeof e.host !== 'string' || typeof e.port !== 'number') {
      throw new ProcessConfigError('BAD_PEERS_FILE', `peers file ${path}: ${name} needs host (string) and port (number)`);
    }
    for (const k of Object.keys(e)) {
      if (k !== 'host' && k !== 'port' && k !== 'identityKey') throw new ProcessConfigError('BAD_PEERS_FILE', `peers file ${path}: ${name} has unknown field ${JSON.stringify(k)}`);
    }
    const host = e.host.includes(':') && !e.host.startsWith('[') ? `[${e.host}]` : e.host;
    out.push({
      name, address: parseHostPort(`${host}:${e.port}`, `peers file ${name}`),
      ...(e.identityKey === undefined ? {} : { identityKey: hexKey(e.identityKey, `peers file ${name}.identityKey`) }),
    });
  }
  return out;
}

/** SHA-256 prefix of an identity public key, as fleet.json records it. */
export function identityFingerprint(pub: Uint8Array): string {
  return createHash('sha256').update(pub).digest().subarray(0, 16).toString('hex');
}

/** The channel's fleet id: the same as the threaded runner's (bound to the fleet's AKE key check value). */
export function fleetIdOf(state: FleetState): string {
  return `bkv-fleet-${state.manifest.kcv.fleetAke}`;
}

export interface ProcessPeers {
  /** Every voter (self and peers) in manifest order: the same list on every process. */
  voters: string[];
  addresses: Record<string, TcpAddress>;
  pins: Map<string, Uint8Array>;
}

/**
 * Checks `self` and `peers` against the manifest and resolves every pin: given keys must match the
 * manifest's fingerprint; missing ones are read from the local tokens (then also checked). Opens
 * tokens in the calling thread, so SOFTHSM2_CONF must already be active.
 */
export function resolvePeers(state: FleetState, self: string, peers: readonly PeerSpec[]): ProcessPeers {
  const known = new Map(state.manifest.replicas.map((r) => [r.name, r] as const));
  const seen = new Set<string>([self]);
  if (!known.has(self)) throw new ProcessConfigError('UNKNOWN_REPLICA', `no replica named ${JSON.stringify(self)} in ${state.stateDir}`);
  for (const p of peers) {
    if (!known.has(p.name)) throw new ProcessConfigError('UNKNOWN_REPLICA', `peer ${JSON.stringify(p.name)} is not a replica of the fleet in ${state.stateDir}`);
    if (seen.has(p.name)) throw new ProcessConfigError('DUPLICATE_REPLICA', `replica ${p.name} is named twice (or is this process itself)`);
    seen.add(p.name);
  }
  const given = new Map(peers.filter((p) => p.identityKey).map((p) => [p.name, p.identityKey!] as const));
  const pins = new Map<string, Uint8Array>();
  for (const name of seen) {
    const r = known.get(name)!;
    let pub = given.get(name);
    if (!pub) {
      const t = openToken(state.tokenOptions(r.tokenLabel));
      try {
        pub = t.publicKey(KeyLabels.replicaIdentity);
      } finally {
        t.close();
      }
    }
    if (r.identityFingerprint && identityFingerprint(pub) !== r.identityFingerprint) {
      throw new ProcessConfigError('IDENTITY_MISMATCH', `the identity key for ${name} is not the one fleet.json pins`);
    }
    pins.set(name, pub);
  }
  return {
    // After a membership change a blank disk must still write the founders' entry 1, whoever runs now.
    voters: state.manifest.founders ?? state.manifest.replicas.map((r) => r.name).filter((n) => seen.has(n)),
    addresses: Object.fromEntries(peers.map((p) => [p.name, p.address])),
    pins,
  };
}
