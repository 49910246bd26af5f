// `bkv provision --adopt`: a fleet on tokens that came initialised (a hardware fleet, another
// software token): bkv finds each by label or PKCS#11 URI, logs in with the operator's PIN file,
// picks where its data values can live, makes the per-token keys, runs the key ceremony and writes
// fleet.json. It never initialises, re-labels or wipes a token, and copies no PIN: the manifest
// records each PIN file's path. Re-running on a complete fleet changes nothing.
import { existsSync, mkdirSync } from 'node:fs';
import { isAbsolute, resolve } from 'node:path';
import { loadModule, defaultModulePath } from '../hsm-adapter/module.ts';
import { openToken, type Pkcs11Token } from '../hsm-adapter/pkcs11-token.ts';
import { parseTokenSpec } from '../hsm-adapter/uri.ts';
import { StateError, readManifest, readPinText, replicaNames, statePaths, type FleetManifest, type ManifestReplica } from './state.ts';
import { ensurePerTokenKeys, fleetAkeKcv, fleetSecretPresence, manifestFingerprint, wantsIdentity, oprfSeedKcv } from './keys.ts';
import { chooseStore, writeFileAtomic, type ProvisionReport } from './provision.ts';
import { runCeremony, type CeremonyMode } from './ceremony.ts';

export interface AdoptReplica {
  /** Replica name; default the data-center names in order. */
  name?: string;
  /** Token label or PKCS#11 URI (its pin-source may name the PIN file). */
  token: string;
  /** File holding the user PIN (mode 0600); else the URI's pin-source. */
  pinFile?: string;
}

export interface AdoptOptions {
  stateDir: string;
  modulePath?: string;
  moduleArgs?: string;
  replicas: AdoptReplica[];
  /** 'auto' (default): token-to-token where every token can, else host. */
  ceremony?: CeremonyMode;
  onProgress?: (message: string) => void;
}

function pinFileOf(r: AdoptReplica): string {
  const f = r.pinFile ?? parseTokenSpec(r.token).pinSource?.replace(/^file:\/\//, '');
  if (!f) throw new StateError('PIN_MISSING', `no PIN file for token ${r.token}: give --pin-file or pin-source= in its URI`);
  return isAbsolute(f) ? f : resolve(f);
}

export async function adopt(opts: AdoptOptions): Promise<ProvisionReport> {
  const p = statePaths(opts.stateDir);
  const say = opts.onProgress ?? (() => {});
  const actions: string[] = [];
  const did = (a: string) => {
    actions.push(a);
    say(a);
  };
  if (opts.replicas.length === 0) throw new StateError('BAD_REPLICA_COUNT', 'give at least one token to adopt');
  const defaults = replicaNames(opts.replicas.length);
  const wanted = opts.replicas.map((r, i) => ({ ...r, name: r.name ?? defaults[i]!, pinFile: pinFileOf(r) }));
  const names = wanted.map((r) => r.name);
  if (new Set(names).size !== names.length) throw new StateError('BAD_REPLICA_NAME', `replica names repeat: ${names.join(', ')}`);
  const modulePath = opts.modulePath ?? parseTokenSpec(wanted[0]!.token).modulePath ?? defaultModulePath();

  const existing = readManifest(p.manifest);
  if (existing) {
    const same = existing.adopted && existing.modulePath === modulePath && existing.replicas.length === wanted.length &&
      existing.replicas.every((r, i) => r.name === wanted[i]!.name && (r.tokenSpec ?? r.tokenLabel) === wanted[i]!.token);
    if (!same) throw new StateError('FLEET_MISMATCH', `${p.dir} already holds a fleet (fleet.json); adopt into a new directory`);
    return checkAdopted(p.dir, existing);
  }
  // Read every PIN first: a missing or open PIN file is refused before any token is touched.
  const pins = wanted.map((r) => readPinText(r.pinFile));

  loadModule(modulePath, opts.moduleArgs);
  const tokens: Pkcs11Token[] = [];
  try {
    for (const [i, r] of wanted.entries()) {
      tokens.push(openToken({ modulePath, ...(opts.moduleArgs ? { moduleArgs: opts.moduleArgs } : {}), token: r.token, pin: pins[i]!, signs: wanted.length > 1 }));
    }
    const seen = new Map<string, string>();
    for (const [i, t] of tokens.entries()) {
      // Serial numbers are not unique on every module (NSS softoken: all zero), so slot and label too.
      const key = `${t.describe().slotId}\0${t.label}\0${t.describe().serial}`;
      if (seen.has(key)) throw new StateError('FLEET_MISMATCH', `${wanted[i]!.token} and ${seen.get(key)} are the same token`);
      seen.set(key, wanted[i]!.token);
    }
    // Refusals before anything is written: a token that already holds fleet secrets belongs to a
    // fleet whose other members hold the same non-extractable values; a new ceremony cannot join it.
    const presence = tokens.map((t) => fleetSecretPresence(t));
    const holding = tokens.filter((_, i) => presence[i]!.oprfSeed || presence[i]!.fleetAke).map((t) => t.label);
    if (holding.length) {
      throw new StateError('FLEET_SECRETS_PRESENT', `token(s) ${holding.join(', ')} already hold bkv fleet secrets (another fleet's?); adopt tokens without them`);
    }
    for (const t of tokens) chooseStore(t, did);
    const fresh = tokens.map((t) => fleetSecretPresence(t));
    for (const t of tokens) {
      const made = ensurePerTokenKeys(t, { identity: wantsIdentity(t, tokens.length) });
      if (made.length) did(`token '${t.label}': created ${made.join(', ')}`);
    }
    const ceremony = runCeremony(tokens, fresh, did, opts.ceremony);
    const kcvs = tokens.map((t) => ({ oprfSeed: oprfSeedKcv(t), fleetAke: fleetAkeKcv(t) }));
    if (kcvs.some((k) => k.oprfSeed !== kcvs[0]!.oprfSeed || k.fleetAke !== kcvs[0]!.fleetAke)) {
      throw new StateError('FLEET_SECRETS_DIFFER', 'fleet secrets differ between tokens after the ceremony');
    }
    const replicas: ManifestReplica[] = tokens.map((t, i) => ({
      name: wanted[i]!.name,
      tokenLabel: t.label,
      ...(wanted[i]!.token !== t.label ? { tokenSpec: wanted[i]!.token } : {}),
      serial: t.describe().serial,
      sealScheme: t.sealScheme,
      identityFingerprint: manifestFingerprint(t),
      ...(t.dataStore !== 'data-object' ? { dataStore: t.dataStore } : {}),
      pinFile: wanted[i]!.pinFile,
    }));
    const manifest: FleetManifest = {
      version: 1,
      createdAt: new Date().toISOString(),
      modulePath,
      ...(opts.moduleArgs ? { moduleArgs: opts.moduleArgs } : {}),
      adopted: true,
      replicas,
      kcv: kcvs[0]!,
      ceremony,
    };
    mkdirSync(p.dir, { recursive: true, mode: 0o700 });
    writeFileAtomic(p.manifest, JSON.stringify(manifest, null, 2) + '\n', 0o600);
    did(`wrote ${p.manifest}`);
    return { stateDir: p.dir, unchanged: false, actions, replicas: replicas.map(({ name, tokenLabel, serial }) => ({ name, tokenLabel, serial })), kcv: kcvs[0]!, manifestPath: p.manifest };
  } finally {
    for (const t of tokens) t.close();
  }
}

/** An adopted fleet as found: every token opens and holds the secrets fleet.json records. Changes nothing. */
export function checkAdopted(dir: string, m: FleetManifest): ProvisionReport {
  const p = statePaths(dir);
  if (!existsSync(p.manifest)) throw new StateError('STATE_MISSING', `no fleet.json in ${p.dir}`);
  loadModule(m.modulePath, m.moduleArgs);
  for (const r of m.replicas) {
    const pin = r.pinFile ? readPinText(r.pinFile) : process.env.BKV_PIN;
    if (pin === undefined) throw new StateError('PIN_MISSING', `no PIN for token '${r.tokenLabel}' (no pinFile in fleet.json, BKV_PIN not set)`);
    const t = openToken({ modulePath: m.modulePath, ...(m.moduleArgs ? { moduleArgs: m.moduleArgs } : {}), token: r.tokenSpec ?? r.tokenLabel, pin, sealScheme: r.sealScheme, dataStore: r.dataStore ?? 'data-object', signs: m.replicas.length > 1 });
    try {
      const k = { oprfSeed: oprfSeedKcv(t), fleetAke: fleetAkeKcv(t) };
      if (k.oprfSeed !== m.kcv.oprfSeed || k.fleetAke !== m.kcv.fleetAke) {
        throw new StateError('FLEET_SECRETS_DIFFER', `token '${r.tokenLabel}' holds other fleet secrets than fleet.json records`);
      }
    } finally {
      t.close();
    }
  }
  return { stateDir: p.dir, unchanged: true, actions: [], replicas: m.replicas.map(({ name, tokenLabel, serial }) => ({ name, tokenLabel, serial })), kcv: m.kcv, manifestPath: p.manifest };
}
