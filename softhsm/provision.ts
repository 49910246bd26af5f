// `bkv provision`: a SoftHSM2 fleet in a state directory, one token per replica, and the key
// ceremony that puts the same fleet-wide secrets into every token. Idempotent: a complete state is
// left untouched, a half-finished one is completed where that is possible and reported where it is
// not (a fleet secret that already left the host cannot be re-imported); only --force destroys.
import pkcs11 from 'pkcs11js';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync, renameSync, chmodSync } from 'node:fs';
import { dirname, relative } from 'node:path';
import { loadModule, defaultModulePath, initializedConf, finalizeModule } from '../hsm-adapter/module.ts';
import { openToken, findSlot, type Pkcs11Token } from '../hsm-adapter/pkcs11-token.ts';
import { toTokenError, TokenError } from '../hsm-adapter/errors.ts';
import { KeyLabels, type SealScheme } from '../hsm-adapter/token.ts';
import {
  StateError, activateSoftHsmConf, confText, ownTokenDir, readManifest, readPinFile, replicaNames, statePaths,
  type FleetManifest, type ManifestReplica, type PinFile, type StandbyReplica,
} from './state.ts';
import { checkAdopted } from './adopt.ts';
import { runCeremony, type CeremonyMode } from './ceremony.ts';
import {
  chooseDataStore, ensurePerTokenKeys, fleetAkeKcv, fleetSecretPresence, manifestFingerprint, wantsIdentity, importFleetSecrets, oprfSeedKcv,
  type FleetSecretPresence,
} from './keys.ts';

export interface ProvisionOptions {
  stateDir: string;
  /** Default 5. */
  replicas?: number;
  /**
   * Spare tokens made with the fleet (default 0): they take part in the key ceremony, since the fleet
   * secrets can never leave a token afterwards, and wait in fleet.json's `standby` for `bkv fleet
   * member add` (named after the next data centers). Only on a fresh fleet.
   */
  spares?: number;
  /** Destroy an existing state directory's tokens, PINs and manifest and start over. */
  force?: boolean;
  modulePath?: string;
  /** String for C_Initialize (NSS softoken's configdir=...); recorded in fleet.json for every later command. */
  moduleArgs?: string;
  /** 'auto' (default): token-to-token where every token can, else host; recorded in fleet.json. */
  ceremony?: CeremonyMode;
  /** Seal scheme for the tokens (default 'auto': AES-GCM where offered). Recorded in fleet.json. */
  sealScheme?: SealScheme | 'auto';
  onProgress?: (message: string) => void;
}

export interface ProvisionReport {
  stateDir: string;
  /** True when the state was complete and nothing was changed. */
  unchanged: boolean;
  /** Human-readable list of what was done (no secrets). */
  actions: string[];
  replicas: { name: string; tokenLabel: string; serial: string }[];
  /** Spare and removed replicas' tokens (fleet.json's standby); absent when there are none. */
  standby?: { name: string; tokenLabel: string; serial: string; standby: 'spare' | 'removed' }[];
  kcv: { oprfSeed: string; fleetAke: string };
  manifestPath: string;
}

export function writeFileAtomic(path: string, text: string, mode: number): void {
  const tmp = `${path}.tmp-${process.pid}`;
  writeFileSync(tmp, text, { mode });
  chmodSync(tmp, mode);
  renameSync(tmp, path);
}

const pad32 = (s: string) => s.padEnd(32, ' ');

function newPin(): string {
  // 24 hex digits: well within SoftHSM2's 4..255 PIN length; base16 keeps it shell- and file-safe.
  return randomBytes(12).toString('hex');
}

/** Initialises a free SoftHSM2 slot as a token with this label and PINs. */
function initToken(lib: pkcs11.PKCS11, label: string, pins: { user: string; so: string }): void {
  let slots: Buffer[];
  try {
    slots = lib.C_GetSlotList(false);
  } catch (e) {
    throw toTokenError(e, 'C_GetSlotList', label, 'listing slots');
  }
  const free = slots.find((slot) => {
    try {
      return !(lib.C_GetTokenInfo(slot).flags & pkcs11.CKF_TOKEN_INITIALIZED);
    } catch {
      return false;
    }
  });
  if (!free) throw new StateError('NO_FREE_SLOT', `the PKCS#11 module offers no uninitialised slot for token '${label}'`);
  try {
    lib.C_InitToken(free, pins.so, pad32(label));
  } catch (e) {
    throw toTokenError(e, 'C_InitToken', label, 'initialising the token');
  }
  // The slot id changes after C_InitToken (SoftHSM2 renumbers): find the new token by label.
  const { slot } = findSlot(lib, { token: label });
  let s: Buffer;
  try {
    s = lib.C_OpenSession(slot, pkcs11.CKF_SERIAL_SESSION | pkcs11.CKF_RW_SESSION);
  } catch (e) {
    throw toTokenError(e, 'C_OpenSession', label, 'opening an SO session');
  }
  try {
    lib.C_Login(s, pkcs11.CKU_SO, pins.so);
    lib.C_InitPIN(s, pins.user);
    lib.C_Logout(s);
  } catch (e) {
    throw toTokenError(e, 'C_InitPIN', label, 'setting the user PIN');
  } finally {
    try {
      lib.C_CloseSession(s);
    } catch {
      /* the error above, if any, matters more */
    }
  }
}

function tokenExists(lib: pkcs11.PKCS11, label: string): boolean {
  try {
    findSlot(lib, { token: label });
    return true;
  } catch (e) {
    if (e instanceof TokenError && e.code === 'TOKEN_NOT_FOUND') return false;
    throw e;
  }
}

export async function provision(opts: ProvisionOptions): Promise<ProvisionReport> {
  const p = statePaths(opts.stateDir);
  const say = opts.onProgress ?? (() => {});
  const actions: string[] = [];
  const did = (a: string) => {
    actions.push(a);
    say(a);
  };
  const existing = readManifestSafe(p.manifest, opts.force);
  if (existing?.adopted) {
    // Tokens bkv did not create are never initialised or wiped by it: check them, change nothing.
    if (opts.force) throw new StateError('FLEET_ADOPTED', `${p.dir} holds adopted tokens; --force would not re-initialise them. Adopt into a new directory instead`);
    return checkAdopted(p.dir, existing);
  }
  const count = opts.replicas ?? existing?.replicas.length ?? 5;
  const spareCount = opts.spares ?? 0;
  if (!Number.isInteger(spareCount) || spareCount < 0 || count + spareCount > 64) {
    throw new StateError('BAD_REPLICA_COUNT', `spares must be an integer from 0 with replicas + spares at most 64 (got ${opts.spares})`);
  }
  // An existing fleet keeps its names: membership changes move replicas between `replicas` and
  // `standby`, so they are no longer the first N data centers.
  const keep = existing && !opts.force;
  const memberNames = keep ? existing.replicas.map((r) => r.name) : replicaNames(count + spareCount).slice(0, count);
  const standbyKind = new Map<string, 'spare' | 'removed'>(keep ? (existing.standby ?? []).map((r) => [r.name, r.standby] as const) : replicaNames(count + spareCount).slice(count).map((n) => [n, 'spare'] as const));
  const names = [...memberNames, ...standbyKind.keys()];
  const modulePath = opts.modulePath ?? existing?.modulePath ?? defaultModulePath();
  const moduleArgs = opts.moduleArgs ?? (opts.force ? undefined : existing?.moduleArgs);

  if (existing && !opts.force) {
    const had = existing.replicas.map((r) => r.name);
    if (opts.replicas !== undefined && had.length !== opts.replicas) {
      throw new StateError(
        'FLEET_MISMATCH',
        `${p.dir} holds a fleet of ${had.length} replicas (${had.join(', ')}); asked for ${opts.replicas}. ` +
          'Fleet secrets cannot be copied into new tokens after the ceremony; use --force to start over (destroys the fleet)',
      );
    }
    const spares = (existing.standby ?? []).filter((r) => r.standby === 'spare').length;
    if (opts.spares !== undefined && opts.spares !== spares) {
      throw new StateError('FLEET_MISMATCH', `${p.dir} holds ${spares} spare token(s); asked for ${opts.spares}. Spares take part in the key ceremony and cannot be made after it; use --force to start over (destroys the fleet)`);
    }
  }

  if (opts.force && existsSync(p.dir)) {
    if (initializedConf()) finalizeModule();
    for (const f of [p.tokens, p.pins, p.manifest, p.conf]) rmSync(f, { recursive: true, force: true });
    did(`removed the old fleet in ${p.dir} (--force)`);
  }

  const conf = confText(p.tokens);
  if (existsSync(p.conf)) {
    // A moved or copied directory names the old tokens: point it at its own (or refuse, saying why).
    const { movedFrom } = ownTokenDir(p.dir);
    if (movedFrom) did(`${p.conf} named the token directory ${movedFrom} (the state directory was moved or copied); it now names its own, ${p.tokens}${existsSync(movedFrom) ? `. ${movedFrom} still exists: this directory is a copy of that fleet, keys and records alike, which real HSMs make impossible; do not serve both to the same devices` : ''}`);
    if (readFileSync(p.conf, 'utf8') !== conf) {
      throw new StateError('STATE_CONFLICT', `${p.conf} was not written by bkv provision (its settings differ); move it aside to have it written again`);
    }
  }
  mkdirSync(p.tokens, { recursive: true, mode: 0o700 });
  if (!existsSync(p.conf)) {
    writeFileAtomic(p.conf, conf, 0o600);
    did(`wrote ${p.conf}`);
  }
  activateSoftHsmConf({ confPath: p.conf });

  const mod = loadModule(modulePath, moduleArgs);
  // A token's PIN is the one it was initialised with: a PIN file that is gone (or lost a token's
  // entry) cannot be made again, and new random PINs in its place would lock bkv out of the tokens
  // for good. Only tokens that do not exist yet get new PINs.
  const pinsOnDisk = readPinFile(p.pins);
  const pins: PinFile = pinsOnDisk ?? { version: 1, tokens: {} };
  const present = new Set(names.filter((n) => tokenExists(mod.lib, n)));
  // A removed replica's token is the operator's to delete (`bkv fleet member remove` keeps it):
  // once it is gone it only leaves fleet.json's standby list.
  for (const [n, why] of [...standbyKind]) {
    if (why !== 'removed' || present.has(n)) continue;
    standbyKind.delete(n);
    names.splice(names.indexOf(n), 1);
    did(`the token of removed replica '${n}' is gone: dropped from ${p.manifest}'s standby list`);
  }
  if (existing && !opts.force) {
    // The fleet was complete once: a token that is gone took fleet secrets no other token can give
    // up, so a fresh token in its place could never join. Say so before touching anything.
    const gone = names.filter((n) => !present.has(n));
    if (gone.length) {
      throw new StateError(
        'FLEET_INCOMPLETE',
        `token(s) ${gone.join(', ')} of the fleet in ${p.dir} are gone; their fleet secrets cannot be re-imported ` +
          '(they are non-extractable). Use --force to start the fleet over',
      );
    }
  }
  const noPin = names.filter((n) => present.has(n) && !pins.tokens[n]);
  if (noPin.length) {
    throw new StateError(
      'PIN_FILE_MISSING',
      `token(s) ${noPin.join(', ')} in ${p.tokens} exist, but ${pinsOnDisk ? `${p.pins} has no PIN for them` : `their PIN file ${p.pins} is gone`}: ` +
        'a token keeps the PIN it was initialised with, and new ones cannot open it. Restore pins.json from a backup of this directory; nothing was changed',
    );
  }
  let pinsChanged = false;
  for (const name of names) {
    if (!pins.tokens[name]) {
      pins.tokens[name] = { user: newPin(), so: newPin() };
      pinsChanged = true;
    }
  }
  if (pinsChanged) {
    writeFileAtomic(p.pins, JSON.stringify(pins, null, 2) + '\n', 0o600);
    did(`wrote the PIN file ${p.pins} (mode 0600)`);
  }
  for (const name of names) {
    if (!tokenExists(mod.lib, name)) {
      initToken(mod.lib, name, pins.tokens[name]);
      did(`initialised token '${name}'`);
    }
  }

  const tokens: Pkcs11Token[] = [];
  try {
    const had = keep ? [...existing.replicas, ...(existing.standby ?? [])] : [];
    const recorded = new Map(had.map((r) => [r.name, r.sealScheme] as const));
    const recordedStore = new Map(had.map((r) => [r.name, r.dataStore ?? 'data-object'] as const));
    for (const name of names) {
      const sealScheme = recorded.get(name) ?? opts.sealScheme ?? 'auto';
      if (opts.sealScheme && opts.sealScheme !== 'auto' && recorded.has(name) && recorded.get(name) !== opts.sealScheme) {
        throw new StateError('FLEET_MISMATCH', `token '${name}' was provisioned with seal scheme ${recorded.get(name)}; use --force to change it`);
      }
      tokens.push(openToken({ modulePath, moduleArgs, token: name, pin: pins.tokens[name].user, sealScheme, dataStore: recordedStore.get(name), signs: names.length > 1 }));
    }
    for (const [i, t] of tokens.entries()) if (!recordedStore.has(names[i])) chooseStore(t, did);
    const presence = tokens.map((t) => fleetSecretPresence(t));
    // Checked before any key is made, so a refusal changes nothing.
    tokens.forEach((t, i) => {
      if (presence[i].fleetAke && !t.findObject(KeyLabels.recordKey, pkcs11.CKO_SECRET_KEY)) {
        throw new StateError(
          'FLEET_INCOMPLETE',
          `token '${t.label}' lost its record key, so the fleet AKE seed sealed under it cannot be opened; use --force to start the fleet over`,
        );
      }
    });
    if (existing && !opts.force && presence.every((x) => !x.oprfSeed && !x.fleetAke)) {
      throw new StateError(
        'FLEET_SECRETS_LOST',
        `no token holds the fleet secrets fleet.json records (KCV ${existing.kcv.oprfSeed}); a new ceremony would make a different fleet. Use --force to start over`,
      );
    }
    for (const t of tokens) {
      const made = ensurePerTokenKeys(t, { identity: wantsIdentity(t, tokens.length) });
      if (made.length) did(`token '${t.label}': created ${made.join(', ')}`);
    }
    const complete = (x: FleetSecretPresence) => x.oprfSeed && x.fleetAke;
    let ceremony = existing && !opts.force ? existing.ceremony : undefined;
    if (presence.every((x) => !x.oprfSeed && !x.fleetAke)) {
      ceremony = runCeremony(tokens, presence, did, opts.ceremony);
    } else if (!presence.every(complete)) {
      const lacking = tokens.filter((_, i) => !complete(presence[i])).map((t) => t.label);
      throw new StateError(
        'FLEET_INCOMPLETE',
        `the key ceremony in ${p.dir} did not finish: token(s) ${lacking.join(', ')} lack fleet secrets that the other tokens hold ` +
          'and cannot give up (they are non-extractable). Use --force to start the fleet over',
      );
    }

    const kcvs = tokens.map((t) => ({ oprfSeed: oprfSeedKcv(t), fleetAke: fleetAkeKcv(t) }));
    for (const k of kcvs) {
      if (k.oprfSeed !== kcvs[0].oprfSeed || k.fleetAke !== kcvs[0].fleetAke) {
        throw new StateError('FLEET_SECRETS_DIFFER', `fleet secrets differ between tokens (KCVs ${kcvs.map((x) => x.oprfSeed).join(', ')}); use --force to start over`);
      }
    }
    const entries: ManifestReplica[] = tokens.map((t, i) => ({
      name: names[i],
      tokenLabel: t.label,
      serial: t.describe().serial,
      sealScheme: t.sealScheme,
      identityFingerprint: manifestFingerprint(t),
      ...(t.dataStore !== 'data-object' ? { dataStore: t.dataStore } : {}),
    }));
    const replicas = entries.filter((r) => !standbyKind.has(r.name));
    const standby: StandbyReplica[] = entries.filter((r) => standbyKind.has(r.name)).map((r) => ({ ...r, standby: standbyKind.get(r.name)! }));
    const founders = keep ? existing.founders : standby.length ? replicas.map((r) => r.name) : undefined;
    const manifest: FleetManifest = {
      version: 1,
      createdAt: existing && !opts.force ? existing.createdAt : new Date().toISOString(),
      modulePath,
      ...(moduleArgs ? { moduleArgs } : {}),
      conf: relative(p.dir, p.conf),
      replicas,
      kcv: kcvs[0],
      ...(ceremony ? { ceremony } : {}),
      ...(standby.length ? { standby } : {}),
      ...(founders ? { founders } : {}),
    };
    const text = JSON.stringify(manifest, null, 2) + '\n';
    if (!existsSync(p.manifest) || readFileSync(p.manifest, 'utf8') !== text) {
      if (existing && !opts.force && actions.length === 0) {
        // Same fleet, different facts (e.g. the module moved): record them, say so.
        did(`updated ${p.manifest}`);
      } else {
        actions.push(`wrote ${p.manifest}`);
        say(`wrote ${p.manifest}`);
      }
      mkdirSync(dirname(p.manifest), { recursive: true, mode: 0o700 });
      writeFileAtomic(p.manifest, text, 0o600);
    }
    return {
      stateDir: p.dir,
      unchanged: actions.length === 0,
      actions,
      replicas: replicas.map(({ name, tokenLabel, serial }) => ({ name, tokenLabel, serial })),
      ...(standby.length ? { standby: standby.map(({ name, tokenLabel, serial, standby: why }) => ({ name, tokenLabel, serial, standby: why })) } : {}),
      kcv: kcvs[0],
      manifestPath: p.manifest,
    };
  } finally {
    for (const t of tokens) t.close();
  }
}

/** Probes a token new to the fleet for where its data values can live, and switches it there. */
export function chooseStore(t: Pkcs11Token, did: (a: string) => void): void {
  const choice = chooseDataStore(t.probeDataStores());
  if (!choice.store) throw new StateError('NO_DATA_STORE', `token '${t.label}': ${choice.reason}`);
  t.useDataStore(choice.store);
  if (choice.store !== 'data-object') did(`token '${t.label}': data values as ${choice.store} (${choice.reason}); cost: ${choice.cost}`);
}

function readManifestSafe(path: string, force?: boolean): FleetManifest | undefined {
  try {
    return readManifest(path);
  } catch (e) {
    if (force) return undefined;
    throw e;
  }
}
