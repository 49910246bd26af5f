// The state directory of a SoftHSM2 fleet: softhsm2.conf (file object store, its own token
// directory), the PIN file (0600), and fleet.json, the manifest later code (vault fleet, serve) reads.
import { chmodSync, existsSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { BkvError } from '../protocol/errors.ts';
import { initializedConf } from '../hsm-adapter/module.ts';
import type { SealScheme } from '../hsm-adapter/token.ts';
import type { DataStore } from '../hsm-adapter/pkcs11-token.ts';

export class StateError extends BkvError {}

/** Data centers in the order replicas are named after them; past the list, dc-N. */
export const DATA_CENTERS = [
  'us-east', 'us-west', 'eu-west', 'ap-southeast', 'sa-east',
  'eu-central', 'ap-northeast', 'ap-south', 'ca-central', 'eu-north', 'me-central', 'af-south', 'ap-east',
];

export function replicaNames(count: number): string[] {
  if (!Number.isInteger(count) || count < 1 || count > 64) {
    throw new StateError('BAD_REPLICA_COUNT', `replica count must be an integer from 1 to 64 (got ${count})`);
  }
  return Array.from({ length: count }, (_, i) => DATA_CENTERS[i] ?? `dc-${i + 1}`);
}

export interface ReplicaInfo {
  name: string;
  tokenLabel: string;
}

export interface ManifestReplica extends ReplicaInfo {
  serial: string;
  /** The seal scheme the fleet AKE blob in this token was sealed with; open the token with it. */
  sealScheme: SealScheme;
  /** SHA-256 prefix of the replica identity public key (not secret; lets peers pin it). */
  identityFingerprint: string;
  /** Where the token keeps the anchor, vote and sealed AKE seed; absent: 'data-object' (CKO_DATA). */
  dataStore?: DataStore;
  /** Adopted tokens: how the operator named the token (label or PKCS#11 URI); absent: tokenLabel. */
  tokenSpec?: string;
  /** Adopted tokens: the file holding the user PIN (absolute; bkv reads it, never copies it). */
  pinFile?: string;
}

export interface FleetManifest {
  version: 1;
  createdAt: string;
  modulePath: string;
  /**
   * The string handed to C_Initialize (NSS softoken's configdir=..., vendor strings). Absent for
   * modules that take none (SoftHSM2), so a manifest written before it existed reads the same.
   */
  moduleArgs?: string;
  /** Relative to the state directory; absent for adopted tokens (bkv writes no module config then). */
  conf?: string;
  /** True when the tokens came initialised (bkv provision --adopt): bkv never re-initialises them. */
  adopted?: boolean;
  replicas: ManifestReplica[];
  /** Key check values of the fleet-wide secrets: equal in every token, reveal nothing about them. */
  kcv: { oprfSeed: string; fleetAke: string };
  /** How the key ceremony ran (absent: made before it was recorded, a host ceremony). */
  ceremony?: { kind: 'token' | 'host'; source?: string; reason: string };
  /**
   * Tokens that hold the fleet secrets but are in no configuration: spares (they took part in the
   * key ceremony, which is the only way a token gets the non-extractable secrets) and replicas that
   * `bkv fleet member remove` took out (token and disk kept until the operator deletes them).
   * `bkv fleet member add` starts one. Absent: none.
   */
  standby?: StandbyReplica[];
  /**
   * The founding configuration (entry 1 of every replica's Raft log, which a replica on a blank disk
   * writes for itself). Written by provision when it makes spares and at the first membership
   * change; absent: the replicas the fleet runs (a fresh fleet bootstraps with them).
   */
  founders?: string[];
}

export interface StandbyReplica extends ManifestReplica {
  standby: 'spare' | 'removed';
}

export interface FleetState {
  stateDir: string;
  /** SoftHSM2 conf of a provisioned fleet; undefined for adopted tokens. */
  confPath: string | undefined;
  modulePath: string;
  /** Module arguments recorded at provisioning (undefined: none). */
  moduleArgs: string | undefined;
  /** The members (the fleet's configuration as last recorded): what `fleet up` starts. */
  replicas: ReplicaInfo[];
  /** Spare and removed replicas' tokens (manifest.standby), not started until a membership change adds one. */
  standby: (ReplicaInfo & { standby: 'spare' | 'removed' })[];
  /** The founding configuration (manifest.founders, else the members). */
  founders: string[];
  manifest: FleetManifest;
  /** Everything openToken needs for this token: module, its arguments, PIN, seal scheme. */
  tokenOptions(tokenLabel: string): { modulePath: string; moduleArgs?: string; token: string; pin: string; sealScheme: SealScheme; dataStore?: DataStore };
  /** User PIN of a token: from the state's PIN file, else BKV_PIN. Never log it. */
  pinFor(tokenLabel: string): string;
  /** Seal scheme recorded for a token at provisioning. */
  sealSchemeFor(tokenLabel: string): SealScheme;
}

export interface PinFile {
  version: 1;
  tokens: Record<string, { user: string; so: string }>;
}

export const statePaths = (stateDir: string) => {
  const dir = resolve(stateDir);
  return {
    dir,
    conf: join(dir, 'softhsm2.conf'),
    tokens: join(dir, 'tokens'),
    pins: join(dir, 'pins.json'),
    manifest: join(dir, 'fleet.json'),
  };
};

export function confText(tokenDir: string): string {
  return [
    '# SoftHSM2 configuration written by `bkv provision`: this fleet\'s own token directory.',
    `directories.tokendir = ${tokenDir}`,
    'objectstore.backend = file',
    'log.level = ERROR',
    'slots.removable = false',
    'slots.mechanisms = ALL',
    'library.reset_on_fork = false',
    '',
  ].join('\n');
}

/**
 * SoftHSM2 takes an absolute token directory, so a state directory that was moved or copied still
 * names the old one in its softhsm2.conf: its tokens would be another directory's (a copy's vault
 * would open, and anchor into, the original's tokens). A directory that holds its own tokens is
 * pointed at them (only the tokendir line changes; returns the directory it named before); one that
 * does not is refused with what to do, before anything opens a token.
 */
export function ownTokenDir(stateDir: string): { movedFrom?: string } {
  const p = statePaths(stateDir);
  const text = readFileSync(p.conf, 'utf8');
  const m = /^directories\.tokendir\s*=\s*(.+?)\s*$/m.exec(text);
  if (!m) throw new StateError('STATE_CORRUPT', `${p.conf} names no token directory (directories.tokendir)`);
  const named = m[1]!;
  if (resolve(named) === p.tokens) return {};
  if (!existsSync(p.tokens)) {
    throw new StateError(
      'STATE_MOVED',
      `${p.conf} names the token directory ${named}, not this directory's own ${p.tokens}, which does not exist: ` +
        `the state directory was moved or copied without its tokens. Copy them too (cp -a ${named} ${p.tokens}), or use the directory that has them; nothing was changed`,
    );
  }
  const tmp = `${p.conf}.tmp-${process.pid}`;
  writeFileSync(tmp, text.replace(m[0], `directories.tokendir = ${p.tokens}`), { mode: 0o600 });
  chmodSync(tmp, 0o600);
  renameSync(tmp, p.conf);
  return { movedFrom: named };
}

export function readPinFile(path: string): PinFile | undefined {
  if (!existsSync(path)) return undefined;
  const mode = statSync(path).mode & 0o777;
  if (mode & 0o077) {
    throw new StateError('PIN_FILE_PERMISSIONS', `PIN file ${path} is readable by others (mode ${mode.toString(8)}); chmod 600 it`);
  }
  let parsed: PinFile;
  try {
    parsed = JSON.parse(readFileSync(path, 'utf8')) as PinFile;
  } catch {
    // Deliberately no parse detail: the text around a JSON error could be a PIN.
    throw new StateError('STATE_CORRUPT', `PIN file ${path} is not valid JSON`);
  }
  if (parsed?.version !== 1 || typeof parsed.tokens !== 'object' || parsed.tokens === null) {
    throw new StateError('STATE_CORRUPT', `PIN file ${path} has an unknown format`);
  }
  return parsed;
}

/** The PIN in an operator's PIN file (one trailing newline dropped). The error names the file, never its text. */
export function readPinText(path: string): string {
  let mode: number;
  try {
    mode = statSync(path).mode & 0o777;
  } catch (e) {
    throw new StateError('PIN_FILE_UNREADABLE', `cannot read PIN file ${path}: ${(e as NodeJS.ErrnoException).code ?? 'error'}`);
  }
  if (mode & 0o077) throw new StateError('PIN_FILE_PERMISSIONS', `PIN file ${path} is readable by others (mode ${mode.toString(8)}); chmod 600 it`);
  return readFileSync(path, 'utf8').replace(/\r?\n$/, '');
}

export function readManifest(path: string): FleetManifest | undefined {
  if (!existsSync(path)) return undefined;
  let m: FleetManifest;
  try {
    m = JSON.parse(readFileSync(path, 'utf8')) as FleetManifest;
  } catch (e) {
    throw new StateError('STATE_CORRUPT', `fleet manifest ${path} is not valid JSON: ${(e as Error).message}`);
  }
  const ok =
    m?.version === 1 &&
    typeof m.modulePath === 'string' &&
    (m.moduleArgs === undefined || typeof m.moduleArgs === 'string') &&
    Array.isArray(m.replicas) &&
    m.replicas.length > 0 &&
    [...m.replicas, ...(Array.isArray(m.standby) ? m.standby : [])].every((r) => typeof r?.name === 'string' && typeof r.tokenLabel === 'string' && (r.dataStore === undefined || r.dataStore === 'data-object' || r.dataStore === 'secret-key-id')) &&
    (m.standby === undefined || (Array.isArray(m.standby) && m.standby.every((r) => r.standby === 'spare' || r.standby === 'removed'))) &&
    (m.founders === undefined || (Array.isArray(m.founders) && m.founders.length > 0 && m.founders.every((f) => typeof f === 'string'))) &&
    typeof m.kcv?.oprfSeed === 'string' &&
    typeof m.kcv?.fleetAke === 'string';
  if (!ok) throw new StateError('STATE_CORRUPT', `fleet manifest ${path} is incomplete or of an unknown version`);
  return m;
}

/** Reads a provisioned state directory; a clear StateError when it is missing or incomplete. */
export function loadState(stateDir: string): FleetState {
  const p = statePaths(stateDir);
  if (!existsSync(p.dir)) {
    throw new StateError('STATE_MISSING', `state directory ${p.dir} does not exist; run \`bkv provision --state ${stateDir}\` first`);
  }
  const manifest = readManifest(p.manifest);
  if (!manifest) {
    throw new StateError('STATE_INCOMPLETE', `state directory ${p.dir} has no fleet.json: provisioning did not finish; run \`bkv provision --state ${stateDir}\``);
  }
  const confPath = manifest.adopted ? undefined : join(p.dir, manifest.conf ?? 'softhsm2.conf');
  if (confPath !== undefined && !existsSync(confPath)) {
    throw new StateError('STATE_INCOMPLETE', `state directory ${p.dir} lacks ${manifest.conf}; run \`bkv provision --state ${stateDir}\``);
  }
  const pins = readPinFile(p.pins);
  if (confPath === p.conf) ownTokenDir(p.dir);
  // Standby tokens open like members' (a membership change starts them).
  const every = [...manifest.replicas, ...(manifest.standby ?? [])];
  const schemes = new Map(every.map((r) => [r.tokenLabel, r.sealScheme ?? 'aes-256-gcm'] as const));
  const moduleArgs = manifest.moduleArgs || undefined;
  const stores = new Map(every.map((r) => [r.tokenLabel, r.dataStore] as const));
  return {
    stateDir: p.dir,
    confPath,
    modulePath: manifest.modulePath,
    moduleArgs,
    tokenOptions(tokenLabel: string) {
      return {
        modulePath: manifest.modulePath,
        ...(moduleArgs !== undefined ? { moduleArgs } : {}),
        token: every.find((r) => r.tokenLabel === tokenLabel)?.tokenSpec ?? tokenLabel,
        pin: this.pinFor(tokenLabel),
        sealScheme: this.sealSchemeFor(tokenLabel),
        ...(stores.get(tokenLabel) ? { dataStore: stores.get(tokenLabel) } : {}),
      };
    },
    replicas: manifest.replicas.map(({ name, tokenLabel }) => ({ name, tokenLabel })),
    standby: (manifest.standby ?? []).map(({ name, tokenLabel, standby }) => ({ name, tokenLabel, standby })),
    founders: manifest.founders ?? manifest.replicas.map((r) => r.name),
    manifest,
    pinFor(tokenLabel: string): string {
      // pins.json is keyed by replica name (provision writes it so); an adopted token's PIN stays in
      // the operator's file.
      const rep = every.find((r) => r.tokenLabel === tokenLabel);
      const pin = (rep && pins?.tokens[rep.name]?.user) ?? pins?.tokens[tokenLabel]?.user ?? (rep?.pinFile ? readPinText(rep.pinFile) : undefined) ?? process.env.BKV_PIN;
      if (pin === undefined) {
        throw new StateError('PIN_MISSING', `no PIN for token '${tokenLabel}' in ${p.pins} and BKV_PIN is not set`);
      }
      return pin;
    },
    sealSchemeFor(tokenLabel: string): SealScheme {
      const s = schemes.get(tokenLabel);
      if (!s) throw new StateError('UNKNOWN_TOKEN', `token '${tokenLabel}' is not part of the fleet in ${p.dir}`);
      return s;
    },
  };
}

/**
 * Points SoftHSM2 at this state's conf. SoftHSM2 reads SOFTHSM2_CONF from the real process
 * environment when the module is initialised, so call this in the main thread before any token is
 * opened (a worker's process.env is a private copy SoftHSM never sees).
 */
export function activateSoftHsmConf(state: { confPath: string | undefined }): void {
  if (state.confPath === undefined) return; // adopted tokens: the module keeps its own configuration
  const init = initializedConf();
  if (init && init.conf !== state.confPath) {
    throw new StateError(
      'MODULE_ALREADY_INITIALISED',
      `the PKCS#11 module is already initialised with ${init.conf ?? 'the default SoftHSM2 conf'}; ` +
        `finalise it (finalizeModule) before switching to ${state.confPath}`,
    );
  }
  process.env.SOFTHSM2_CONF = state.confPath;
}

/**
 * Rewrites fleet.json in one rename (a crash leaves the old or the new file, never half of one),
 * after a membership change committed. Checked as readManifest checks, so a bad one is never written.
 */
export function writeManifest(stateDir: string, m: FleetManifest): void {
  const path = statePaths(stateDir).manifest;
  const text = JSON.stringify(m, null, 2) + '\n';
  const tmp = `${path}.tmp-${process.pid}`;
  writeFileSync(tmp, text, { mode: 0o600 });
  chmodSync(tmp, 0o600);
  try {
    readManifest(tmp);
  } catch (e) {
    rmSync(tmp, { force: true });
    throw e;
  }
  renameSync(tmp, path);
}
